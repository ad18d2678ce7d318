"""What the VoteNet-format detection datamodules (ScanNet, SUN RGB-D) share: format errors and array checks,
the scene dataset, the detection collate and the LightningDataModule skeleton (point sampling, VoteNet
augmentation, voxelisation, DDP-sharded loaders).

Samples (after the transform) hold ``coord`` [V,3] int32 voxel indices, ``xyz`` [V,3] float32 metres (the
voxel's point, in the augmented frame of the boxes), ``color`` [V,3] float32 0..1, ``segment`` [V] int64
(class index, -1 none), ``vote`` [V,9] float32 metres, ``vote_mask`` [V] int64, ``gt_boxes`` [G,7] float32
(cx, cy, cz, dx, dy, dz, heading; full sizes, heading counter-clockwise about +z), ``gt_labels`` [G] int64 and
``name``. ``collate_detection`` batches them: ``coord`` [ΣV,4] int32 (batch index first), ``offset`` [B],
the point keys concatenated, ``gt_boxes`` / ``gt_labels`` lists of B tensors, ``names``, ``skipped``.
"""
from __future__ import annotations

import abc
from functools import partial
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from lang3d.data.boxes_transforms import SamplePoints, VoxelizeDetection
from lang3d.data.collate import collate_point_samples
from lang3d.data.sampling import EpochSeededDataset, sharded_loader
from lang3d.data.transforms import Compose

SAMPLE_KEYS = ("coord", "xyz", "color", "segment", "vote", "vote_mask", "gt_boxes", "gt_labels", "name")
BATCH_POINT_KEYS = ("xyz", "color", "segment", "vote", "vote_mask")
collate_detection = partial(collate_point_samples, point_keys=BATCH_POINT_KEYS, stack_keys=(), index_keys=(),
                            list_keys=("gt_boxes", "gt_labels"))
_KINDS = {"f": "floating point", "iu": "integer"}


class DetectionFormatError(ValueError):
    """A file of the prepared detection data is missing or malformed; the message names the file."""


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """The array of a ``.npy`` file (``key`` None) or array ``key`` of a ``.npz`` file. A missing or unreadable
    file or a missing key raises ``DetectionFormatError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DetectionFormatError(f"{path}: file is missing")
    try:
        if key is None:
            return np.load(path)
        with np.load(path) as archive:
            if key not in archive.files:
                raise DetectionFormatError(f"{path}: has no array {key!r} (arrays: {archive.files})")
            return archive[key]
    except DetectionFormatError:
        raise
    except Exception as err:  # pickled objects, bad headers, damaged zip archives
        raise DetectionFormatError(f"{path}: unreadable ({type(err).__name__}: {err})") from err


def check_array(path: str | Path, array: np.ndarray, what: str, kinds: str, shape: tuple) -> np.ndarray:
    """Check ``array``'s dtype kind (``kinds``: "f" or "iu"), shape (None = any length) and, for floating point,
    that every value is finite; else ``DetectionFormatError`` naming ``path`` and ``what``."""
    if array.dtype.kind not in kinds:
        raise DetectionFormatError(f"{path}: {what} has dtype {array.dtype}, expected {_KINDS[kinds]}")
    if array.ndim != len(shape) or any(want is not None and want != got for want, got in zip(shape, array.shape)):
        expected = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise DetectionFormatError(f"{path}: {what} has shape {array.shape}, expected {expected}")
    if kinds == "f" and not np.isfinite(array).all():
        row = int(np.argmax(~np.isfinite(array.reshape(len(array), -1)).all(1)))
        raise DetectionFormatError(f"{path}: {what} holds NaN or infinite values (first at row {row})")
    return array


class DetectionScenes(EpochSeededDataset):
    """Scenes ``names`` read by ``load(name)`` (a detection scene dict, see ``lang3d.data.boxes_transforms``)
    and passed through ``transform``; a sample holds ``SAMPLE_KEYS``.

    Index i serves scene ``i % len(names)`` (``loop`` repeats per epoch). Its generator is seeded with (seed,
    epoch, i), or with (seed, 0, i) when ``vary_per_epoch`` is False (evaluation: the same points each epoch).
    """

    def __init__(self, names: list[str], load: Callable[[str], dict], transform: Compose, seed: int = 0,
                 loop: int = 1, vary_per_epoch: bool = True):
        super().__init__(seed)
        self.names, self.load, self.transform = list(names), load, transform
        self.loop, self.vary_per_epoch = loop, vary_per_epoch

    def __len__(self) -> int:
        return len(self.names) * self.loop

    def rng(self, index: int) -> np.random.Generator:
        return super().rng(index) if self.vary_per_epoch else np.random.default_rng([self.seed, 0, index])

    def __getitem__(self, index: int) -> dict:
        name = self.names[index % len(self.names)]
        data = self.transform({**self.load(name), "name": name}, self.rng(index))
        return {key: data[key] for key in SAMPLE_KEYS}


class DetectionDataModule(L.LightningDataModule, abc.ABC):
    """Skeleton of a VoteNet-format detection datamodule. Subclasses save the hyper-parameters ``num_points``,
    ``voxel_size``, ``batch_size``, ``val_batch_size``, ``num_workers``, ``augment``, ``seed``,
    ``max_train_scenes``, ``max_val_scenes``, ``train_loop`` and define ``class_names``, ``oriented``,
    ``mean_size``, ``scene_names(split)``, ``scene_files(split, name)``, ``scene_loader(split)`` and
    ``augmentations()``.

    Training: ``num_points`` points drawn at random, augmented, one random point per voxel. Validation / test
    (the val split): ``num_points`` points drawn with a per-scene generator fixed across epochs, voxel means.
    """

    class_names: list[str]
    oriented: bool

    def __init__(self):
        super().__init__()
        self.train_set: DetectionScenes | None = None
        self.val_set: DetectionScenes | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def scene_names(self, split: str) -> list[str]:
        """Names of the scenes of ``split`` ("train" or "val"), in order."""

    @abc.abstractmethod
    def scene_files(self, split: str, name: str) -> list[Path]:
        """The files scene ``name`` of ``split`` is read from."""

    @abc.abstractmethod
    def scene_loader(self, split: str) -> Callable[[str], dict]:
        """A picklable ``load(name) -> detection scene dict`` for the scenes of ``split``."""

    @abc.abstractmethod
    def augmentations(self) -> list:
        """The training augmentation transforms, in order."""

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit" and self.train_set is None:
            self.train_set = DetectionScenes(self.checked_names("train", hp.max_train_scenes),
                                             self.scene_loader("train"),
                                             self.train_transform(), hp.seed, hp.train_loop)
        if stage in ("fit", "validate", "test") and self.val_set is None:
            self.val_set = DetectionScenes(self.checked_names("val", hp.max_val_scenes), self.scene_loader("val"),
                                           self.eval_transform(), hp.seed, vary_per_epoch=False)

    def checked_names(self, split: str, cap: int | None) -> list[str]:
        """The first ``cap`` scenes of ``split``; a missing file of one of them is an error naming it."""
        names = self.scene_names(split)[:cap]
        missing = [path for name in names for path in self.scene_files(split, name) if not path.is_file()]
        if missing:
            raise DetectionFormatError(f"{missing[0]}: file of a listed {split} scene is missing "
                                       f"({len(missing)} missing files in all)")
        return names

    def train_transform(self) -> Compose:
        """SamplePoints, [augmentations], VoxelizeDetection(train)."""
        hp = self.hparams
        augment = self.augmentations() if hp.augment else []
        return Compose([SamplePoints(hp.num_points), *augment, VoxelizeDetection(hp.voxel_size, "train")])

    def eval_transform(self) -> Compose:
        """SamplePoints, VoxelizeDetection(test)."""
        hp = self.hparams
        return Compose([SamplePoints(hp.num_points), VoxelizeDetection(hp.voxel_size, "test")])

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return sharded_loader(self.train_set, self.trainer, hp.batch_size, True, hp.seed, hp.num_workers,
                              collate_detection)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def _eval_loader(self) -> DataLoader:
        hp = self.hparams
        return sharded_loader(self.val_set, self.trainer, hp.val_batch_size, False, hp.seed, hp.num_workers,
                              collate_detection)
