"""What both ModelNet40 formats share: the class list, the shape-names file and the format error."""
from __future__ import annotations

from pathlib import Path

import numpy as np

MODELNET40_CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox")


class ModelNet40FormatError(ValueError):
    """ModelNet40 input that cannot be read; the message names the file (and key, line or index) at fault."""


def read_shape_names(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored): label i is line i."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet40 shape-names file {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ModelNet40FormatError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise ModelNet40FormatError(f"{path}: repeated class names")
    return names


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> np.ndarray:
    """labels [S] (any integer dtype) -> int64 [S]; a value outside 0..num_classes-1 is an error naming
    ``source`` and the first bad index."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ModelNet40FormatError(f"{source}: labels have dtype {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise ModelNet40FormatError(f"{source}: label {labels[i]} at index {i} is outside 0..{num_classes - 1} "
                                    f"({len(bad)} such labels)")
    return labels
