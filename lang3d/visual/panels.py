"""Square picture panels of any modality (a point cloud, an image, a text, an audio spectrogram) and a captioned
strip of them: the picture of one retrieval query and its ranked results.

Every panel is uint8 [S,S,3]; ``strip`` puts panels side by side with a caption under each -> uint8 [H,W,3].
"""
from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw

from lang3d.visual.render import render_points
from lang3d.visual.tensorboard import colormap

SIZE = 160
CAPTION_LINES, LINE_HEIGHT, CHARS_PER_LINE = 3, 12, 26


def cloud_panel(xyz: np.ndarray, rgb: np.ndarray | None = None, size: int = SIZE) -> np.ndarray:
    """Points [P,3] (any units: centred and scaled into the unit sphere here), colours [P,3] in 0..255 (None:
    grey) -> a render from azimuth 30°, elevation 20°."""
    xyz = np.asarray(xyz, dtype=np.float32)
    xyz = xyz - xyz.mean(0)
    xyz = xyz / max(float(np.linalg.norm(xyz, axis=1).max()), 1e-9)
    colours = np.full_like(xyz, 0.35) if rgb is None else np.asarray(rgb, dtype=np.float32) / 255.0
    image = render_points(torch.from_numpy(xyz)[None], torch.from_numpy(colours)[None], azimuth=30.0,
                          elevation=20.0, distance=3.0, image_size=size, radius=1)[0]
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def image_panel(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 [H,W,3] -> fitted into the square (aspect kept, white margins)."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture.thumbnail((size, size), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    return np.asarray(canvas)


def text_panel(text: str, size: int = SIZE) -> np.ndarray:
    """A text, wrapped, in black on a light background."""
    canvas = Image.new("RGB", (size, size), (245, 245, 235))
    lines = textwrap.wrap(text, width=max(size // 7, 8))[: size // LINE_HEIGHT - 1]
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, 6 + i * LINE_HEIGHT), line, fill="black")
    return np.asarray(canvas)


def spectrogram_panel(spectrograms: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Spectrograms [..., mel bins, frames] (e.g. ImageBind's clips [3,1,128,204]) -> the clips side by side in
    time, low frequencies at the bottom, coloured over their own range."""
    spectrograms = np.asarray(spectrograms, dtype=np.float32)
    bins, frames = spectrograms.shape[-2:]
    joined = np.concatenate(list(spectrograms.reshape(-1, bins, frames)), axis=1)[::-1]      # [bins, clips*frames]
    colours = colormap(joined.reshape(-1)).reshape(*joined.shape, 3)
    return np.asarray(Image.fromarray(colours).resize((size, size), Image.BILINEAR))


def strip(panels: list[np.ndarray], captions: list[str]) -> np.ndarray:
    """Panels [S,S,3] side by side (a 4-pixel white gap), each with its caption under it (wrapped, at most 3 lines)
    -> uint8 [S + 3 lines, n·(S+4), 3]."""
    if not panels or len(panels) != len(captions):
        raise ValueError(f"strip needs one caption per panel and at least one panel, got {len(panels)} panels and "
                         f"{len(captions)} captions")
    size = panels[0].shape[0]
    canvas = Image.new("RGB", (len(panels) * (size + 4), size + CAPTION_LINES * LINE_HEIGHT + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, caption) in enumerate(zip(panels, captions)):
        x = i * (size + 4)
        canvas.paste(Image.fromarray(panel), (x, 0))
        for j, line in enumerate(textwrap.wrap(caption, width=CHARS_PER_LINE)[:CAPTION_LINES]):
            draw.text((x + 2, size + 2 + j * LINE_HEIGHT), line, fill="black")
    return np.asarray(canvas)
