"""Reading conditioning / query images from files."""
from __future__ import annotations

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
