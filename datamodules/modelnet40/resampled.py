"""Reader of ``modelnet40_normal_resampled`` and of ULIP's cached test/train pickles beside it.

Layout: ``<class>/<class>_<NNNN>.txt`` (10000 lines ``x,y,z,nx,ny,nz``, comma-separated, no header), split
lists ``modelnet40_{train,test}.txt`` (shape ids such as ``flower_pot_0001``; the class is everything before
the last underscore) and ``modelnet40_shape_names.txt`` (ULIP, Point-Bind) or ``shape_names.txt`` (pointnet2).
ULIP's cache ``modelnet40_<split>_<P>pts_fps.dat`` is ``pickle.dump([points, labels])``: ``points[i]`` float32
[P,6] (xyz + normal), ``labels[i]`` int32 ``array([c])``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from datamodules.modelnet40.common import ModelNet40FormatError, check_labels

RESAMPLED_DIR = "modelnet40_normal_resampled"
SHAPE_NAME_FILES = ("modelnet40_shape_names.txt", "shape_names.txt")


def shape_names_file(folder: str | Path) -> Path:
    """The class-names file of a resampled folder (either accepted name)."""
    for name in SHAPE_NAME_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise FileNotFoundError(f"{folder}: neither {' nor '.join(SHAPE_NAME_FILES)} exists")


def split_list_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"modelnet40_{split}.txt"


def read_split_ids(folder: str | Path, split: str) -> list[str]:
    """Shape ids of ``split`` ("train"/"test"), in file order; a missing or empty list is an error naming it."""
    path = split_list_path(folder, split)
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet40 split list {path} does not exist")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ModelNet40FormatError(f"ModelNet40 split list {path} is empty: no shape ids")
    return ids


def class_of(shape_id: str) -> str:
    """"flower_pot_0001" -> "flower_pot"."""
    return "_".join(shape_id.split("_")[:-1])


def shape_path(folder: str | Path, shape_id: str) -> Path:
    return Path(folder) / class_of(shape_id) / f"{shape_id}.txt"


def read_shape(path: str | Path) -> np.ndarray:
    """One shape file -> float32 [P,C] (C = 6: xyz + normal); an empty file gives [0,6]. A missing file, a
    line that does not parse or a column count other than 3 or 6 is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet40 shape file {path} does not exist")
    text = path.read_text()
    if not text.strip():
        return np.zeros((0, 6), dtype=np.float32)
    try:
        values = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as err:
        raise ModelNet40FormatError(f"{path}: {err}") from None
    if values.shape[1] not in (3, 6):
        raise ModelNet40FormatError(f"{path}: {values.shape[1]} values per line, expected 6 (x,y,z,nx,ny,nz)")
    return values


def ulip_cache_path(folder: str | Path, split: str, num_points: int) -> Path:
    """``modelnet40_<split>_<num_points>pts_fps.dat`` (ULIP's name pattern)."""
    return Path(folder) / f"modelnet40_{split}_{num_points}pts_fps.dat"


def read_ulip_cache(path: str | Path, num_classes: int) -> tuple[list[np.ndarray], np.ndarray]:
    """ULIP's pickle -> (clouds: float32 [P,C] each, labels int64 [S]); a malformed file is an error naming it."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            content = pickle.load(f)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise ModelNet40FormatError(f"{path}: cannot be unpickled ({type(err).__name__}: {err})") from None
    if not (isinstance(content, (list, tuple)) and len(content) == 2 and len(content[0]) == len(content[1])):
        raise ModelNet40FormatError(f"{path}: expected [list of point arrays, list of labels] of equal length")
    if len(content[0]) == 0:
        raise ModelNet40FormatError(f"{path}: no shapes (empty lists of points and labels)")
    clouds = []
    for i, cloud in enumerate(content[0]):
        cloud = np.asarray(cloud, dtype=np.float32)
        if cloud.ndim != 2 or cloud.shape[1] < 3:
            raise ModelNet40FormatError(f"{path}: points of entry {i} have shape {cloud.shape}, expected [P,6]")
        clouds.append(cloud)
    labels = [np.asarray(label).reshape(-1) for label in content[1]]
    if any(label.shape != (1,) for label in labels):
        raise ModelNet40FormatError(f"{path}: each label must be one integer (array([c]))")
    return clouds, check_labels(np.concatenate(labels) if labels else np.zeros(0, np.int64), num_classes, str(path))
