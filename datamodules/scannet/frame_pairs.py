"""Dataset of ScanNet 2D-3D pairs: every ``frame_skip``-th RGB-D frame of each scan becomes one sample."""
from __future__ import annotations

import hashlib
import json
import os
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
    collate function drops and counts.

    With ``cache_dir`` prepared pairs are stored as one ``.npz`` per frame, ``<cache_dir>/pairs-<key>/<scan>/<frame
    index>.npz``, where the key hashes everything that changes a frame's content: ``cfg`` (image size, voxel size,
    depth tolerance, minimum pairs), the source ("auto" / "exported" / "sens") and ``PAIR_FORMAT``; the frame skip
    only selects which files are read. Files are written atomically; ``prepare()`` fills the cache with a progress
    bar, and a frame not cached yet is built and written when first read. Each file records its key and the size
    and modification time of the files its frame was read from: a file that is unreadable or malformed, made with
    other settings, or older than its frame's files raises ``PairCacheError`` naming it (never rebuilt silently).
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
        self.cache = self.cache_key = None
        if cache_dir is not None:
            settings = json.dumps({**asdict(cfg), "source": source, "format": PAIR_FORMAT}, sort_keys=True)
            self.cache_key = hashlib.sha1(settings.encode()).hexdigest()[:12]
            self.cache = Path(cache_dir) / f"pairs-{self.cache_key}"

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        name, frame = self.frames[index]
        path = self._cache_path(name, frame)
        if path is not None and path.exists():
            sample = self._load_cached(path, name, frame)
        else:
            sample = self._build(name, frame)
            if path is not None:
                sources = json.dumps(_stamp(self.scenes[name].source_files(frame)))
                stamp = {"cache_key": self.cache_key, "sources": sources}
                _save_atomic(path, {**sample, **stamp})
        sample["name"] = f"{name}/{frame}"
        return sample

    def prepare(self) -> dict[str, int]:
        """Fill the cache for every frame (no-op without ``cache_dir``); returns counts of skip reasons. A frame
        already cached is checked (settings, age) from the file's small arrays, not loaded."""
        skipped: dict[str, int] = {}
        if self.cache is None:
            return skipped
        for index in tqdm(range(len(self)), desc="preparing ScanNet 2D-3D pairs", unit="frame"):
            name, frame = self.frames[index]
            path = self._cache_path(name, frame)
            if path.exists():
                with self._open_cached(path, name, frame) as data:
                    reason = str(data["skipped"]) if "skipped" in data.files else None
            else:
                reason = self[index].get("skipped")
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
        return skipped

    def _build(self, name: str, frame: int) -> dict:
        scene = self.scenes[name]
        pose = scene.pose(frame)
        if not pose_is_valid(pose):
            return {"skipped": "invalid_pose"}
        image, color_size = scene.color_resized(frame, self.cfg.image_size[::-1])
        sample = build_frame_pair(image, color_size, scene.depth(frame), pose, scene.intrinsic_color,
                                  scene.intrinsic_depth, self.cfg)
        if len(sample["pairs"]) < self.cfg.min_pairs:
            return {"skipped": "too_few_pairs"}
        return sample

    def _cache_path(self, name: str, frame: int) -> Path | None:
        return None if self.cache is None else self.cache / name / f"{frame}.npz"

    def _open_cached(self, path: Path, name: str, frame: int):
        """The open ``.npz`` of a cached frame (arrays read on access) once its key and source stamp are checked."""
        data = None
        try:
            data = np.load(path)
            key, sources = str(data["cache_key"]) if "cache_key" in data.files else "", data.get("sources", "[]")
            stored = [entry[1:] for entry in json.loads(str(sources))]
        except Exception as err:  # a damaged cache file must name itself, never crash anonymously
            if data is not None:
                data.close()
            raise PairCacheError(f"cached 2D-3D pair {path} is unreadable ({err}); delete it to rebuild it") from err
        if key != self.cache_key:
            data.close()
            raise PairCacheError(f"cached 2D-3D pair {path} was made with other settings than its folder's key "
                                 f"{self.cache_key} (moved there?); delete it to rebuild it")
        current = _stamp(self.scenes[name].source_files(frame))
        if stored != [entry[1:] for entry in current]:
            data.close()
            changed = next((c[0] for c, s in zip(current, stored) if c[1:] != s), "its list of source files")
            raise PairCacheError(f"cached 2D-3D pair {path} is stale: {changed} changed since it was made; "
                                 f"delete {self.cache} to rebuild the cache")
        return data

    def _load_cached(self, path: Path, name: str, frame: int) -> dict:
        with self._open_cached(path, name, frame) as data:
            try:
                sample = {k: data[k] for k in data.files if k not in ("cache_key", "sources")}
            except Exception as err:  # a damaged member (zip CRC, header)
                raise PairCacheError(f"cached 2D-3D pair {path} is unreadable ({err}); delete it to rebuild it"
                                     ) from err
        if "skipped" in sample:
            sample["skipped"] = str(sample["skipped"])
            return sample
        problem = _malformed(sample, self.cfg.image_size)
        if problem:
            raise PairCacheError(f"cached 2D-3D pair {path} is damaged ({problem}); delete it to rebuild it")
        return sample


PAIR_FORMAT = 2
"""Version of a cached pair's content, part of the cache key. 2: JPEG colour decoded at reduced scale
(``lang3d.data.image_files.decode_resized``), which moves pixel values slightly against 1's full decode."""
_PAIR_ARRAYS = {"image": np.uint8, "depth": np.float32, "coord": np.int32, "color": np.float32, "pairs": np.int64}


class PairCacheError(RuntimeError):
    """A cached 2D-3D pair that is unreadable, malformed, made with other settings, or older than the files of its
    frame; the message names the file and says what to delete."""


def _stamp(paths: list[str]) -> list[list]:
    """[path, size in bytes, modification time in ns] of each file (a moved dataset keeps sizes and times)."""
    return [[path, (st := os.stat(path)).st_size, st.st_mtime_ns] for path in paths]


def _malformed(sample: dict, image_size: tuple[int, int]) -> str | None:
    """What is wrong with a loaded pair (see ``build_frame_pair``), or None."""
    if set(sample) != set(_PAIR_ARRAYS):
        return f"arrays {sorted(sample)}, expected {sorted(_PAIR_ARRAYS)}"
    for key, dtype in _PAIR_ARRAYS.items():
        if sample[key].dtype != dtype:
            return f"{key} has dtype {sample[key].dtype}, expected {np.dtype(dtype)}"
    H, W = image_size
    voxels = len(sample["coord"])
    shapes = {"image": (H, W, 3), "depth": (H, W), "coord": (voxels, 3), "color": (voxels, 3),
              "pairs": (len(sample["pairs"]), 3)}
    for key, shape in shapes.items():
        if sample[key].shape != shape:
            return f"{key} has shape {sample[key].shape}, expected {shape}"
    pairs = sample["pairs"]
    if len(pairs) and ((pairs < 0).any() or (pairs.max(0) >= (voxels, H, W)).any()):
        return "pairs index voxels or pixels out of range"
    return None


def _save_atomic(path: Path, sample: dict) -> None:
    with atomic_write(path) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in sample.items()})
