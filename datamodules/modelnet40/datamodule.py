"""LightningDataModule of ModelNet40 shapes (zero-shot classification and retrieval; train split available too).

Formats: ``resampled`` (``modelnet40_normal_resampled``: 10000-point txt files, or ULIP's cached
``modelnet40_<split>_<P>pts_fps.dat`` when present, as ULIP and Point-Bind read it) and ``h5``
(``modelnet40_ply_hdf5_2048``: 2048 points per shape). ModelNet40 has no validation split: validation and test
both serve the test split (2468 shapes).
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.modelnet40.common import ModelNet40FormatError, read_shape_names
from datamodules.modelnet40.h5 import H5_DIR, load_h5_split
from datamodules.modelnet40.prompts import prompt_names
from datamodules.modelnet40.resampled import (RESAMPLED_DIR, class_of, read_shape, read_split_ids, read_ulip_cache,
                                              shape_names_file, shape_path, split_list_path, ulip_cache_path)
from lang3d.data.object_samples import PointSelector, check_cloud, collate_object_samples
from lang3d.data.point_ops import normalize_unit_sphere
from lang3d.data.sampling import sharded_loader

FORMATS = ("auto", "h5", "resampled")


class ModelNet40Shapes(Dataset):
    """Shapes of one split. Either in memory (``clouds``: a list of [P,C] arrays or one [S,P,C] array) or read
    lazily from ``files`` (resampled txt). Sample i: ``points`` float32 [N,3] (N points chosen by ``selector``,
    then centred and scaled into the unit sphere), ``label`` int64, ``name`` (shape id); an empty or non-finite
    cloud gives ``{"name", "skipped": reason}``."""

    def __init__(self, names: list[str], labels: np.ndarray, selector: PointSelector, clouds=None,
                 files: list[Path] | None = None, origins: list[str] | None = None):
        if (clouds is None) == (files is None):
            raise ValueError("give exactly one of clouds / files")
        self.names = list(names)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.selector = selector
        self.clouds = clouds
        self.files = files
        self.origins = origins  # where each in-memory cloud comes from, for messages
        if len(self.labels) != len(self.names) or len(clouds if files is None else files) != len(self.names):
            raise ValueError("names, labels and clouds/files must have the same length")

    def __len__(self) -> int:
        return len(self.names)

    def cloud(self, index: int) -> tuple[np.ndarray, str]:
        """(xyz [P,3] float32 as stored, where it comes from for messages)."""
        if self.files is not None:
            return read_shape(self.files[index])[:, :3], str(self.files[index])
        where = self.origins[index] if self.origins is not None else f"shape {index}"
        return np.asarray(self.clouds[index])[:, :3], f"{where} ({self.names[index]})"

    def __getitem__(self, index: int) -> dict:
        xyz, where = self.cloud(index)
        name = self.names[index]
        reason = check_cloud(xyz)
        if reason is not None:
            return {"name": name, "skipped": reason}
        idx = self.selector(xyz, name, where)
        points = normalize_unit_sphere(xyz[idx].astype(np.float64)).astype(np.float32)
        return {"points": points, "label": np.int64(self.labels[index]), "name": name}

    def scan(self, num_workers: int = 0) -> Counter:
        """Serve every sample once (filling the FPS cache, in ``num_workers`` processes); returns the skip
        reasons counted."""
        loader = DataLoader(self, batch_size=16, num_workers=num_workers, collate_fn=collate_object_samples)
        skipped: Counter = Counter()
        for batch in loader:
            skipped.update(batch["skipped"])
        return skipped


def resolve_format(root: str | Path, fmt: str = "auto") -> tuple[str, Path]:
    """(format, folder): ``root`` is the format's folder itself or holds it. "auto" prefers the resampled
    format (ULIP / Point-Bind protocol) over h5."""
    if fmt not in FORMATS:
        raise ValueError(f"ModelNet40 format must be one of {FORMATS}, got {fmt!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ModelNet40 root {root} does not exist")
    found = {}
    for folder in (root / RESAMPLED_DIR, root):
        if any(split_list_path(folder, s).is_file() for s in ("train", "test")) or list(folder.glob("*pts_fps.dat")):
            found.setdefault("resampled", folder)
    for folder in (root / H5_DIR, root):
        if any((folder / f"{s}_files.txt").is_file() for s in ("train", "test")):
            found.setdefault("h5", folder)
    order = ("resampled", "h5") if fmt == "auto" else (fmt,)
    for name in order:
        if name in found:
            return name, found[name]
    wanted = {"resampled": f"{RESAMPLED_DIR}/modelnet40_{{train,test}}.txt", "h5": f"{H5_DIR}/{{train,test}}_files.txt"}
    raise FileNotFoundError(f"ModelNet40 root {root}: no {' or '.join(wanted[n] for n in order)} (in it or below it)")


class ModelNet40DataModule(L.LightningDataModule):
    """ModelNet40 in its real formats (``resolve_format``), for Point-Bind / ULIP zero-shot evaluation.

    Args:
        root: the ``modelnet40_normal_resampled`` / ``modelnet40_ply_hdf5_2048`` folder or one holding it.
        format: "auto" (resampled when present, else h5), "h5" or "resampled".
        num_points: points per shape (ULIP / Point-Bind: 8192; the h5 files hold 2048). More in the source:
            farthest-point sampling from index 0 (deterministic); fewer: an error unless ``allow_repeat``.
        use_ulip_cache: read ULIP's ``modelnet40_<split>_<P>pts_fps.dat`` (P = num_points, else 8192, the
            fallback ULIP uses) instead of the txt files when it exists.
        cache_dir: where FPS indices are cached (default ``<folder's parent>/lang3d_cache``); fps_cache: off
            disables the cache (FPS every time a sample is served).
        batch_size / val_batch_size (default batch_size), num_workers, seed (shuffling of the train split).
        max_train_shapes / max_val_shapes: keep only the first shapes (quick runs).

    Batches (``collate_object_samples``): ``points`` [B,N,3] float32, ``label`` [B] int64, ``name`` list,
    ``skipped`` Counter of dropped samples. Attributes after ``setup``: ``class_names`` (shape-names file,
    underscores) and ``prompt_names`` (names with spaces, as ULIP's labels.json).
    """

    def __init__(self, root: str, format: str = "auto", num_points: int = 8192, allow_repeat: bool = False,
                 use_ulip_cache: bool = True, cache_dir: str | None = None, fps_cache: bool = True,
                 batch_size: int = 32, val_batch_size: int | None = None, num_workers: int = 4, seed: int = 0,
                 max_train_shapes: int | None = None, max_val_shapes: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.format, self.folder = resolve_format(root, format)
        self.class_names: list[str] = []
        self.datasets: dict[str, ModelNet40Shapes] = {}
        self.skipped: dict[str, Counter] = {}

    @property
    def prompt_names(self) -> list[str]:
        """Class names for prompts: ULIP's list when the classes are ModelNet40's, else underscores -> spaces."""
        spaced = [name.replace("_", " ") for name in self.class_names]
        return list(prompt_names()) if spaced == list(prompt_names()) else spaced

    def cache_root(self, kind: str) -> Path:
        """FPS-index cache folder for clouds of one kind of source ("h5", "txt", "ulip8192", ...)."""
        hp = self.hparams
        base = Path(hp.cache_dir).expanduser() if hp.cache_dir else self.folder.parent / "lang3d_cache"
        return base / f"modelnet40_{kind}_fps{hp.num_points}"

    def prepare_data(self) -> None:
        """Read every test shape once (in ``num_workers`` processes): fills the FPS cache and warns about skipped
        shapes. FPS of 8192 of the 10000 points costs ~0.2 s per shape and core, once; training shapes are
        cached as they are first served."""
        self._report("test", self.dataset("test").scan(self.hparams.num_workers))

    def setup(self, stage: str) -> None:
        splits = ("train", "test") if stage == "fit" else ("test",)
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self.dataset(split)

    def dataset(self, split: str) -> ModelNet40Shapes:
        """The shapes of ``split`` ("train"/"test"), capped by max_train_shapes / max_val_shapes."""
        hp = self.hparams

        def selector(kind: str) -> PointSelector:
            return PointSelector(hp.num_points, hp.allow_repeat, self.cache_root(kind) if hp.fps_cache else None)

        cap = hp.max_train_shapes if split == "train" else hp.max_val_shapes
        if self.format == "h5":
            self.class_names = read_shape_names(self.folder / "shape_names.txt")
            points, labels, names, origins = load_h5_split(self.folder, split, len(self.class_names))
            return ModelNet40Shapes(names[:cap], labels[:cap], selector("h5"), clouds=points[:cap],
                                    origins=origins[:cap])
        self.class_names = read_shape_names(shape_names_file(self.folder))
        ulip = self._ulip_cache(split)
        if ulip is not None:
            clouds, labels = read_ulip_cache(ulip, len(self.class_names))
            listed = read_split_ids(self.folder, split) if split_list_path(self.folder, split).is_file() else []
            names = listed if len(listed) == len(clouds) else [f"{ulip.stem}_{i}" for i in range(len(clouds))]
            return ModelNet40Shapes(names[:cap], labels[:cap], selector(ulip.stem), clouds=clouds[:cap],
                                    origins=[f"{ulip} entry {i}" for i in range(len(clouds))][:cap])
        ids = read_split_ids(self.folder, split)[:cap]
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = [shape_id for shape_id in ids if class_of(shape_id) not in index]
        if unknown:
            raise ModelNet40FormatError(f"{split_list_path(self.folder, split)}: shape {unknown[0]!r} has a class "
                                        f"not in {shape_names_file(self.folder)} ({len(unknown)} such shapes)")
        labels = np.array([index[class_of(shape_id)] for shape_id in ids], dtype=np.int64)
        return ModelNet40Shapes(ids, labels, selector("txt"), files=[shape_path(self.folder, i) for i in ids])

    def _ulip_cache(self, split: str) -> Path | None:
        if not self.hparams.use_ulip_cache:
            return None
        for count in dict.fromkeys((self.hparams.num_points, 8192)):
            path = ulip_cache_path(self.folder, split, count)
            if path.is_file():
                return path
        return None

    def _report(self, split: str, skipped: Counter) -> None:
        self.skipped[split] = skipped
        if skipped:
            warnings.warn(f"ModelNet40 {split} ({self.folder}): skipped shapes {dict(skipped)}", stacklevel=2)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        if split not in self.datasets:
            self.datasets[split] = self.dataset(split)
        batch = hp.batch_size if shuffle or hp.val_batch_size is None else hp.val_batch_size
        return sharded_loader(self.datasets[split], self.trainer, batch, shuffle, hp.seed, hp.num_workers,
                              collate_object_samples)
