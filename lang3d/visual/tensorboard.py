"""Pictures for TensorBoard: overlays, colour maps, bird's-eye views of boxes. Loggers other than TensorBoard
are ignored."""
from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw

from lang3d.geometry.boxes import box_corners


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values [N] to uint8 RGB [N, 3] with a blue→cyan→yellow→red ramp over their own range."""
    v = np.asarray(values, dtype=np.float64)
    span = np.ptp(v) if v.size else 0.0
    t = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
    return (np.stack([r, g, b], 1) * 255).astype(np.uint8)


def label_colors(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A distinct uint8 RGB colour [N, 3] per class index (hues spread over the circle); negative labels grey."""
    hues = np.arange(num_classes) / max(num_classes, 1)
    palette = np.stack([np.clip(np.abs(6 * hues - 3) - 1, 0, 1), np.clip(2 - np.abs(6 * hues - 2), 0, 1),
                        np.clip(2 - np.abs(6 * hues - 4), 0, 1)], 1)
    palette = (palette * 200 + 40).astype(np.uint8)
    labels = np.asarray(labels)
    out = np.full((len(labels), 3), 128, np.uint8)
    valid = (labels >= 0) & (labels < num_classes)
    out[valid] = palette[labels[valid]]
    return out


def overlay_points(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Side by side: image uint8 [H, W, 3] and, on a darkened copy, the pixels (rows, cols) coloured by
    ``values``. Returns uint8 [H, 2W, 3]."""
    marked = (image // 3).astype(np.uint8)
    marked[rows, cols] = colormap(values)
    return np.concatenate([image, marked], axis=1)


def confusion_image(confusion: np.ndarray, class_names: list[str], cell: int = 28) -> np.ndarray:
    """Row-normalised confusion matrix [K, K] (rows: ground truth) drawn with class names and percentages.
    Returns uint8 [H, W, 3]."""
    conf = np.asarray(confusion, dtype=np.float64)
    rates = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    k = len(conf)
    margin = 8 + 6 * max(len(n) for n in class_names)
    canvas = Image.new("RGB", (margin + k * cell, margin + k * cell), "white")
    draw = ImageDraw.Draw(canvas)
    shades = (255 - rates * 200).astype(np.uint8)
    for i in range(k):
        draw.text((2, margin + i * cell + cell // 3), class_names[i], fill="black")
        draw.text((margin + i * cell + 2, 2 + (i % 2) * 10), class_names[i][:4], fill="black")
        for j in range(k):
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(int(shades[i, j]), int(shades[i, j]), 255),
                           outline=(200, 200, 200))
            if conf[i].sum() > 0:
                draw.text((x + 2, y + cell // 3), f"{100 * rates[i, j]:.0f}", fill="black")
    return np.asarray(canvas)


@rank_zero_only
def log_point_cloud(logger, tag: str, points: np.ndarray, colors: np.ndarray, step: int) -> None:
    """Log points [N, 3] with uint8 colours [N, 3] as a TensorBoard mesh (no faces)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_mesh(tag, vertices=torch.as_tensor(points, dtype=torch.float32)[None],
                                   colors=torch.as_tensor(colors, dtype=torch.uint8)[None], global_step=step)


@rank_zero_only
def log_image(logger, tag: str, image: np.ndarray, step: int) -> None:
    """Log uint8 [H, W, 3] to TensorBoard (no-op for other loggers)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, torch.from_numpy(np.array(image)), step, dataformats="HWC")


def bev_boxes_image(points: np.ndarray, box_sets: list[tuple[np.ndarray, tuple[int, int, int]]],
                    size: int = 512, margin: int = 12) -> np.ndarray:
    """Bird's-eye view (x right, y up, centred) of points [N,3] metres, coloured by height (2×2 pixels each),
    with box outlines on top: ``box_sets`` = [(boxes [M,7] in the ``lang3d.geometry.boxes`` convention, RGB colour),
    ...], drawn in order; a line from each box centre to the middle of its +dx face shows the heading.
    Returns uint8 [size, size, 3]."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    footprints = [box_corners(torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 7)))[:, :4, :2].numpy()
                  for b, _ in box_sets]
    xy = np.concatenate([points[:, :2]] + [f.reshape(-1, 2) for f in footprints])
    lo, hi = (xy.min(0), xy.max(0)) if len(xy) else (np.zeros(2), np.ones(2))
    scale = (size - 2 * margin) / max(float((hi - lo).max()), 1e-6)
    pad = (size - (hi - lo) * scale) / 2      # centres the drawing

    def pixels(p: np.ndarray) -> np.ndarray:  # [...,2] metres -> [...,2] (column, row)
        return np.stack([pad[0] + (p[..., 0] - lo[0]) * scale, size - 1 - pad[1] - (p[..., 1] - lo[1]) * scale], -1)

    canvas = np.full((size, size, 3), 255, np.uint8)
    if len(points):
        order = np.argsort(points[:, 2], kind="stable")  # higher points drawn last
        px = np.round(pixels(points[order, :2])).astype(np.int64)
        colours = (0.7 * colormap(points[:, 2])[order] + 0.3 * 255).astype(np.uint8)
        for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):   # 2×2 pixels per point: sparse clouds stay visible
            canvas[np.clip(px[:, 1] + dr, 0, size - 1), np.clip(px[:, 0] + dc, 0, size - 1)] = colours
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for footprint, (_, colour) in zip(footprints, box_sets):
        for corners in pixels(footprint):
            draw.polygon([tuple(c) for c in corners], outline=tuple(colour), width=2)
            front = (corners[0] + corners[3]) / 2
            draw.line([tuple(corners.mean(0)), tuple(front)], fill=tuple(colour), width=2)
    return np.asarray(image)
