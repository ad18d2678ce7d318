"""Reader of PointNet's ``modelnet40_ply_hdf5_2048``.

Layout: ``ply_data_{train,test}<k>.h5`` with ``data`` float32 [S,2048,3] (centred, in the unit sphere) and
``label`` uint8 [S,1] (0..39; ``normal`` and ``faceId`` may be there too and are not needed), the shard lists
``train_files.txt`` / ``test_files.txt`` (lines like ``data/modelnet40_ply_hdf5_2048/ply_data_train0.h5``, of
which only the basename is kept), ``shape_names.txt`` (40 names, label order) and, per shard,
``ply_data_{split}_<k>_id2file.json`` (JSON list of source file names, giving the shape ids).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from datamodules.modelnet40.common import ModelNet40FormatError, check_labels

H5_DIR = "modelnet40_ply_hdf5_2048"


def read_file_list(path: str | Path) -> list[Path]:
    """Shard files named in ``train_files.txt`` / ``test_files.txt``: basenames resolved beside the list.
    A missing list or shard is an error naming it (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet40 h5 shard list {path} does not exist")
    shards = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        shard = path.parent / Path(line.strip().replace("\\", "/")).name
        if not shard.is_file():
            raise FileNotFoundError(f"{path} line {line_no}: shard {shard} does not exist")
        shards.append(shard)
    if not shards:
        raise ModelNet40FormatError(f"{path}: lists no shards")
    return shards


def read_h5(path: str | Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard -> (points float32 [S,P,3], labels int64 [S], S > 0). An unreadable file, a missing key, a bad
    shape, no shapes or a label outside 0..num_classes-1 is a ``ModelNet40FormatError`` naming the file (and key or
    index)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:  # missing, truncated or not HDF5 at all
        raise ModelNet40FormatError(f"{path}: not a readable HDF5 file ({err})") from err
    with f:
        for key in ("data", "label"):
            if key not in f:
                raise ModelNet40FormatError(f"{path}: no dataset '{key}' (has {sorted(f.keys())})")
        data = np.asarray(f["data"], dtype=np.float32)
        label = np.asarray(f["label"])
    if data.ndim != 3 or data.shape[2] != 3:
        raise ModelNet40FormatError(f"{path}: 'data' has shape {data.shape}, expected [S,P,3]")
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.shape != (len(data),):
        raise ModelNet40FormatError(f"{path}: 'label' has shape {label.shape}, expected [{len(data)},1]")
    if len(data) == 0:
        raise ModelNet40FormatError(f"{path}: no shapes ('data' has shape {data.shape})")
    return data, check_labels(label, num_classes, f"{path} dataset 'label'")


def id2file_path(shard: Path) -> Path:
    """``ply_data_train0.h5`` -> ``ply_data_train_0_id2file.json`` (beside the shard)."""
    match = re.fullmatch(r"(.*?)(\d+)", shard.stem)
    return shard.with_name(f"{match[1]}_{match[2]}_id2file.json" if match else f"{shard.stem}_id2file.json")


def shape_ids(shard: Path, count: int) -> list[str]:
    """Ids of a shard's shapes: stems of its id2file entries ("airplane_0001"), or "<shard stem>_<i>" when the
    JSON is absent. A JSON of another length is an error naming it."""
    path = id2file_path(shard)
    if not path.is_file():
        return [f"{shard.stem}_{i}" for i in range(count)]
    try:
        files = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelNet40FormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(files, list) or len(files) != count:
        raise ModelNet40FormatError(f"{path}: expected a list of {count} file names (one per shape of {shard.name})")
    return [Path(str(name).replace("\\", "/")).stem for name in files]


def load_h5_split(folder: str | Path, split: str,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """All shards of ``split`` ("train"/"test") -> (points float32 [S,P,3], labels int64 [S], ids [S], origins [S]
    ("<shard path> shape <i>", for messages))."""
    points, labels, ids, origins = [], [], [], []
    for shard in read_file_list(Path(folder) / f"{split}_files.txt"):
        data, label = read_h5(shard, num_classes)
        points.append(data)
        labels.append(label)
        ids.extend(shape_ids(shard, len(data)))
        origins.extend(f"{shard} shape {i}" for i in range(len(data)))
    return np.concatenate(points), np.concatenate(labels), ids, origins
