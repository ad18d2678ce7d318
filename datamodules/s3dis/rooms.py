"""Cache of prepared S3DIS rooms: one ``.npz`` per room plus a small JSON manifest.

Layout: ``cache_root/Area_N/<room>.npz`` holding coord [P,3] float32 metres, color [P,3] uint8,
segment [P] int16 class index, instance [P] int32 (stored narrow, loaded as int64), and
``cache_root/manifest.json`` {"format", "classes", "rooms": {"Area_5/office_1": point count}}.
Files are written atomically (temporary file + ``os.replace``), so an interrupted run leaves no partial room;
``prepare_rooms`` builds only the rooms whose file is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datamodules.s3dis.raw import S3DIS_CLASSES, list_rooms, read_room, resolve_raw_root
from lang3d.training.atomic import atomic_write

CACHE_FORMAT = 1
_STORED = {"coord": np.float32, "color": np.uint8, "segment": np.int16, "instance": np.int32}
_LOADED = {"coord": np.float32, "color": np.uint8, "segment": np.int64, "instance": np.int64}


class S3DISCacheError(RuntimeError):
    """A damaged prepared-room file; the message names it and says to delete it."""


def room_path(cache_root: str | Path, name: str) -> Path:
    """Cache file of room ``name`` ("Area_5/office_1")."""
    return Path(cache_root) / f"{name}.npz"


def prepare_rooms(raw_root: str | Path, cache_root: str | Path, areas) -> list[str]:
    """Cache every room of ``areas`` (ints) that is not cached yet; returns all their names, sorted by area.

    Idempotent: an existing room file is kept as is (delete it to rebuild it).
    """
    raw = resolve_raw_root(raw_root)
    cache_root = Path(cache_root)
    names = [name for area in areas for name in list_rooms(raw, area)]
    missing = [name for name in names if not room_path(cache_root, name).exists()]
    manifest = _read_manifest(cache_root)
    unlisted = [name for name in names if name not in manifest["rooms"] and name not in missing]
    for name in unlisted:  # cached before the manifest was lost: count (and validate) them
        manifest["rooms"][name] = len(load_room(room_path(cache_root, name))["coord"])
    if unlisted or not (cache_root / "manifest.json").exists():
        _write_manifest(cache_root, manifest)
    for name in tqdm(missing, desc="preparing S3DIS rooms", unit="room", disable=not missing):
        room = read_room(raw / name)
        save_room(room_path(cache_root, name), room)
        manifest["rooms"][name] = len(room["coord"])
        _write_manifest(cache_root, manifest)
    return names


def save_room(path: Path, room: dict[str, np.ndarray]) -> None:
    """Write one room atomically (arrays as in ``read_room``)."""
    arrays = {key: np.asarray(room[key]).astype(dtype) for key, dtype in _STORED.items()}
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_room(path: str | Path) -> dict[str, np.ndarray]:
    """Load and validate a cached room: coord [P,3] float32, color [P,3] uint8, segment [P] int64, instance [P]
    int64. A damaged file raises ``S3DISCacheError`` naming it."""
    path = Path(path)
    try:
        with np.load(path) as data:
            room = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"prepared S3DIS room {path} is missing (run prepare_data / prepare_rooms)") from None
    except Exception as err:  # zip / pickle / header errors: the file is damaged
        raise S3DISCacheError(f"prepared S3DIS room {path} is unreadable ({err}); delete it to rebuild it") from err
    problem = _validate(room)
    if problem:
        raise S3DISCacheError(f"prepared S3DIS room {path} is damaged ({problem}); delete it to rebuild it")
    return {key: room[key].astype(dtype, copy=False) for key, dtype in _LOADED.items()}


def _validate(room: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a loaded room, or None."""
    if set(room) != set(_STORED):
        return f"keys {sorted(room)}, expected {sorted(_STORED)}"
    for key, dtype in _STORED.items():
        if room[key].dtype != dtype:
            return f"{key} has dtype {room[key].dtype}, expected {np.dtype(dtype)}"
    count = len(room["coord"])
    if room["coord"].shape != (count, 3) or room["color"].shape != (count, 3):
        return f"coord {room['coord'].shape} / color {room['color'].shape} are not [P, 3]"
    if room["segment"].shape != (count,) or room["instance"].shape != (count,):
        return f"segment {room['segment'].shape} / instance {room['instance'].shape} do not match {count} points"
    if count == 0:
        return "no points"
    if not np.isfinite(room["coord"]).all():
        return "non-finite coordinates"
    if room["segment"].min() < 0 or room["segment"].max() >= len(S3DIS_CLASSES):
        return f"segment labels outside 0..{len(S3DIS_CLASSES) - 1}"
    if room["instance"].min() < 0:
        return "negative instance ids"
    return None


def _read_manifest(cache_root: Path) -> dict:
    path = cache_root / "manifest.json"
    manifest = {"format": CACHE_FORMAT, "classes": list(S3DIS_CLASSES), "rooms": {}}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError as err:
            raise S3DISCacheError(f"S3DIS cache manifest {path} is unreadable ({err}); delete it to rebuild it"
                                  ) from err
        if stored.get("format") != CACHE_FORMAT or stored.get("classes") != list(S3DIS_CLASSES):
            raise S3DISCacheError(f"S3DIS cache {cache_root} was written in another format (manifest {path}); "
                                  "delete the folder to rebuild it")
        manifest["rooms"] = dict(stored.get("rooms", {}))
    return manifest


def _write_manifest(cache_root: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with atomic_write(cache_root / "manifest.json") as f:
        f.write(text)

