"""lang3d.data.image_files.read_image: RGB uint8, transparency over white, bad files named."""
import numpy as np
import pytest
from PIL import Image

from lang3d.data.image_files import ImageFileError, read_image


def test_rgba_is_composited_over_white_and_rgb_kept(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255                                   # top half opaque red-ish, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (4, 5, 3)
    assert (image[:2] == [200, 0, 0]).all() and (image[2:] == 255).all()
    rgb = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    assert (read_image(tmp_path / "b.png") == rgb).all()


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ImageFileError, match="nope.png does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageFileError, match="bad.png is not a readable image"):
        read_image(tmp_path / "bad.png")
