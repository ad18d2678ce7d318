"""Reader of the raw S3DIS release ``Stanford3dDataset_v1.2_Aligned_Version``.

Layout: ``Area_N/<room>/Annotations/<class>_<k>.txt``, one object instance per file, lines ``x y z r g b``
(metres with 3 decimals, colours 0..255). ``stairs`` is mapped to ``clutter`` (PointNet, Pointcept), giving the
13 classes of ``S3DIS_CLASSES`` in the standard order. Instance ids are the index of the annotation file in the
sorted list of the room's annotation files (Pointcept's convention).

A NUL byte glued into a line (the known defect: Area_5/hallway_6/Annotations/ceiling_1.txt line 180389
``22.350 6.692 3.048 185\\x00187 182``) is repaired by splitting on the NUL, with a warning naming the file and
line; every other malformed line is an error naming the file and line.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np

S3DIS_CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
                 "bookcase", "board", "clutter")
CLASS_ALIASES = {"stairs": "clutter"}
ALIGNED_DIR = "Stanford3dDataset_v1.2_Aligned_Version"
_CLASS_INDEX = {name: i for i, name in enumerate(S3DIS_CLASSES)}
_DUPLICATE_COPY = re.compile(r".+ \(\d+\)$")  # "wall_3 (1)": a copy left by a file manager in some releases


class S3DISFormatError(ValueError):
    """Raw S3DIS input that cannot be read; the message names the file (and line) at fault."""


def resolve_raw_root(root: str | Path) -> Path:
    """The ``Stanford3dDataset_v1.2_Aligned_Version`` folder: ``root`` itself, or that folder inside ``root``."""
    root = Path(root).expanduser()
    if (root / ALIGNED_DIR).is_dir():
        return root / ALIGNED_DIR
    if root.is_dir() and any(p.name.startswith("Area_") and p.is_dir() for p in root.iterdir()):
        return root
    if not root.exists():
        raise FileNotFoundError(f"S3DIS root {root} does not exist")
    raise FileNotFoundError(f"S3DIS root {root} holds neither {ALIGNED_DIR}/ nor Area_N/ folders")


def area_dir(raw_root: str | Path, area: int) -> Path:
    """``raw_root/Area_<area>``; a missing folder is an error naming it."""
    path = Path(raw_root) / f"Area_{area}"
    if not path.is_dir():
        raise FileNotFoundError(f"S3DIS area folder {path} does not exist")
    return path


def list_rooms(raw_root: str | Path, area: int) -> list[str]:
    """Sorted room names ("Area_5/office_1") of one area: its sub-folders, hidden entries ignored. An area without
    rooms is an error naming its folder."""
    folder = area_dir(raw_root, area)
    rooms = [f"{folder.name}/{p.name}" for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not rooms:
        raise S3DISFormatError(f"S3DIS area folder {folder} holds no rooms (no <room>/ sub-folders)")
    return rooms


def class_of(path: Path) -> int:
    """Class index of an annotation file from its name prefix ("chair_3.txt" -> 8; stairs -> clutter)."""
    token = path.stem.split("_", 1)[0]
    token = CLASS_ALIASES.get(token, token)
    if token not in _CLASS_INDEX:
        known = ", ".join(S3DIS_CLASSES + tuple(CLASS_ALIASES))
        raise S3DISFormatError(f"{path}: unknown class {token!r} in the file name (known classes: {known})")
    return _CLASS_INDEX[token]


def annotation_files(room_dir: Path) -> list[Path]:
    """Sorted ``Annotations/*.txt`` of a room; hidden files skipped, duplicate "<name> (1).txt" copies skipped
    with a warning."""
    folder = room_dir / "Annotations"
    if not folder.is_dir():
        raise S3DISFormatError(f"S3DIS room {room_dir} has no Annotations folder ({folder} is missing)")
    files = []
    for path in sorted(folder.glob("*.txt")):
        if path.name.startswith("."):
            continue
        if _DUPLICATE_COPY.match(path.stem):
            warnings.warn(f"{path}: duplicate copy of an annotation file, skipped", stacklevel=2)
            continue
        files.append(path)
    return files


def read_annotation(path: str | Path) -> np.ndarray:
    """Points of one annotation file: [n, 6] float64 (x, y z metres, r g b 0..255); an empty file gives [0, 6]
    with a warning naming it."""
    path = Path(path)
    data = path.read_bytes()
    if b"\x00" in data:
        data = _repair_nul_lines(path, data)
    if not data.strip():
        warnings.warn(f"{path}: empty S3DIS annotation file (no points); the instance has no points", stacklevel=2)
        return np.zeros((0, 6))
    try:
        values = np.loadtxt(io.BytesIO(data), dtype=np.float64, comments=None, ndmin=2)
    except ValueError:
        values = None
    if values is None or values.shape[1] != 6:
        _raise_first_bad_line(path, data)
    _check_values(path, data, values)
    return values


def read_room(room_dir: str | Path) -> dict[str, np.ndarray]:
    """All annotated points of a room.

    Returns coord [P,3] float32 metres, color [P,3] uint8, segment [P] int64 class index (``S3DIS_CLASSES``),
    instance [P] int64 (index of the annotation file in sorted order).
    """
    room_dir = Path(room_dir)
    parts, segments, instances = [], [], []
    for k, path in enumerate(annotation_files(room_dir)):
        label = class_of(path)
        points = read_annotation(path)
        parts.append(points)
        segments.append(np.full(len(points), label, dtype=np.int64))
        instances.append(np.full(len(points), k, dtype=np.int64))
    if not parts or sum(len(p) for p in parts) == 0:
        raise S3DISFormatError(f"S3DIS room {room_dir} is empty: no annotated points under {room_dir / 'Annotations'}")
    points = np.concatenate(parts)
    return {"coord": points[:, :3].astype(np.float32), "color": points[:, 3:].astype(np.uint8),
            "segment": np.concatenate(segments), "instance": np.concatenate(instances)}


def _repair_nul_lines(path: Path, data: bytes) -> bytes:
    """Split each line with a NUL byte on the NUL (warning naming the file and line numbers)."""
    lines = data.split(b"\n")
    fixed = []
    for number, line in enumerate(lines, start=1):
        if b"\x00" in line:
            lines[number - 1] = line.replace(b"\x00", b" ")
            fixed.append(number)
    shown = ", ".join(map(str, fixed[:10])) + (f" and {len(fixed) - 10} more" if len(fixed) > 10 else "")
    first = lines[fixed[0] - 1].decode("ascii", "replace").strip()
    warnings.warn(f"{path}: NUL byte inside line {shown}; split on the NUL (line {fixed[0]} read as {first!r})",
                  stacklevel=3)
    return b"\n".join(lines)


def _raise_first_bad_line(path: Path, data: bytes) -> None:
    """Slow scan for the first line that is not 6 numbers; raises naming the file and line."""
    for number, line in enumerate(data.split(b"\n"), start=1):
        tokens = line.split()
        if not tokens:
            continue
        text = line.decode("ascii", "replace").strip()
        if len(tokens) != 6:
            raise S3DISFormatError(f"{path} line {number}: expected 6 numbers 'x y z r g b', got {len(tokens)} "
                                   f"fields: {text!r}")
        for token in tokens:
            try:
                float(token)
            except ValueError:
                raise S3DISFormatError(f"{path} line {number}: non-numeric field {token.decode('ascii', 'replace')!r}"
                                       f" in {text!r}") from None
    raise S3DISFormatError(f"{path}: could not be parsed as lines of 'x y z r g b'")


def _check_values(path: Path, data: bytes, values: np.ndarray) -> None:
    """Finite coordinates and colours in 0..255, else an error naming the first offending line."""
    bad = ~np.isfinite(values).all(1) | ((values[:, 3:] < 0) | (values[:, 3:] > 255)).any(1)
    if bad.any():
        row = int(np.argmax(bad))
        numbered = [(n, l) for n, l in enumerate(data.split(b"\n"), start=1) if l.split()]
        number, line = numbered[row]
        raise S3DISFormatError(f"{path} line {number}: coordinates must be finite and colours in 0..255, got "
                               f"{line.decode('ascii', 'replace').strip()!r}")
