"""Dataset of ScanNet 2D-3D pairs: every ``frame_skip``-th RGB-D frame of each scan becomes one sample."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from datamodules.scannet.pairs import PairConfig, build_frame_pair
from datamodules.scannet.scene import open_scene, pose_is_valid
from lang3d.training.atomic import atomic_write


class ScanNetFramePairs(Dataset):
    """2D-3D pairs of the scans in ``scene_names`` under ``scans_dir``.

    A sample is a dict (see ``build_frame_pair``) plus ``name`` ("scene0000_00/125"); a frame with an invalid
    pose or fewer than ``cfg.min_pairs`` pixel-voxel pairs yields ``{"name", "skipped": reason}``, which the
    collate function drops and counts. With ``cache_dir`` prepared pairs are stored as one ``.npz`` per frame
    under a folder keyed by the pair settings (written atomically; ``prepare()`` fills it with a progress bar).
    """

    def __init__(self, scans_dir: str | Path, scene_names: list[str], cfg: PairConfig, frame_skip: int = 25,
                 source: str = "auto", cache_dir: str | Path | None = None, max_frames: int | None = None):
        self.scans_dir = Path(scans_dir)
        self.cfg = cfg
        self.source = source
        self.scenes = {name: open_scene(self.scans_dir / name, source=source) for name in scene_names}
        self.frames = [(name, i) for name, scene in self.scenes.items() for i in scene.frame_ids if i % frame_skip == 0]
        if max_frames is not None:
            self.frames = self.frames[:max_frames]
        self.cache = None
        if cache_dir is not None:
            key = hashlib.sha1(json.dumps({**asdict(cfg), "source": source}, sort_keys=True).encode()).hexdigest()[:12]
            self.cache = Path(cache_dir) / f"pairs-{key}"

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        name, frame = self.frames[index]
        path = self._cache_path(name, frame)
        if path is not None and path.exists():
            sample = _load_cached(path)
        else:
            sample = self._build(name, frame)
            if path is not None:
                _save_atomic(path, sample)
        sample["name"] = f"{name}/{frame}"
        return sample

    def prepare(self) -> dict[str, int]:
        """Fill the cache for every frame (no-op without ``cache_dir``); returns counts of skip reasons."""
        skipped: dict[str, int] = {}
        if self.cache is None:
            return skipped
        for index in tqdm(range(len(self)), desc="preparing ScanNet 2D-3D pairs", unit="frame"):
            reason = self[index].get("skipped")
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
        return skipped

    def _build(self, name: str, frame: int) -> dict:
        scene = self.scenes[name]
        pose = scene.pose(frame)
        if not pose_is_valid(pose):
            return {"skipped": "invalid_pose"}
        sample = build_frame_pair(scene.color(frame), scene.depth(frame), pose, scene.intrinsic_color,
                                  scene.intrinsic_depth, self.cfg)
        if len(sample["pairs"]) < self.cfg.min_pairs:
            return {"skipped": "too_few_pairs"}
        return sample

    def _cache_path(self, name: str, frame: int) -> Path | None:
        return None if self.cache is None else self.cache / name / f"{frame}.npz"


def _save_atomic(path: Path, sample: dict) -> None:
    with atomic_write(path) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in sample.items()})


def _load_cached(path: Path) -> dict:
    try:
        with np.load(path) as data:
            sample = {k: data[k] for k in data.files}
    except Exception as err:  # a damaged cache file must name itself, never crash anonymously
        raise RuntimeError(f"cached 2D-3D pair {path} is unreadable ({err}); delete it to rebuild") from err
    if "skipped" in sample:
        sample["skipped"] = str(sample["skipped"])
    return sample
