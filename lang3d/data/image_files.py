"""Reading images from files: conditioning / query images, and colour frames decoded straight to a smaller size."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


class ImageFileError(ValueError):
    """An image file that is missing or unreadable; the message names it."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> uint8 [H,W,3] RGB, transparency composited over white (as Cap3D's renders are)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
    except (OSError, SyntaxError) as err:
        raise ImageFileError(f"image {path} is not a readable image ({err})") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def decode_resized(source: str | Path | bytes, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file or its encoded bytes -> (uint8 [H,W,3] RGB resized to ``size`` = (W, H) by Pillow's bilinear
    filter, the stored image's (width, height)).

    A JPEG is decoded at the smallest of libjpeg's DCT scales (1/2, 1/4, 1/8) that keeps at least twice ``size`` on
    both axes (Pillow's ``Image.draft``), then resized; other formats, and JPEGs under twice ``size``, are decoded
    in full. ScanNet's 1296×968 frames for 320×240 images are decoded at 648×484: a quarter of the pixels, and the
    result differs from a full decode then the same resize by 0.3 of 255 levels on average, 11 at most
    (tests/test_pair_equivalence.py bounds it). Decoding errors propagate (OSError, SyntaxError, ValueError).
    """
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
        stored = image.size
        drafted = image.draft("RGB", (2 * size[0], 2 * size[1]))  # None for formats other than JPEG
        box = drafted[1] if drafted else None  # the stored frame's extent in decoded pixels
        return np.asarray(image.convert("RGB").resize(size, Image.BILINEAR, box=box)), stored
