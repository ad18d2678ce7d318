"""Camera geometry and pixel-voxel correspondences against brute-force per-element computations."""
import numpy as np
import pytest

from datamodules.scannet.pairs import PairConfig, build_frame_pair, correspondences
from lang3d.geometry import backproject_depth, project_points, render_depth, scale_intrinsics, voxelize


def look_at(eye, target):
    """Camera-to-world [4,4] (OpenCV axes) for a camera at eye looking at target, z up."""
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = eye
    return T


def plane_depth(K, T, size, plane_z=0.0):
    """Exact depth [h,w] of the ground plane z = plane_z seen by camera T (0 where the ray misses it)."""
    w, h = size
    rows, cols = np.mgrid[0:h, 0:w]
    rays_cam = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones_like(cols, float)], -1)
    rays_world = rays_cam @ T[:3, :3].T
    t = (plane_z - T[2, 3]) / rays_world[..., 2]
    return np.where(t > 0, t, 0.0).astype(np.float32)  # z along the optical axis = t since ray z_cam = 1


@pytest.fixture
def frame():
    K_depth = np.array([[40.0, 0, 23.5], [0, 40.0, 17.5], [0, 0, 1]])
    K_color = np.array([[80.0, 0, 47.5], [0, 80.0, 35.5], [0, 0, 1]])
    T = look_at(np.array([0.3, -1.0, 1.2]), [0.5, 1.0, 0.0])
    depth = plane_depth(K_depth, T, (48, 36))
    rng = np.random.default_rng(0)
    color = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
    return color, depth, T, K_color, K_depth


def test_backproject_then_project_returns_pixels(frame):
    _, depth, T, _, K = frame
    points, pix = backproject_depth(depth, K, T)
    uv, z = project_points(points, K, T)
    np.testing.assert_allclose(uv[:, 0], pix[:, 1], atol=1e-6)
    np.testing.assert_allclose(uv[:, 1], pix[:, 0], atol=1e-6)
    np.testing.assert_allclose(z, depth[pix[:, 0], pix[:, 1]], rtol=1e-6)
    np.testing.assert_allclose(points[:, 2], 0.0, atol=1e-5)  # all on the ground plane


def test_scale_intrinsics_maps_pixel_centres():
    K = np.array([[100.0, 0, 31.5], [0, 90.0, 23.5], [0, 0, 1]])
    K2 = scale_intrinsics(K, (64, 48), (32, 24))
    p = np.array([[0.1, -0.2, 2.0]])
    uv, _ = project_points(p, K, np.eye(4))
    uv2, _ = project_points(p, K2, np.eye(4))
    np.testing.assert_allclose(uv2, (uv + 0.5) * 0.5 - 0.5, atol=1e-9)


def test_voxelize_contains_points_and_is_unique():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, (2000, 3))
    coords, inverse = voxelize(pts, 0.1)
    assert len(np.unique(coords, axis=0)) == len(coords)
    lo = coords[inverse] * 0.1
    assert np.all(lo <= pts + 1e-12) and np.all(pts < lo + 0.1 + 1e-12)


def test_render_depth_keeps_nearest():
    K = np.array([[10.0, 0, 2.0], [0, 10.0, 2.0], [0, 0, 1]])
    pts = np.array([[0, 0, 2.0], [0, 0, 1.0], [0, 0, 3.0]])
    d = render_depth(pts, K, np.eye(4), (5, 5))
    assert d[2, 2] == pytest.approx(1.0) and np.count_nonzero(d) == 1


def test_correspondences_match_brute_force(frame):
    color, depth, T, K_color, K_depth = frame
    cfg = PairConfig(image_size=(36, 48), voxel_size=0.05, depth_tolerance=0.02, min_pairs=1)
    sample = build_frame_pair(color, depth, T, K_color, K_depth, cfg)
    K_img = scale_intrinsics(K_color, (96, 72), (48, 36))
    world_to_cam = np.linalg.inv(T)
    expected = set()
    for v, c in enumerate(sample["coord"]):
        centre = (c + 0.5) * cfg.voxel_size
        x, y, z = (world_to_cam @ np.append(centre, 1.0))[:3]
        if z <= 0:
            continue
        u, r = round(K_depth[0, 0] * x / z + K_depth[0, 2]), round(K_depth[1, 1] * y / z + K_depth[1, 2])
        if not (0 <= u < depth.shape[1] and 0 <= r < depth.shape[0]):
            continue
        if depth[r, u] <= 0 or abs(z - depth[r, u]) > cfg.depth_tolerance:
            continue
        ui, ri = round(K_img[0, 0] * x / z + K_img[0, 2]), round(K_img[1, 1] * y / z + K_img[1, 2])
        if 0 <= ui < 48 and 0 <= ri < 36:
            expected.add((v, ri, ui))
    got = set(map(tuple, sample["pairs"].tolist()))
    assert len(expected) > 20
    assert got == expected


def test_pair_sample_shapes_and_colours(frame):
    color, depth, T, K_color, K_depth = frame
    sample = build_frame_pair(color, depth, T, K_color, K_depth, PairConfig(image_size=(36, 48), voxel_size=0.05))
    assert sample["image"].shape == (36, 48, 3) and sample["image"].dtype == np.uint8
    assert sample["depth"].shape == (36, 48)
    assert sample["coord"].dtype == np.int32 and sample["color"].shape == (len(sample["coord"]), 3)
    assert 0 <= sample["color"].min() and sample["color"].max() <= 1
    # the depth target is the plane's depth seen through the colour camera
    valid = sample["depth"] > 0
    K_img = scale_intrinsics(K_color, (96, 72), (48, 36))
    exact = plane_depth(K_img, T, (48, 36))
    np.testing.assert_allclose(sample["depth"][valid], exact[valid], rtol=0.05)


def test_frame_without_depth_gives_no_pairs(frame):
    color, depth, T, K_color, K_depth = frame
    sample = build_frame_pair(color, np.zeros_like(depth), T, K_color, K_depth, PairConfig(image_size=(36, 48)))
    assert len(sample["pairs"]) == 0 and len(sample["coord"]) == 0


def test_depth_tolerance_rejects_occluded_voxels(frame):
    _, depth, T, _, K_depth = frame
    coord = np.array([[0, 10, 0]], dtype=np.int32)  # a voxel on the plane in view…
    centre = (coord + 0.5) * 0.05
    uv, z = project_points(centre, K_depth, T)
    r, c = int(np.floor(uv[0, 1] + 0.5)), int(np.floor(uv[0, 0] + 0.5))
    occluded = depth.copy()
    occluded[r, c] = z[0] - 0.5  # …behind something 0.5 m closer
    K_img = K_depth
    assert len(correspondences(coord, depth, T, K_depth, K_img, depth.shape, 0.05, 0.05)) == 1
    assert len(correspondences(coord, occluded, T, K_depth, K_img, depth.shape, 0.05, 0.05)) == 0
