"""Pictures for TensorBoard: overlays, colour maps. Loggers other than TensorBoard are ignored."""
from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values [N] to uint8 RGB [N, 3] with a blue→cyan→yellow→red ramp over their own range."""
    v = np.asarray(values, dtype=np.float64)
    span = np.ptp(v) if v.size else 0.0
    t = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
    return (np.stack([r, g, b], 1) * 255).astype(np.uint8)


def overlay_points(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Side by side: image uint8 [H, W, 3] and, on a darkened copy, the pixels (rows, cols) coloured by
    ``values``. Returns uint8 [H, 2W, 3]."""
    marked = (image // 3).astype(np.uint8)
    marked[rows, cols] = colormap(values)
    return np.concatenate([image, marked], axis=1)


@rank_zero_only
def log_image(logger, tag: str, image: np.ndarray, step: int) -> None:
    """Log uint8 [H, W, 3] to TensorBoard (no-op for other loggers)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, torch.from_numpy(np.ascontiguousarray(image)), step, dataformats="HWC")
