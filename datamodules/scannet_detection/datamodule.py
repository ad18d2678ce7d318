"""LightningDataModule of ScanNet 3D object detection (18 classes, axis-aligned boxes) on votenet's prepared
data, for VoteNet on the sparse SR-UNet backbone (Text4Point appendix B.2: 40,000 points, 2.5 cm voxels,
batch 32)."""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from datamodules.detection_common import DetectionDataModule
from datamodules.scannet.meta import read_split
from datamodules.scannet_detection.reader import (CLASS_NAMES, data_dir, find_meta_file, load_scene, mean_sizes,
                                                  meta_file, read_bbox, read_means_file, scene_files)
from lang3d.data.boxes_transforms import RandomFlipBoxes, RandomRotateBoxesZ

MEANS_FILE = "scannet_means.npz"


class ScanNetDetectionDataModule(DetectionDataModule):
    """ScanNet v2 detection on votenet's ``scannet_train_detection_data``, split by ``scannetv2_{train,val}.txt``.

    Args:
        root: votenet's ``scannet`` folder: it holds ``scannet_train_detection_data/`` and the split lists (and
            optionally ``scannet_means.npz``) in ``meta_data/`` or directly.
        num_points: points drawn per scene (the paper: 40,000). voxel_size: metres (the paper: 0.025).
        batch_size: training scenes per batch (the paper: 32); val_batch_size: validation scenes per batch.
        augment: votenet's augmentation: flip x and (independently) y with probability 0.5, rotation about z
            uniform in +-5 degrees with the axis-aligned boxes re-fitted to their rotated corners.
        seed: seeds the shuffling and the per-sample draws (seed, epoch, index).
        max_train_scenes / max_val_scenes: keep only the first scenes of a split (quick runs).
        train_loop: repeats of the training scenes per epoch.

    Attributes: ``class_names`` (votenet's order), ``num_classes`` 18, ``oriented`` False and ``mean_size``
    [18,3] float32 full sizes in metres (``scannet_means.npz`` when present, else the mean training box size per
    class). Samples and batches: see ``datamodules.detection_common``.
    """

    class_names = list(CLASS_NAMES)
    oriented = False

    def __init__(self, root: str, num_points: int = 40000, voxel_size: float = 0.025, batch_size: int = 32,
                 val_batch_size: int = 8, num_workers: int = 4, augment: bool = True, seed: int = 0,
                 max_train_scenes: int | None = None, max_val_scenes: int | None = None, train_loop: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self._mean_size: np.ndarray | None = None

    @property
    def data_dir(self) -> Path:
        return data_dir(self.root)

    @property
    def mean_size(self) -> np.ndarray:
        """[18,3] float32 mean full box size per class (metres)."""
        if self._mean_size is None:
            means = find_meta_file(self.root, MEANS_FILE)
            if means is not None:
                self._mean_size = read_means_file(means)
            else:
                folder = self.data_dir
                self._mean_size = mean_sizes([read_bbox(scene_files(folder, scan)[3])
                                              for scan in self.scene_names("train")])
        return self._mean_size

    def scene_names(self, split: str) -> list[str]:
        return read_split(meta_file(self.root, f"scannetv2_{split}.txt"))

    def scene_files(self, split: str, name: str) -> list[Path]:
        return scene_files(self.data_dir, name)

    def scene_loader(self, split: str) -> Callable[[str], dict]:
        return partial(load_scene, self.data_dir)

    def augmentations(self) -> list:
        return [RandomFlipBoxes(0, 0.5, oriented=False), RandomFlipBoxes(1, 0.5, oriented=False),
                RandomRotateBoxesZ(math.pi / 36, oriented=False)]
