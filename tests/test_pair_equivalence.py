"""The fast 2D-3D pair path against slow references: voxel keys against ``np.unique(axis=0)``, JPEG frames decoded at
reduced scale against a full decode then resize, and whole frames (both scan sources) against the path that decodes
the full colour frame and voxelises by row comparison: identical voxels, pairs and depth targets, images and voxel
colours within a stated bound."""
import io
import struct

import numpy as np
import pytest
from PIL import Image

from datamodules.scannet.frame_pairs import ScanNetFramePairs
from datamodules.scannet.pairs import PairConfig, correspondences
from datamodules.scannet.scene import open_scene
from datamodules.scannet.sens import SensFile, SensFormatError, write_sens
from datamodules.synthetic.scannet import generate_scannet
from lang3d.data.image_files import decode_resized
from lang3d.geometry.camera import backproject_depth, project_points, render_depth, scale_intrinsics, voxelize
from lang3d.geometry.voxel_grid import unique_rows

# A JPEG decoded at reduced scale then resized differs from a full decode then resize by 0.28 of 255 levels on
# average and 11 at most on ScanNet-sized synthetic frames (1296×968 -> 320×240, 48 frames); a one-pixel shift of
# these textured images moves the mean by several levels.
MEAN_LEVELS, MAX_LEVELS = 1.0, 24


def reference_unique(grid):
    rows, inverse, counts = np.unique(grid, axis=0, return_inverse=True, return_counts=True)
    return rows, inverse.reshape(-1), counts


def scan_order(rng):
    """Points of a smooth surface in scan order: voxel coordinates repeat in runs, as a depth map's do."""
    t = np.linspace(0, 6, 5000)
    return np.floor(np.stack([np.cos(t), np.sin(t), t / 3], 1) / 0.02 + rng.normal(0, 0.1, (5000, 3))).astype(int)


@pytest.mark.parametrize("case", ["random", "scan_order", "negative", "beyond_63_bits", "one_row", "empty"])
def test_unique_rows_is_numpy_unique_over_rows(case):
    rng = np.random.default_rng(0)
    grid = {"random": lambda: rng.integers(0, 30, (4000, 3)),
            "scan_order": lambda: scan_order(rng),
            "negative": lambda: rng.integers(-50, 5, (3000, 3)),
            "beyond_63_bits": lambda: rng.integers(-2**40, 2**40, (500, 3)) * rng.integers(0, 2, (500, 1)),
            "one_row": lambda: np.array([[3, -4, 5]]),
            "empty": lambda: np.zeros((0, 3), dtype=np.int64)}[case]()
    rows, inverse, counts = unique_rows(grid)
    expected = reference_unique(grid.astype(np.int64))
    for got, want in zip((rows, inverse, counts), expected):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """Two scans of 3 frames: colour 256×192 (four times the 64×48 images, as ScanNet's 1296×968 for 320×240),
    depth 80×60, in both on-disk forms."""
    root = tmp_path_factory.mktemp("scannet_4x")
    generate_scannet(root, num_scenes=2, frames_per_scene=3, color_size=(256, 192), depth_size=(80, 60), seed=3)
    return root


def test_voxelize_of_a_depth_map_is_row_unique(scan):
    scene = open_scene(scan / "scans" / "scene0000_00", "exported")
    points, _ = backproject_depth(scene.depth(1), scene.intrinsic_depth, scene.pose(1))
    coords, inverse = voxelize(points, 0.025)
    rows, expected_inverse, _ = reference_unique(np.floor(points / 0.025).astype(np.int64))
    assert len(rows) > 100
    np.testing.assert_array_equal(coords, rows.astype(np.int32))
    np.testing.assert_array_equal(inverse, expected_inverse)


def full_decode_then_resize(image: Image.Image, size) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(image.convert("RGB"))).resize(size, Image.BILINEAR))


def test_reduced_scale_jpeg_decode_is_within_the_bound(scan):
    jpeg = (scan / "scans" / "scene0000_00" / "color" / "0.jpg").read_bytes()
    with Image.open(io.BytesIO(jpeg)) as image:
        reference = full_decode_then_resize(image, (64, 48))
    for source in (jpeg, scan / "scans" / "scene0000_00" / "color" / "0.jpg"):
        got, stored = decode_resized(source, (64, 48))
        assert stored == (256, 192) and got.shape == (48, 64, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - reference.astype(int))
        assert diff.mean() <= MEAN_LEVELS and diff.max() <= MAX_LEVELS, (diff.mean(), diff.max())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_full_decode_where_no_scale_applies(fmt):
    """PNG has no reduced-scale decoding, and a JPEG under twice the target size is decoded in full: both give
    exactly the full decode then resize."""
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(buf, format=fmt)
    with Image.open(io.BytesIO(buf.getvalue())) as image:
        reference = full_decode_then_resize(image, (40, 30))
    got, stored = decode_resized(buf.getvalue(), (40, 30))
    assert stored == (70, 50)
    np.testing.assert_array_equal(got, reference)


def reference_pair(scene, frame: int, cfg: PairConfig) -> dict:
    """The pair of a frame the slow way: the full colour frame resized by Pillow, voxels by row comparison
    (``np.unique(axis=0)``), per-voxel mean colours by ``np.add.at``."""
    H, W = cfg.image_size
    color, depth, pose = scene.color(frame), scene.depth(frame), scene.pose(frame)
    image = np.asarray(Image.fromarray(color).resize((W, H), Image.BILINEAR))
    K_img = scale_intrinsics(scene.intrinsic_color, (color.shape[1], color.shape[0]), (W, H))
    points, _ = backproject_depth(depth, scene.intrinsic_depth, pose)
    coord, inverse, counts = reference_unique(np.floor(points / cfg.voxel_size).astype(np.int64))
    coord = coord.astype(np.int32)
    uv, z = project_points(points, K_img, pose)
    return {"image": image, "coord": coord, "inverse": inverse, "counts": counts, "uv": uv,
            "depth": render_depth(uv, z, (W, H)),
            "pairs": correspondences(coord, depth, pose, scene.intrinsic_depth, K_img, (H, W), cfg.voxel_size,
                                     cfg.depth_tolerance)}


def voxel_colours(image: np.ndarray, ref: dict) -> np.ndarray:
    H, W = image.shape[:2]
    col = np.clip(np.floor(ref["uv"][:, 0] + 0.5), 0, W - 1).astype(int)
    row = np.clip(np.floor(ref["uv"][:, 1] + 0.5), 0, H - 1).astype(int)
    sums = np.zeros((len(ref["coord"]), 3))
    np.add.at(sums, ref["inverse"], image[row, col] / 255.0)
    return sums / ref["counts"][:, None]


@pytest.mark.parametrize("source", ["exported", "sens"])
def test_frame_pairs_match_the_full_decode_path(scan, source):
    cfg = PairConfig(image_size=(48, 64), voxel_size=0.025, depth_tolerance=0.02, min_pairs=1)
    names = ["scene0000_00", "scene0001_00"]
    dataset = ScanNetFramePairs(scan / "scans", names, cfg, frame_skip=1, source=source)
    assert len(dataset) == 6
    for index, (name, frame) in enumerate(dataset.frames):
        sample, ref = dataset[index], reference_pair(dataset.scenes[name], frame, cfg)
        assert len(ref["pairs"]) > 100
        for key in ("coord", "pairs", "depth"):
            np.testing.assert_array_equal(sample[key], ref[key], err_msg=f"{key} of {name}/{frame}")
        diff = np.abs(sample["image"].astype(int) - ref["image"].astype(int))
        assert diff.mean() <= MEAN_LEVELS and diff.max() <= MAX_LEVELS, (diff.mean(), diff.max())
        # the voxel colours are the mean of the sample's own image at the voxel's points (exactly), and so
        # within the image bound of the full-decode path's colours
        np.testing.assert_allclose(sample["color"], voxel_colours(sample["image"], ref), rtol=0, atol=1e-6)
        assert np.abs(sample["color"] - voxel_colours(ref["image"], ref)).max() <= diff.max() / 255 + 1e-6


def test_colour_frame_of_another_size_than_the_header_is_a_named_error(tmp_path):
    """A .sens whose header gives another colour size than its JPEGs have is reported by name, by the full and by
    the reduced-scale decode."""
    rng = np.random.default_rng(2)
    path = tmp_path / "x.sens"
    write_sens(path, np.eye(4), np.eye(4), [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)] * 2,
               [np.ones((30, 40), np.uint16)] * 2, np.stack([np.eye(4)] * 2))
    raw = bytearray(path.read_bytes())
    (name_len,) = struct.unpack_from("<Q", raw, 4)
    width_at = 4 + 8 + name_len + 64 * 4 + 2 * 4  # after version, sensor name, 4 matrices, 2 compression types
    assert struct.unpack_from("<II", raw, width_at) == (128, 96)
    struct.pack_into("<II", raw, width_at, 256, 192)
    path.write_bytes(bytes(raw))
    sens = SensFile(path)
    for read in (sens.color, lambda i: sens.color_resized(i, (64, 48))):
        with pytest.raises(SensFormatError, match=f"{path}: frame 1: colour image is 128x96, header says 256x192"):
            read(1)
