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


def overlay_points(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, radius: int = 1) -> np.ndarray:
    """Draw points at (rows, cols) on a copy of image uint8 [H, W, 3], coloured by ``values``."""
    out = image.copy()
    colors = colormap(values)
    H, W = out.shape[:2]
    for dr in range(-radius + 1, radius):
        for dc in range(-radius + 1, radius):
            r = np.clip(rows + dr, 0, H - 1)
            c = np.clip(cols + dc, 0, W - 1)
            out[r, c] = colors
    return out


@rank_zero_only
def log_image(logger, tag: str, image: np.ndarray, step: int) -> None:
    """Log uint8 [H, W, 3] to TensorBoard (no-op for other loggers)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, torch.from_numpy(np.ascontiguousarray(image)), step, dataformats="HWC")
