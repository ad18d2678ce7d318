"""LightningDataModule of SUN RGB-D 3D object detection (10 classes, oriented boxes) on votenet's prepared data,
for VoteNet on the sparse SR-UNet backbone (Text4Point appendix B.2: 20,000 points, 2.5 cm voxels, batch 64)."""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable

from datamodules.detection_common import DetectionDataModule
from datamodules.sunrgbd.reader import (CLASS_NAMES, MEAN_SIZE, index_file, list_samples, load_scene, prepared_dir,
                                        read_index, scene_files)
from lang3d.data.boxes_transforms import RandomFlipBoxes, RandomRotateBoxesZ, RandomScaleBoxes


class SUNRGBDDataModule(DetectionDataModule):
    """SUN RGB-D detection on votenet's ``sunrgbd_pc_bbox_votes_50k_<version>_{train,val}`` folders.

    Args:
        root: votenet's ``sunrgbd`` folder: it holds the prepared folders and, optionally,
            ``sunrgbd_trainval/{train,val}_data_idx.txt`` (else the prepared folders are listed).
        version: "v1" (votenet's default labels, those of its paper) or "v2".
        num_points: points drawn per scene (the paper: 20,000). voxel_size: metres (the paper: 0.025).
        batch_size: training scenes per batch (the paper: 64); val_batch_size: validation scenes per batch.
        augment: votenet's augmentation: flip x with probability 0.5 (heading h -> pi - h), rotation about z
            uniform in +-30 degrees, scaling by a factor uniform in 0.85..1.15 (points, votes and boxes together).
        seed: seeds the shuffling and the per-sample draws (seed, epoch, index).
        max_train_scenes / max_val_scenes: keep only the first scenes of a split (quick runs).
        train_loop: repeats of the training scenes per epoch.

    Attributes: ``class_names`` (votenet's order), ``num_classes`` 10, ``oriented`` True and ``mean_size``
    [10,3] float32 full sizes in metres (votenet's published table). Samples and batches: see
    ``datamodules.detection_common``; ``segment`` is the class of the smallest box holding the point.
    """

    class_names = list(CLASS_NAMES)
    oriented = True
    mean_size = MEAN_SIZE

    def __init__(self, root: str, version: str = "v1", num_points: int = 20000, voxel_size: float = 0.025,
                 batch_size: int = 64, val_batch_size: int = 8, num_workers: int = 4, augment: bool = True,
                 seed: int = 0, max_train_scenes: int | None = None, max_val_scenes: int | None = None,
                 train_loop: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root).expanduser()

    def scene_names(self, split: str) -> list[str]:
        index = index_file(self.root, split)
        return read_index(index) if index is not None else list_samples(self._folder(split))

    def scene_files(self, split: str, name: str) -> list[Path]:
        return scene_files(self._folder(split), name)

    def scene_loader(self, split: str) -> Callable[[str], dict]:
        return partial(load_scene, self._folder(split))

    def augmentations(self) -> list:
        return [RandomFlipBoxes(0, 0.5, oriented=True), RandomRotateBoxesZ(math.pi / 6, oriented=True),
                RandomScaleBoxes((0.85, 1.15))]

    def _folder(self, split: str) -> Path:
        return prepared_dir(self.root, split, self.hparams.version)
