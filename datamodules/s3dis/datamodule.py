"""LightningDataModule of S3DIS rooms for semantic and instance segmentation (Text4Point fine-tuning, Area 5
held out).

Rooms are read once from the raw release into a cache of ``.npz`` files (``prepare_data``), then every sample
is one whole room: training rooms are augmented (rotation about z, scale, x/y flips, colour jitter) and
voxelised keeping one random point per voxel; held-out rooms are voxelised with voxel means / majority labels
and carry the full-resolution points so that evaluation can be done on every point.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from datamodules.s3dis.raw import S3DIS_CLASSES, list_rooms, resolve_raw_root
from datamodules.s3dis.rooms import load_room, prepare_rooms, room_path
from lang3d.data.collate import collate_point_samples
from lang3d.data.sampling import EpochSeededDataset, sharded_loader
from lang3d.data.transforms import (CenterShift, ChromaticJitter, Compose, GridSample, RandomFlipXY, RandomRotateZ,
                                    RandomScale)

ALL_AREAS = (1, 2, 3, 4, 5, 6)
TRAIN_KEYS = ("coord", "color", "segment", "name")
EVAL_KEYS = TRAIN_KEYS + ("inverse", "point_segment", "point_coord", "point_color")
INSTANCE_KEYS = ("instance",)                     # added to training samples by ``with_instance``
EVAL_INSTANCE_KEYS = ("instance", "point_instance")  # added to held-out samples


def split_areas(areas, test_area: int = 5, cross_validation_fold: int | None = None) -> tuple[list[int], list[int]]:
    """(train areas, held-out areas): ``cross_validation_fold`` k (1..6) holds out Area_k (6-fold protocol) and
    overrides ``test_area``; every other area in ``areas`` trains."""
    areas = sorted(set(int(a) for a in areas))
    if cross_validation_fold is not None:
        if cross_validation_fold not in ALL_AREAS:
            raise ValueError(f"cross_validation_fold must be one of {ALL_AREAS} (fold k holds out Area_k), "
                             f"got {cross_validation_fold}")
        test_area = cross_validation_fold
    if test_area not in areas:
        raise ValueError(f"held-out area {test_area} is not among the areas {areas}")
    return [a for a in areas if a != test_area], [test_area]


class S3DISRooms(EpochSeededDataset):
    """Whole prepared rooms ``names`` ("Area_5/office_1") under ``cache_root``, each passed through ``transform``.

    Index i serves room ``i % len(names)`` (``loop`` repeats per epoch). The generator of sample i is seeded
    with (seed, epoch, i), so augmentations differ between epochs and repeats, and are reproducible
    (independent of workers and DDP ranks). A sample holds the ``keys`` of the transformed room dict.
    """

    def __init__(self, cache_root: str | Path, names: list[str], transform: Compose, keys: tuple[str, ...],
                 seed: int = 0, loop: int = 1):
        super().__init__(seed)
        self.cache_root = Path(cache_root)
        self.names = list(names)
        self.transform = transform
        self.keys = keys
        self.loop = loop

    def __len__(self) -> int:
        return len(self.names) * self.loop

    def __getitem__(self, index: int) -> dict:
        name = self.names[index % len(self.names)]
        room = load_room(room_path(self.cache_root, name))
        data = self.transform({**room, "name": name}, self.rng(index))
        return {key: data[key] for key in self.keys}


class S3DISDataModule(L.LightningDataModule):
    """S3DIS (``Stanford3dDataset_v1.2_Aligned_Version``) semantic (and instance) segmentation, 13 classes.

    Args:
        root: the ``Stanford3dDataset_v1.2_Aligned_Version`` folder or the folder holding it.
        areas: the areas that exist / are used (all six by default; a missing ``Area_N`` folder is an error).
        test_area: the held-out area used for validation and test (the paper: 5).
        cross_validation_fold: k in 1..6 holds out Area_k (6-fold protocol); overrides ``test_area``.
        voxel_size: voxel edge in metres (the paper: 0.05).
        batch_size: training rooms per batch; val_batch_size: held-out rooms per batch.
        cache_dir: prepared-room cache; default ``<folder holding the aligned release>/lang3d_cache/s3dis_rooms``
            (set it when that folder is read-only).
        augment: training augmentation on/off; flip: probability of mirroring x and (independently) y;
            rotate: rotation about z drawn from [-rotate, rotate] radians; scale: (low, high) isotropic factor;
            jitter_std: colour noise std as a fraction of 255.
        seed: seeds the shuffling and the augmentations (per sample: seed, epoch, index).
        max_train_rooms / max_val_rooms: keep only the first rooms (quick runs).
        train_loop: repeats of the training rooms per epoch.
        with_instance: samples and batches also carry the instance ids (see below).

    Samples (dicts): ``coord`` [V,3] int32 voxel indices of the centred room (x-y centre at 0, floor at z 0),
    ``color`` [V,3] float32 0..1, ``segment`` [V] int64, ``name``; held-out samples also ``inverse`` [P,1]
    int64, ``point_segment`` [P] int64, ``point_coord`` [P,3] float32 metres (centred), ``point_color`` [P,3]
    uint8. Batches come from ``collate_point_samples``: the ``point_*`` keys are concatenated over rooms and
    row j of ``inverse`` [ΣP,2] is (room in batch, voxel row in the batch) of point j.

    ``with_instance``: training samples also hold ``instance`` [V] int64 (the id of the point drawn for the
    voxel), held-out samples ``instance`` [V] (majority id per voxel) and ``point_instance`` [P] int64. Ids are
    the room's own (index of the annotation file, ``datamodules.s3dis.raw``), so they repeat across the rooms of
    a batch: an instance is the pair (room in batch = ``coord[:, 0]`` for voxels, ``inverse[:, 0]`` for points,
    id).
    """

    class_names = S3DIS_CLASSES
    num_classes = len(S3DIS_CLASSES)

    def __init__(self, root: str, areas: tuple[int, ...] = ALL_AREAS, test_area: int = 5,
                 cross_validation_fold: int | None = None, voxel_size: float = 0.05, batch_size: int = 8,
                 val_batch_size: int = 1, num_workers: int = 4, cache_dir: str | None = None, augment: bool = True,
                 flip: float = 0.5, rotate: float = math.pi, scale: tuple[float, float] = (0.9, 1.1),
                 jitter_std: float = 0.05, seed: int = 0, max_train_rooms: int | None = None,
                 max_val_rooms: int | None = None, train_loop: int = 1, with_instance: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.train_areas, self.test_areas = split_areas(areas, test_area, cross_validation_fold)
        self.train_set: S3DISRooms | None = None
        self.val_set: S3DISRooms | None = None

    @property
    def raw_root(self) -> Path:
        return resolve_raw_root(self.hparams.root)

    @property
    def cache_root(self) -> Path:
        if self.hparams.cache_dir is not None:
            return Path(self.hparams.cache_dir).expanduser()
        return self.raw_root.parent / "lang3d_cache" / "s3dis_rooms"

    def prepare_data(self) -> None:
        """Cache every room of the training and held-out areas (only the missing ones are built)."""
        prepare_rooms(self.raw_root, self.cache_root, self.train_areas + self.test_areas)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit" and self.train_set is None:
            self.train_set = S3DISRooms(self.cache_root, self._names(self.train_areas, hp.max_train_rooms),
                                        self.train_transform(), TRAIN_KEYS + self._extra(INSTANCE_KEYS), hp.seed,
                                        hp.train_loop)
        if stage in ("fit", "validate", "test") and self.val_set is None:
            self.val_set = S3DISRooms(self.cache_root, self._names(self.test_areas, hp.max_val_rooms),
                                      self.eval_transform(), EVAL_KEYS + self._extra(EVAL_INSTANCE_KEYS), hp.seed)

    def train_transform(self) -> Compose:
        """CenterShift, [rotate z, scale, flip x/y, colour jitter], GridSample(train)."""
        hp = self.hparams
        augment = []
        if hp.augment:
            augment = [RandomRotateZ((-hp.rotate, hp.rotate)), RandomScale(tuple(hp.scale)), RandomFlipXY(hp.flip),
                       ChromaticJitter(hp.jitter_std)]
        return Compose([CenterShift(apply_z=True), *augment, GridSample(hp.voxel_size, mode="train")])

    def eval_transform(self) -> Compose:
        """CenterShift, GridSample(test) keeping the full-resolution points."""
        return Compose([CenterShift(apply_z=True), GridSample(self.hparams.voxel_size, mode="test", keep_points=True)])

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        collate = partial(collate_point_samples, point_keys=("color", "segment") + self._extra(INSTANCE_KEYS),
                          stack_keys=(), index_keys=())
        return sharded_loader(self.train_set, self.trainer, hp.batch_size, True, hp.seed, hp.num_workers, collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def _eval_loader(self) -> DataLoader:
        hp = self.hparams
        point_keys = ("color", "segment", "point_segment", "point_coord", "point_color")
        collate = partial(collate_point_samples, point_keys=point_keys + self._extra(EVAL_INSTANCE_KEYS),
                          stack_keys=(), index_keys=("inverse",))
        return sharded_loader(self.val_set, self.trainer, hp.val_batch_size, False, hp.seed, hp.num_workers, collate)

    def _extra(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """``keys`` with ``with_instance``, else nothing."""
        return keys if self.hparams.with_instance else ()

    def _names(self, areas: list[int], cap: int | None) -> list[str]:
        names = [name for area in areas for name in list_rooms(self.raw_root, area)][:cap]
        missing = [name for name in names if not room_path(self.cache_root, name).exists()]
        if missing:
            raise FileNotFoundError(f"prepared S3DIS room {room_path(self.cache_root, missing[0])} is missing "
                                    f"({len(missing)} rooms in all): call prepare_data() first")
        return names

