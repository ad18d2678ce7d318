"""Camera geometry, pixel-voxel correspondences and pixel-to-feature-cell assignment against brute-force
per-element computations."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from datamodules.scannet.pairs import PairConfig, build_frame_pair, correspondences
from lang3d.geometry.camera import backproject_depth, project_points, render_depth, scale_intrinsics, voxelize
from lang3d.models.clip import CLIPDenseImageEncoder, load_clip
from text4point.image_branch import ImageDecoder, upsample_to_pixels
from text4point.pretrain import _cells


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


def pair_of(color, depth, T, K_color, K_depth, cfg):
    """``build_frame_pair`` of a full-size colour frame, resized to cfg.image_size by Pillow (bilinear)."""
    H, W = cfg.image_size
    image = np.asarray(Image.fromarray(color).resize((W, H), Image.BILINEAR))
    return build_frame_pair(image, (color.shape[1], color.shape[0]), depth, T, K_color, K_depth, cfg)


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
    d = render_depth(*project_points(pts, K, np.eye(4)), (5, 5))
    assert d[2, 2] == pytest.approx(1.0) and np.count_nonzero(d) == 1


def test_correspondences_match_brute_force(frame):
    color, depth, T, K_color, K_depth = frame
    cfg = PairConfig(image_size=(36, 48), voxel_size=0.05, depth_tolerance=0.02, min_pairs=1)
    sample = pair_of(color, depth, T, K_color, K_depth, cfg)
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
    sample = pair_of(color, depth, T, K_color, K_depth, PairConfig(image_size=(36, 48), voxel_size=0.05))
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
    sample = pair_of(color, np.zeros_like(depth), T, K_color, K_depth, PairConfig(image_size=(36, 48)))
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


# ---------------------------------------------------------------- pixel -> feature cell (CLIP map h2D, decoder z2D)
def averaging_copy(module: nn.Module) -> nn.Module:
    """A float64 copy in which every convolution averages its inputs (weights 1/fan-in, no bias) and every
    BatchNorm is the identity: on a positive image each output is a positive linear function of the input whose
    gradient is the output's receptive field, weighted symmetrically about the output's receptive centre."""
    module = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm2d):   # torch >= 2.11 refuses eps = 0: take the layer out
                    setattr(parent, name, nn.Identity())
                elif isinstance(child, nn.Conv2d):
                    child.weight.fill_(1.0 / child.weight[0].numel())
                    if child.bias is not None:
                        child.bias.zero_()
    return module


def receptive_centre(net, axis: int, index: int, length: int = 384) -> float:
    """Centre of mass (pixels, edges at integers) along ``axis`` (2: rows, 3: columns) of the input gradient of
    feature-map row / column ``index`` of ``net`` on a positive image ``length`` pixels long on that axis (64 on
    the other); asserts that the receptive field is not cut by the image border (else the centre is biased)."""
    shape = [1, 3, 64, 64]
    shape[axis] = length
    image = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(image).select(axis, index).sum(), image)
    profile = grad.sum(dim=[d for d in range(4) if d != axis])
    support = torch.nonzero(profile > 0)[:, 0]
    assert (profile >= 0).all() and 0 < support.min() and support.max() < len(profile) - 1
    return float((profile * (torch.arange(len(profile)) + 0.5)).sum() / profile.sum())


def brute_force_cell(pixel: int, centres: list[float], stride: int):
    """Index of the cell whose receptive centre is nearest to the centre of ``pixel`` (of two equidistant, the
    first), or None when every centre is more than half a stride away."""
    distance, cell = min((round(abs(pixel + 0.5 - c), 6), i) for i, c in enumerate(centres))
    return cell if distance <= stride / 2 else None


@pytest.fixture(scope="module")
def cell_lattices():
    """Per level ("clip": the CLIP trunk's cells, "decoder": the pre-training 2D decoder's cells): the network
    image -> cells (averaging copies of the tiny ResNet CLIP, which has RN50's stem, strides and floors, and of
    ``ImageDecoder``), the stride the code uses, and the receptive centre of cell 0 measured by autograd: the
    centres of 8 cells in the middle of a 384-pixel axis, where no receptive field is cut by the border, must lie
    on one lattice of that stride, along rows and along columns."""
    encoder = CLIPDenseImageEncoder(load_clip("lang3d-tiny-RN", None)[0])
    channels = encoder.trunk(torch.zeros(1, 3, 32, 32)).shape[1]
    decoder = ImageDecoder(channels, 4, width=8)
    strides = {"clip": encoder.output_stride, "decoder": encoder.output_stride // decoder.upsampling}
    encoder, decoder = averaging_copy(encoder), averaging_copy(decoder)
    nets = {"clip": encoder.trunk, "decoder": lambda images: decoder(encoder.trunk(images))[0]}
    lattices = {}
    for level, net in nets.items():
        stride = strides[level]
        size = net(torch.ones(1, 3, 384, 64, dtype=torch.float64)).shape[2]
        middle = range(size // 2 - 4, size // 2 + 4)
        origin = receptive_centre(net, 2, middle[0]) - stride * middle[0]
        for axis in (2, 3):
            for i in middle:
                assert receptive_centre(net, axis, i) == pytest.approx(origin + stride * i, abs=1e-9)
        lattices[level] = (net, stride, origin)
    return lattices


@pytest.mark.parametrize("level", ["clip", "decoder"])
def test_pixels_go_to_the_cell_whose_receptive_centre_is_nearest(cell_lattices, level):
    """At the 240×320 images of pre-training, every pixel-voxel pair lands in the cell whose receptive centre is
    nearest to its pixel, and pairs whose pixel no cell covers (rows 224-239: the trunk's floors drop them) are
    left out."""
    net, stride, origin = cell_lattices[level]
    H, W = 240, 320
    h, w = net(torch.ones(1, 3, H, W, dtype=torch.float64)).shape[2:]
    assert (h, w) == {"clip": (7, 10), "decoder": (56, 80)}[level]
    row_cell = [brute_force_cell(r, [origin + stride * i for i in range(h)], stride) for r in range(H)]
    col_cell = [brute_force_cell(c, [origin + stride * j for j in range(w)], stride) for c in range(W)]
    assert sum(cell is None for cell in row_cell) == 16 and None not in col_cell

    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    pixel = torch.arange(H * W)
    got = _cells(torch.zeros_like(pixel), pixel, rows, cols, stride, (h, w))
    expected = [(p, row_cell[r], col_cell[c]) for p, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))
                if row_cell[r] is not None and col_cell[c] is not None]
    assert [tuple(x) for x in got[:, 1:].tolist()] == expected
    assert (got[:, 0] == 0).all()


def test_depth_upsampling_puts_each_cell_at_its_pixels(cell_lattices):
    """The depth loss's upsampling of the decoder's map (56×80 at 240×320 images): a map holding each cell's
    receptive centre (row, column) reads, at every pixel of the covered 224×320, within half a pixel of the
    pixel's own centre (away from the outermost half cells, where it clamps)."""
    _, stride, origin = cell_lattices["decoder"]
    h, w = 56, 80
    centres_r = origin + stride * torch.arange(h, dtype=torch.float64)
    centres_c = origin + stride * torch.arange(w, dtype=torch.float64)
    ramps = torch.stack([centres_r[:, None].expand(h, w), centres_c[None, :].expand(h, w)])
    up = upsample_to_pixels(ramps[None], stride)[0]
    assert up.shape == (2, 224, 320)
    half = stride // 2
    inner_r, inner_c = slice(half, 224 - half), slice(half, 320 - half)
    pixel_r = torch.arange(224, dtype=torch.float64)[inner_r, None] + 0.5
    pixel_c = torch.arange(320, dtype=torch.float64)[None, inner_c] + 0.5
    assert (up[0][inner_r, inner_c] - pixel_r).abs().max() <= 0.5 + 1e-9
    assert (up[1][inner_r, inner_c] - pixel_c).abs().max() <= 0.5 + 1e-9
