"""Reader of VoteNet's prepared SUN RGB-D data (``sunrgbd/sunrgbd_pc_bbox_votes_50k_{v1,v2}_{train,val}/``).

Per sample (votenet ``sunrgbd_data.py``, names ``%06d`` of the image ids): ``%06d_pc.npz`` key ``pc`` float64
[N,6] upright-depth xyz metres (X right, Y forward, Z up) + rgb 0..1; ``%06d_bbox.npy`` float64 [K,8] (cx, cy,
cz, l, w, h, heading, class 0..9); ``%06d_votes.npz`` key ``point_votes`` float64 [N,10] (in-a-box mask, then 3
votes centre - point, repeated when fewer). Scenes without boxes are kept. The sample lists are
``train_data_idx.txt`` / ``val_data_idx.txt`` (one image id per line, in ``<root>/sunrgbd_trainval/`` as votenet
or ``<root>/``); without them the prepared folder is listed (as votenet's loader does).

Box conversion to the project convention: votenet stores HALF sizes (l, w, h) and a heading measured from +X
towards -Y (its corners are ``rotz(-heading) @ (+-l, +-w, +-h) + centre``). So full size = 2 x (l, w, h) and
heading = -heading_votenet (counter-clockwise about +z).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.detection_common import DetectionFormatError, check_array, load_array
from lang3d.data.boxes_transforms import box_segment

CLASS_NAMES = ("bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night stand", "bookshelf", "bathtub")
"""The 10 classes in votenet's ``type2class`` order (votenet spells 'night_stand')."""
MEAN_SIZE = np.array([
    [2.114256, 1.620300, 0.927272],  # bed
    [0.791118, 1.279516, 0.718182],  # table
    [0.923508, 1.867419, 0.845495],  # sofa
    [0.591958, 0.552978, 0.827272],  # chair
    [0.699104, 0.454178, 0.756250],  # toilet
    [0.695190, 1.346299, 0.736364],  # desk
    [0.528526, 1.002642, 1.172878],  # dresser
    [0.500618, 0.632163, 0.683424],  # night stand
    [0.404671, 1.071108, 1.688889],  # bookshelf
    [0.765840, 1.398258, 0.472728],  # bathtub
], dtype=np.float32)
"""[10,3] full box sizes (dx, dy, dz) metres per class: votenet ``model_util_sunrgbd.py`` ``type_mean_size``."""
FILE_SUFFIXES = ("_pc.npz", "_bbox.npy", "_votes.npz")


def prepared_dir(root: str | Path, split: str, version: str = "v1") -> Path:
    """``root/sunrgbd_pc_bbox_votes_50k_<version>_<split>``; a missing folder is an error naming it."""
    if version not in ("v1", "v2"):
        raise ValueError(f"SUN RGB-D label version must be 'v1' or 'v2', got {version!r}")
    path = Path(root).expanduser() / f"sunrgbd_pc_bbox_votes_50k_{version}_{split}"
    if not path.is_dir():
        raise DetectionFormatError(f"{path}: folder of votenet's prepared SUN RGB-D data is missing")
    return path


def index_file(root: str | Path, split: str) -> Path | None:
    """``<split>_data_idx.txt`` in ``root/sunrgbd_trainval/`` or else ``root/``; None if neither exists."""
    root = Path(root).expanduser()
    name = f"{split}_data_idx.txt"
    return next((p for p in (root / "sunrgbd_trainval" / name, root / name) if p.is_file()), None)


def read_index(path: str | Path) -> list[str]:
    """Sample names (``%06d``) of an index file of one positive integer image id per line."""
    names = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit() or int(text) == 0:
            raise DetectionFormatError(f"{path} line {number}: expected a positive image id, got {text!r}")
        names.append("%06d" % int(text))
    if not names:
        raise DetectionFormatError(f"{path}: index file lists no samples")
    return names


def list_samples(folder: str | Path) -> list[str]:
    """Sorted sample names found in a prepared folder (votenet: the first 6 characters of each file name)."""
    names = sorted({p.name[:6] for p in Path(folder).iterdir() if p.name.endswith(FILE_SUFFIXES)})
    if not names:
        raise DetectionFormatError(f"{folder}: no prepared SUN RGB-D samples (*_pc.npz) in the folder")
    return names


def scene_files(folder: str | Path, name: str) -> list[Path]:
    """The three files of sample ``name`` in ``folder``."""
    return [Path(folder) / f"{name}{suffix}" for suffix in FILE_SUFFIXES]


def votenet_to_boxes(bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """votenet boxes [K,8] (centre, half sizes, heading from +X towards -Y, class) -> (boxes [K,7] float64 in the
    project convention: centre, full sizes, counter-clockwise heading; labels [K] int64)."""
    bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 8)
    return np.concatenate([bbox[:, :3], 2 * bbox[:, 3:6], -bbox[:, 6:7]], 1), bbox[:, 7].astype(np.int64)


def read_sample(folder: str | Path, name: str) -> dict[str, np.ndarray]:
    """The arrays of sample ``name``, checked: pc [N,6] float, bbox [K,8] float (half sizes >= 0, class an
    integer 0..9), point_votes [N,10] float (mask column 0 or 1)."""
    pc_path, bbox_path, votes_path = scene_files(folder, name)
    pc = check_array(pc_path, load_array(pc_path, "pc"), "pc", "f", (None, 6))
    if not len(pc):
        raise DetectionFormatError(f"{pc_path}: sample has no points")
    bbox = check_array(bbox_path, load_array(bbox_path), "bbox", "f", (None, 8))
    cls = bbox[:, 7]
    bad = (cls != np.round(cls)) | (cls < 0) | (cls >= len(CLASS_NAMES))
    if bad.any():
        raise DetectionFormatError(f"{bbox_path}: box {int(np.argmax(bad))} has class id {cls[bad][0]:g}, expected "
                                   f"an integer 0..{len(CLASS_NAMES) - 1} ({', '.join(CLASS_NAMES)})")
    if (bbox[:, 3:6] < 0).any():
        raise DetectionFormatError(f"{bbox_path}: negative box sizes")
    votes = check_array(votes_path, load_array(votes_path, "point_votes"), "point_votes", "f", (len(pc), 10))
    if not np.isin(votes[:, 0], (0, 1)).all():
        raise DetectionFormatError(f"{votes_path}: point_votes column 0 (in-box mask) holds values other than 0/1")
    return {"pc": pc, "bbox": bbox, "point_votes": votes}


def load_scene(folder: str | Path, name: str) -> dict[str, np.ndarray]:
    """Sample ``name`` of ``folder`` as a detection scene dict (``lang3d.data.boxes_transforms``): coord [N,3]
    float32 metres, color [N,3] float32 0..255, segment [N] int64 (class of the smallest box holding the point,
    -1 none), vote [N,9] float32, vote_mask [N] int64, gt_boxes [K,7] float32 (converted, see the module
    docstring), gt_labels [K] int64."""
    arrays = read_sample(folder, name)
    pc, votes = arrays["pc"], arrays["point_votes"]
    boxes, labels = votenet_to_boxes(arrays["bbox"])
    return {"coord": pc[:, :3].astype(np.float32), "color": (pc[:, 3:6] * 255.0).astype(np.float32),
            "segment": box_segment(pc[:, :3], boxes, labels), "vote": votes[:, 1:10].astype(np.float32),
            "vote_mask": votes[:, 0].astype(np.int64), "gt_boxes": boxes.astype(np.float32), "gt_labels": labels}
