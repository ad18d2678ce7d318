"""ScanNet v2 label tables (nyu40, the 20-class benchmark) and the official split lists.

Sources: ScanNet `scannetv2-labels.combined.tsv` (nyu40 names), `Tasks/Benchmark/` (benchmark classes,
`scannetv2_{train,val,test}.txt`) and the nyu40 colour palette of ScanNet's `util.py`.
"""

from __future__ import annotations

import os
import re

import numpy as np


class ScanNetFormatError(ValueError):
    """A ScanNet file or folder is missing or does not have the expected format."""


NYU40_CLASSES: dict[int, str] = {
    1: "wall", 2: "floor", 3: "cabinet", 4: "bed", 5: "chair", 6: "sofa", 7: "table", 8: "door",
    9: "window", 10: "bookshelf", 11: "picture", 12: "counter", 13: "blinds", 14: "desk", 15: "shelves",
    16: "curtain", 17: "dresser", 18: "pillow", 19: "mirror", 20: "floor mat", 21: "clothes",
    22: "ceiling", 23: "books", 24: "refridgerator", 25: "television", 26: "paper", 27: "towel",
    28: "shower curtain", 29: "box", 30: "whiteboard", 31: "person", 32: "night stand", 33: "toilet",
    34: "sink", 35: "lamp", 36: "bathtub", 37: "bag", 38: "otherstructure", 39: "otherfurniture",
    40: "otherprop",
}
"""nyu40 id -> class name as spelled in the tsv (0 = unannotated, not listed)."""

VALID_CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
"""nyu40 ids of the 20 benchmark classes; the training index of a class is its position here."""

CLASS_LABELS: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
    "bathtub", "otherfurniture",
)
"""Names of the 20 benchmark classes, aligned with VALID_CLASS_IDS."""

NYU40_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
    (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189), (196, 156, 148),
    (23, 190, 207), (178, 76, 76), (247, 182, 210), (66, 188, 102), (219, 219, 141), (140, 57, 197),
    (202, 185, 52), (51, 176, 203), (200, 54, 131), (92, 193, 61), (78, 71, 183), (172, 114, 82),
    (255, 127, 14), (91, 163, 138), (153, 98, 156), (140, 153, 101), (158, 218, 229), (100, 125, 154),
    (178, 127, 135), (120, 185, 128), (146, 111, 194), (44, 160, 44), (112, 128, 144), (96, 207, 209),
    (227, 119, 194), (213, 92, 176), (94, 106, 211), (82, 84, 163), (100, 85, 144),
)
"""RGB uint8 colour of nyu40 id i at index i (ScanNet's `create_color_palette`), used by labels.ply."""

_SCENE_ID = re.compile(r"^scene\d{4}_\d{2}$")


def nyu40_to_benchmark(labels: np.ndarray, ignore_index: int = -1) -> np.ndarray:
    """Map nyu40 ids (any int shape) to benchmark indices 0..19; other ids -> `ignore_index`. Returns int64."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"nyu40 ids must be >= 0, got {labels.min()}")
    lut = np.full(max(len(NYU40_PALETTE), int(labels.max(initial=0)) + 1), ignore_index, dtype=np.int64)
    lut[list(VALID_CLASS_IDS)] = np.arange(len(VALID_CLASS_IDS))
    return lut[labels]


def read_split(path: str | os.PathLike) -> list[str]:
    """Scene ids listed in a `scannetv2_{train,val,test}.txt` file (one `sceneXXXX_XX` per line)."""
    hint = ("the official lists scannetv2_{train,val,test}.txt come from the ScanNet repository's "
            "Tasks/Benchmark folder")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScanNetFormatError(f"{path}: split file not found; {hint}")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    scenes = [line for line in lines if line]
    if not scenes:
        raise ScanNetFormatError(f"{path}: split file is empty; {hint}")
    for lineno, line in enumerate(lines, start=1):
        if line and not _SCENE_ID.match(line):
            raise ScanNetFormatError(f"{path}:{lineno}: expected a scene id like 'scene0191_00', got {line!r}")
    return scenes
