"""LightningDataModule of ESC-50 clips as ImageBind's audio tower reads them.

``data.root`` holds ESC-50's release layout: ``audio/*.wav`` and ``meta/esc50.csv`` (``meta.py``). Folds split
the clips: ``train_folds`` train, ``test_folds`` validate and test (ESC-50's protocol is 5-fold cross-validation:
run once per held-out fold). Each sample is one clip -> ``audio`` [3,1,128,204] (three 2 s clips of the 5 s
sound, ``lang3d.models.imagebind.audio``), ``target`` (ESC-50's class id), ``category``, ``name`` (the file) and,
with ``labels``, ``label``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.esc50.meta import FOLDS, ESC50Clip, ESC50FormatError, read_meta
from lang3d.data.sampling import sharded_loader
from lang3d.models.imagebind.audio import load_audio_clips


class ESC50Clips(Dataset):
    """Clips -> samples (see the module); ``labels`` ({category: label}) adds ``label``."""

    def __init__(self, clips: Sequence[ESC50Clip], labels: Mapping[str, int] | None = None):
        self.clips, self.labels = list(clips), labels

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        sample = {"audio": load_audio_clips(clip.path), "target": clip.target, "category": clip.category,
                  "name": clip.path.name}
        if self.labels is not None:
            sample["label"] = self.labels[clip.category]
        return sample


def _folds(name: str, folds: Sequence[int]) -> tuple[int, ...]:
    folds = tuple(int(f) for f in folds)
    if not folds or any(f not in FOLDS for f in folds):
        raise ValueError(f"data.{name} must be folds among {FOLDS}, got {list(folds)}")
    return folds


class ESC50DataModule(L.LightningDataModule):
    """ESC-50 from its release layout.

    Args:
        root: the folder holding ``audio/`` and ``meta/esc50.csv``.
        train_folds / test_folds: ESC-50's folds (1-5) of each split; validation uses the test folds.
        categories: keep only clips of these classes (None: all); an unknown name is an error listing the known.
        labels: {category: label}: keep only these classes and give each sample its ``label`` (e.g. the index of
            the ModelNet40 class a sound maps to: ``pointbind.data.AudioTo3DDataModule``).
        batch_size, num_workers, seed: the loaders' (training shuffled, resumable; evaluation in order).
    """

    def __init__(self, root: str, train_folds: Sequence[int] = (1, 2, 3, 4), test_folds: Sequence[int] = (5,),
                 categories: list[str] | None = None, labels: dict[str, int] | None = None, batch_size: int = 16,
                 num_workers: int = 4, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.folds = {"train": _folds("train_folds", train_folds), "test": _folds("test_folds", test_folds)}
        self.datasets: dict[str, ESC50Clips] = {}
        self.class_names: list[str] = []

    def _clips(self, split: str) -> list[ESC50Clip]:
        clips = read_meta(self.root)
        names = {c.target: c.category for c in clips}
        self.class_names = [names.get(t, "") for t in range(max(names) + 1)]
        hp = self.hparams
        wanted = [*(hp.categories or []), *(hp.labels or {})]
        unknown = sorted(set(wanted) - set(names.values()))
        if unknown:
            raise ESC50FormatError(f"{self.root / 'meta' / 'esc50.csv'} has no category {unknown} (it has: "
                                   f"{', '.join(sorted(set(names.values())))})")
        keep = set(hp.categories or names.values()) & set(hp.labels or names.values())
        clips = [c for c in clips if c.fold in self.folds[split] and c.category in keep]
        missing = [c.path for c in clips if not c.path.is_file()]
        if missing:
            raise ESC50FormatError(f"ESC-50 {split} folds {list(self.folds[split])}: {len(missing)} audio files of "
                                   f"meta/esc50.csv are missing, e.g. {missing[0]}")
        if not clips:
            raise ESC50FormatError(f"ESC-50 at {self.root}: no clip in folds {list(self.folds[split])} of the classes "
                                   f"asked for")
        return clips

    def dataset(self, split: str) -> ESC50Clips:
        """The clips of ``split`` ("train" or "test")."""
        if split not in self.datasets:
            self.datasets[split] = ESC50Clips(self._clips(split), self.hparams.labels)
        return self.datasets[split]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.dataset("train")
        self.dataset("test")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return sharded_loader(self.dataset(split), self.trainer, hp.batch_size, shuffle, hp.seed, hp.num_workers,
                              default_collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

