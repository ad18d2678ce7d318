"""Reader of VoteNet's prepared ScanNet detection data (``scannet/scannet_train_detection_data/``).

Per scan (votenet ``batch_load_scannet_data.py``): ``<scan>_vert.npy`` float32 [N,6] axis-aligned xyz metres +
rgb 0..255; ``<scan>_sem_label.npy`` uint32 [N] nyu40 id (0 unannotated); ``<scan>_ins_label.npy`` uint32 [N]
objectId + 1 (0 none); ``<scan>_bbox.npy`` float64 [K,7] axis-aligned boxes (cx, cy, cz, dx, dy, dz full sizes,
nyu40 id), only the 18 detection classes. Splits: ``scannetv2_{train,val}.txt`` in ``<root>/meta_data/`` (as
votenet) or ``<root>/``; mean box sizes: votenet's ``scannet_means.npz`` (``arr_0`` [18,3]) in the same places.

Vote targets follow votenet's ``scannet_detection_dataset.py``: a point of an instance whose first point's
nyu40 id is one of the 18 classes votes for the centre of the instance's points' axis-aligned extent. Here the
extent is taken over all the scan's points of the instance, before sampling and augmentation, and the vote is
then transformed with the points (votenet: over the sampled, augmented points); the two agree up to sampling
and the +-5 degree box re-fit, and ours ends exactly at the centre of the instance's (re-fitted) box.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.detection_common import DetectionFormatError, check_array, load_array

DATA_DIR = "scannet_train_detection_data"
FILE_SUFFIXES = ("_vert.npy", "_sem_label.npy", "_ins_label.npy", "_bbox.npy")
NYU40_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
"""nyu40 id of each detection class, in votenet's class order (``nyu40id2class``)."""
CLASS_NAMES = ("cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
               "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "garbage bin")
"""The 18 classes in votenet's ``type2class`` order, spelled as words (votenet: 'showercurtrain',
'garbagebin' for nyu40 39 'otherfurniture')."""


def nyu40_to_class(ids: np.ndarray) -> np.ndarray:
    """nyu40 ids (any shape, >= 0) -> detection class index 0..17, -1 for every other id. Returns int64."""
    ids = np.asarray(ids, dtype=np.int64)
    lut = np.full(max(41, int(ids.max(initial=0)) + 1), -1, dtype=np.int64)
    lut[list(NYU40_IDS)] = np.arange(len(NYU40_IDS))
    return lut[ids]


def find_meta_file(root: str | Path, name: str) -> Path | None:
    """``root/meta_data/<name>`` or else ``root/<name>``, whichever exists first; None if neither does."""
    root = Path(root)
    return next((path for path in (root / "meta_data" / name, root / name) if path.is_file()), None)


def meta_file(root: str | Path, name: str) -> Path:
    """``find_meta_file``, where neither file existing is an error naming both."""
    path = find_meta_file(root, name)
    if path is None:
        raise DetectionFormatError(f"{Path(root) / 'meta_data' / name}: file is missing (nor is there "
                                   f"{Path(root) / name})")
    return path


def data_dir(root: str | Path) -> Path:
    """The ``scannet_train_detection_data`` folder under ``root``."""
    path = Path(root).expanduser() / DATA_DIR
    if not path.is_dir():
        raise DetectionFormatError(f"{path}: folder of votenet's prepared ScanNet detection data is missing")
    return path


def scene_files(folder: str | Path, scan: str) -> list[Path]:
    """The four files of ``scan`` in ``folder``."""
    return [Path(folder) / f"{scan}{suffix}" for suffix in FILE_SUFFIXES]


def read_bbox(path: str | Path) -> np.ndarray:
    """``<scan>_bbox.npy`` checked: [K,7] float64, sizes >= 0, class ids among the 18 nyu40 ids."""
    bbox = check_array(path, load_array(path), "bbox", "f", (None, 7)).astype(np.float64)
    bad = ~np.isin(bbox[:, 6], NYU40_IDS)
    if bad.any():
        raise DetectionFormatError(f"{path}: box {int(np.argmax(bad))} has class id {bbox[bad][0, 6]:g}, not one of "
                                   f"the 18 detection nyu40 ids {list(NYU40_IDS)}")
    if (bbox[:, 3:6] < 0).any():
        raise DetectionFormatError(f"{path}: negative box sizes")
    return bbox


def read_scan(folder: str | Path, scan: str) -> dict[str, np.ndarray]:
    """The four arrays of ``scan``, checked: vert [N,6] float, sem_label / ins_label [N] int >= 0, bbox [K,7]."""
    vert_path, sem_path, ins_path, bbox_path = scene_files(folder, scan)
    vert = check_array(vert_path, load_array(vert_path), "vertices", "f", (None, 6))
    if not len(vert):
        raise DetectionFormatError(f"{vert_path}: scan has no points")
    arrays = {"vert": vert}
    for key, path in (("sem_label", sem_path), ("ins_label", ins_path)):
        labels = check_array(path, load_array(path), key, "iu", (len(vert),))
        if labels.min() < 0:
            raise DetectionFormatError(f"{path}: negative {key} values")
        arrays[key] = labels.astype(np.int64)
    arrays["bbox"] = read_bbox(bbox_path)
    return arrays


def instance_votes(coord: np.ndarray, instance: np.ndarray, nyu40: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vote targets of votenet's ScanNet dataset: (vote [N,9] float32 = (centre - point) x 3, mask [N] int64).

    coord [N,3] metres, instance [N] ids (0 none), nyu40 [N]: a point of instance i > 0 whose first point has
    one of the 18 nyu40 ids votes for the centre of the axis-aligned extent of i's points.
    """
    ids, first, inverse = np.unique(instance, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    lo = np.full((len(ids), 3), np.inf)
    hi = np.full((len(ids), 3), -np.inf)
    np.minimum.at(lo, inverse, coord)
    np.maximum.at(hi, inverse, coord)
    votes_for = (ids > 0) & np.isin(nyu40[first], NYU40_IDS)
    mask = votes_for[inverse]
    vote = np.where(mask[:, None], (lo + hi)[inverse] / 2 - coord, 0.0)
    return np.tile(vote, 3).astype(np.float32), mask.astype(np.int64)


def load_scene(folder: str | Path, scan: str) -> dict[str, np.ndarray]:
    """Scan ``scan`` of ``folder`` as a detection scene dict (``lang3d.data.boxes_transforms``): coord [N,3]
    float32 metres, color [N,3] float32 0..255, segment [N] int64 (class 0..17 of the nyu40 label, -1 other),
    vote [N,9] float32, vote_mask [N] int64, gt_boxes [K,7] float32 (heading 0), gt_labels [K] int64."""
    arrays = read_scan(folder, scan)
    vert, bbox = arrays["vert"], arrays["bbox"]
    coord = vert[:, :3].astype(np.float64)
    vote, vote_mask = instance_votes(coord, arrays["ins_label"], arrays["sem_label"])
    boxes = np.zeros((len(bbox), 7), dtype=np.float32)
    boxes[:, :6] = bbox[:, :6]
    return {"coord": coord.astype(np.float32), "color": vert[:, 3:6].astype(np.float32),
            "segment": nyu40_to_class(arrays["sem_label"]), "vote": vote, "vote_mask": vote_mask,
            "gt_boxes": boxes, "gt_labels": nyu40_to_class(bbox[:, 6].astype(np.int64))}


def mean_sizes(boxes: list[np.ndarray]) -> np.ndarray:
    """[18,3] float32 mean full box size per class over votenet ``bbox`` arrays [K,7]; a class without boxes gets
    the mean over all boxes. No box at all is a ``ValueError``."""
    bbox = np.concatenate([b.reshape(-1, 7) for b in boxes]) if boxes else np.zeros((0, 7))
    if not len(bbox):
        raise ValueError("cannot compute mean box sizes: the training scenes hold no boxes")
    labels = nyu40_to_class(bbox[:, 6].astype(np.int64))
    out = np.tile(bbox[:, 3:6].mean(0), (len(NYU40_IDS), 1))
    for k in np.unique(labels):
        out[k] = bbox[labels == k, 3:6].mean(0)
    return out.astype(np.float32)


def read_means_file(path: str | Path) -> np.ndarray:
    """votenet's ``scannet_means.npz``: ``arr_0`` [18,3] mean full sizes, as float32."""
    means = check_array(path, load_array(path, "arr_0"), "arr_0", "f", (len(NYU40_IDS), 3))
    return means.astype(np.float32)
