"""LightningDataModule of ScanNet RGB-D 2D-3D pairs for Text4Point pre-training."""
from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from datamodules.scannet.frame_pairs import ScanNetFramePairs
from datamodules.scannet.meta import read_split
from datamodules.scannet.pairs import PairConfig
from lang3d.data.collate import collate_point_samples
from lang3d.data.sampling import sharded_loader


class ScanNetPairsDataModule(L.LightningDataModule):
    """ScanNet scans under ``root/scans`` (raw ``.sens`` or SensReader exports), split by the official lists.

    Args:
        root: ScanNet root holding ``scans/`` and the split lists.
        train_split / val_split: split list files, relative to ``root`` unless absolute.
        source: "auto" (exported frames when present, else the .sens), "exported" or "sens".
        frame_skip: keep frames whose index is a multiple of this (the paper: 25).
        image_size: (height, width) of the images fed to CLIP (the paper: 240×320).
        voxel_size: metres (the paper: 0.025). depth_tolerance: metres (the paper: 0.02).
        min_pairs: frames with fewer pixel-voxel pairs are skipped and counted.
        cache_dir: where prepared pairs are cached (None: build them on the fly).
        max_train_frames / max_val_frames: cap the number of frames (quick runs).
    """

    def __init__(self, root: str, train_split: str = "scannetv2_train.txt", val_split: str = "scannetv2_val.txt",
                 source: str = "auto", frame_skip: int = 25, image_size: tuple[int, int] = (240, 320),
                 voxel_size: float = 0.025, depth_tolerance: float = 0.02, min_pairs: int = 64,
                 batch_size: int = 8, num_workers: int = 4, cache_dir: str | None = None, seed: int = 0,
                 max_train_frames: int | None = None, max_val_frames: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.pair_cfg = PairConfig(tuple(image_size), voxel_size, depth_tolerance, min_pairs)
        self.train_set: ScanNetFramePairs | None = None
        self.val_set: ScanNetFramePairs | None = None

    def _dataset(self, split: str, max_frames: int | None) -> ScanNetFramePairs:
        if not self.root.is_dir():
            raise FileNotFoundError(f"ScanNet root {self.root} does not exist (set data.root, or SCANNET=... for make)")
        split_path = Path(split) if Path(split).is_absolute() else self.root / split
        hp = self.hparams
        return ScanNetFramePairs(self.root / "scans", read_split(split_path), self.pair_cfg, hp.frame_skip,
                                 hp.source, hp.cache_dir, max_frames)

    def prepare_data(self) -> None:
        """Fill the pair cache (once per node, rank zero) when ``cache_dir`` is set."""
        if self.hparams.cache_dir is None:
            return
        for split, cap in ((self.hparams.train_split, self.hparams.max_train_frames),
                           (self.hparams.val_split, self.hparams.max_val_frames)):
            skipped = self._dataset(split, cap).prepare()
            if skipped:
                print(f"ScanNet pairs {split}: skipped frames {skipped}")

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self._dataset(self.hparams.train_split, self.hparams.max_train_frames)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._dataset(self.hparams.val_split, self.hparams.max_val_frames)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset: ScanNetFramePairs, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return sharded_loader(dataset, self.trainer, hp.batch_size, shuffle, hp.seed, hp.num_workers,
                              collate_point_samples)
