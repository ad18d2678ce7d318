"""Point-Bind any-to-3D with tiny random Point-E text-vector / image-vector models and a tiny random CLIP of
matching width."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from plyfile import PlyData

from pointbind import PointBindAlignment
from pointbind.any_to_3d import AnyTo3D, EmbeddingWidthMismatch, PointCloudFileError, read_points, write_clouds

WIDTH = 16  # lang3d-tiny-ViT's embedding width
TINY_POINT_E = dict(width=32, layers=1, heads=2)
TINY_BERT = dict(num_groups=8, group_size=8, tokenizer_dim=16, tokenizer_hidden=(16, 16, 16), width=16, depth=1,
                 heads=2, pos_hidden=16, drop_path=0.0)
FAST = dict(steps=2)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter ~ N(0, 0.3^2) (norm weights around 1): Point-E zero-initialises output_proj, which would make
    every cloud the same whatever the condition."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g)
                    + (1.0 if ".ln" in f".{name}" and "weight" in name else 0.0))


@pytest.fixture(scope="module")
def any3d():
    model = AnyTo3D(base_options=dict(TINY_POINT_E, vector_width=WIDTH),
                    upsampler_options=dict(TINY_POINT_E, grid_tokens=4, grid_width=8), base_points=24,
                    upsample_points=12)
    randomise(model, 0)
    return model.eval()


@pytest.fixture(scope="module")
def point_bind():
    torch.manual_seed(0)
    return PointBindAlignment(encoder="pointbert", encoder_options=TINY_BERT, clip_model="lang3d-tiny-ViT",
                              clip_pretrained=None).eval()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_generation_is_unscaled_coloured_and_sized(any3d):
    clouds = any3d.generate(torch.randn(3, WIDTH), "text", generator=seeded(), **FAST)
    assert clouds.shape == (3, 6, 24 + 12)
    xyz, rgb = clouds[:, :3], clouds[:, 3:]
    # clip_denoised keeps model space in [-1, 1]: xyz (× 2 there) in [-0.5, 0.5], RGB back in 0..255
    assert xyz.abs().max() <= 0.5 + 1e-5
    assert rgb.min() >= 0 and rgb.max() <= 255 and rgb.max() - rgb.min() > 10


def test_condition_changes_the_cloud_and_the_seed_fixes_it(any3d):
    a, b = torch.randn(2, WIDTH, generator=seeded(1))
    first = any3d.generate(torch.stack([a, b]), "text", generator=seeded(), **FAST)
    again = any3d.generate(torch.stack([a, b]), "text", generator=seeded(), **FAST)
    torch.testing.assert_close(first, again)
    assert (first[0] - first[1]).abs().max() > 1e-3
    # the norm of an embedding does not matter: it is L2-normalised first
    torch.testing.assert_close(any3d.generate(torch.stack([7 * a, b]), "text", generator=seeded(), **FAST), first)


def test_vector_given_to_embed_vector_is_unit_norm_times_sqrt_width(any3d):
    seen = []
    handle = any3d.bases["text"].clip_embed.register_forward_hook(lambda module, inputs, out:
                                                                  seen.append(inputs[0].clone()))
    try:
        embeddings = 5 * torch.randn(2, WIDTH, generator=seeded(2))
        any3d.generate(embeddings, "text", generator=seeded(), steps=1)
    finally:
        handle.remove()
    assert seen, "the base model's clip_embed was never called"
    expected = embeddings / embeddings.norm(dim=-1, keepdim=True) * math.sqrt(WIDTH)
    for vector in seen:  # [cond; uncond] per call: the guidance doubles the batch
        torch.testing.assert_close(vector[:2], expected)
        assert torch.all(vector[2:] == 0)
    # and that is what the model's own embed_vector computes from the unit vector
    token = any3d.bases["text"].embed_vector(F.normalize(embeddings, dim=-1))
    torch.testing.assert_close(token[:, 0], any3d.bases["text"].clip_embed(expected))


def test_width_mismatch_names_both_widths(any3d):
    with pytest.raises(EmbeddingWidthMismatch, match=rf"{WIDTH + 4}-d.*{WIDTH}-d"):
        any3d.generate(torch.randn(2, WIDTH + 4), "text", **FAST)


def test_text_image_and_point_inputs_go_through_the_joint_space(any3d, point_bind):
    texts = ["a chair", "an airplane"]
    torch.testing.assert_close(any3d.from_text(point_bind, texts, generator=seeded(), **FAST),
                               any3d.generate(point_bind.embed_texts(texts), "text", generator=seeded(), **FAST))
    images = torch.randint(0, 256, (2, 40, 48, 3), dtype=torch.uint8, generator=seeded(3))
    torch.testing.assert_close(any3d.from_images(point_bind, images, generator=seeded(), **FAST),
                               any3d.generate(point_bind.embed_images(images), "image", generator=seeded(), **FAST))
    points = torch.rand(2, 64, 3, generator=seeded(4)) * 3 + 1        # off-centre: from_points normalises it
    centred = points - points.mean(1, keepdim=True)
    unit = centred / centred.norm(dim=-1).amax(1)[:, None, None]
    with torch.no_grad():
        reference = any3d.generate(point_bind(unit), "text", generator=seeded(), **FAST)
    torch.testing.assert_close(any3d.from_points(point_bind, points, generator=seeded(), **FAST), reference)


def test_write_clouds_round_trips(any3d, tmp_path):
    clouds = any3d.generate(torch.randn(2, WIDTH, generator=seeded(5)), "text", generator=seeded(), **FAST)
    files = write_clouds(clouds, tmp_path / "out", ["0000_chair", "0001_plane"], ["text: chair", "points: x.ply"])
    assert [[p.name for p in f] for f in files] == [["0000_chair.ply", "0000_chair.npz"],
                                                    ["0001_plane.ply", "0001_plane.npz"]]
    vertex = PlyData.read(str(files[1][0]))["vertex"]
    np.testing.assert_allclose(np.stack([vertex[c] for c in "xyz"], 1), clouds[1, :3].T.numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.stack([vertex[c] for c in ("red", "green", "blue")], 1),
                                  np.round(clouds[1, 3:].T.numpy()).astype(np.uint8))
    with np.load(files[0][1]) as data:
        assert str(data["prompt"]) == "text: chair" and data["coords"].shape == (36, 3)
    with pytest.raises(ValueError, match="one name and source each"):
        write_clouds(clouds, tmp_path, ["a"], ["b"])


def test_read_points_formats_and_errors(tmp_path):
    xyz = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", xyz)
    np.savez(tmp_path / "a.npz", coords=xyz)
    np.savetxt(tmp_path / "a.txt", np.hstack([xyz, xyz]), delimiter=",")
    write_clouds(np.vstack([xyz.T, np.zeros((3, 50))])[None], tmp_path, ["a"], ["x"], formats=("ply",))
    for name in ("a.npy", "a.npz", "a.txt", "a.ply"):
        np.testing.assert_allclose(read_points(tmp_path / name, 50).numpy(), xyz, atol=1e-5, err_msg=name)
    sub = read_points(tmp_path / "a.npy", 10).numpy()      # farthest-point subset of the file's points
    assert sub.shape == (10, 3) and len({tuple(p) for p in sub}) == 10
    assert all(np.isclose(xyz, p).all(1).any() for p in sub)
    with pytest.raises(PointCloudFileError, match=r"a\.npy holds 50 points, fewer than the 64"):
        read_points(tmp_path / "a.npy", 64)
    np.savez(tmp_path / "b.npz", other=xyz)
    with pytest.raises(PointCloudFileError, match=r"b\.npz holds neither"):
        read_points(tmp_path / "b.npz", 10)
    (tmp_path / "c.obj").write_text("v 0 0 0\n")
    with pytest.raises(PointCloudFileError, match=r"c\.obj: unknown format"):
        read_points(tmp_path / "c.obj", 1)
    with pytest.raises(PointCloudFileError, match=r"missing\.ply does not exist"):
        read_points(tmp_path / "missing.ply", 1)


def test_each_modality_goes_to_the_model_trained_on_it(any3d, point_bind):
    """Text embeddings condition base40M-textvec, image embeddings base40M-imagevec (CLIP image and text vectors
    lie in different regions of the space); point embeddings go to the model ``points_route`` names."""
    calls = []
    handles = [model.clip_embed.register_forward_hook(lambda m, i, o, route=route: calls.append(route))
               for route, model in any3d.bases.items()]
    images = torch.randint(0, 256, (1, 40, 48, 3), dtype=torch.uint8, generator=seeded(6))
    points = torch.rand(1, 64, 3, generator=seeded(7))
    try:
        for call, route in ((lambda: any3d.from_text(point_bind, ["a chair"], **FAST), "text"),
                            (lambda: any3d.from_images(point_bind, images, **FAST), "image"),
                            (lambda: any3d.from_points(point_bind, points, **FAST), "text")):
            calls.clear()
            call()
            assert calls and set(calls) == {route}
        any3d.points_route = "image"
        calls.clear()
        any3d.from_points(point_bind, points, **FAST)
        assert calls and set(calls) == {"image"}
    finally:
        any3d.points_route = "text"
        for handle in handles:
            handle.remove()
    assert any3d.bases["image"].conditioning == "image_vector" and any3d.bases["text"].conditioning == "text_vector"
    with pytest.raises(ValueError, match="points_route"):
        AnyTo3D(base_options=dict(TINY_POINT_E, vector_width=WIDTH), points_route="audio")
    with pytest.raises(ValueError, match="route must be"):
        any3d.generate(torch.randn(1, WIDTH), "audio", **FAST)


def test_command_line_asks_for_the_checkpoint_each_input_needs():
    from pointbind.any_to_3d import _parse
    with pytest.raises(SystemExit):
        _parse(["--pointbind-checkpoint", "x.ckpt", "--textvec-checkpoint", "t.pt", "--image", "a.png"])
    with pytest.raises(SystemExit):
        _parse(["--pointbind-checkpoint", "x.ckpt", "--textvec-checkpoint", "t.pt", "--points", "a.ply",
                "--points-route", "image"])
    args = _parse(["--pointbind-checkpoint", "x.ckpt", "--imagevec-checkpoint", "i.pt", "--image", "a.png",
                   "--points", "a.ply", "--points-route", "image"])
    assert args.points_route == "image" and args.textvec_checkpoint is None
