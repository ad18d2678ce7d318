"""PointContrast / CSC Res16UNet34C checkpoints (MinkowskiEngine 0.4 layout) into the project's SR-UNet34 (ME 0.5).

- Kernel layout: ME 0.5 convolutions against a dense reference computed by explicit loops over offsets; a kernel
  stored in ME 0.4's HYBRID offset order (the order ME 0.4.3's own ``convert_region_type`` returns, saved in
  tests/data/pointcontrast_official/me043_hybrid_offsets.json) gives the reference's output in ME 0.5 after
  ``convert_hybrid_kernel``; HYPERCUBE kernels (stem, strided, transposed) carry over unchanged.
- Names: the official Res16UNet34C (facebookresearch/PointContrast 47e86828, run on ME 0.5 by
  tests/data/pointcontrast_official/make_fixture.py) on random weights drawn in the published layout; the
  project's network loaded from a file of the published format must give the same outputs.
"""
import argparse
import importlib.util
import json
from functools import partial
from pathlib import Path

import MinkowskiEngine as ME
import numpy as np
import pytest
import torch

from lang3d.convert import ConversionError, read_checkpoint
from lang3d.convert.me_kernel_order import convert_hybrid_kernel, hybrid_offsets, hypercube_offsets
from lang3d.convert.pointcontrast import is_res16unet_file, load_res16unet_weights
from lang3d.models.backbones.res16unet import Res16UNet34C
from lang3d.training.checkpoint import CheckpointMismatchError, UnsafeCheckpointError, safe_load
from lang3d.training.cli import main as lang3d_main

DATA = Path(__file__).parent / "data" / "pointcontrast_official"
_spec = importlib.util.spec_from_file_location("pointcontrast_fixture", DATA / "make_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)
ME043 = json.loads((DATA / "me043_hybrid_offsets.json").read_text())


def dense_conv(in_coords, feats, out_coords, offsets, kernel):
    """Reference: out[o] = sum over k of in[o + offsets[k]] @ kernel[k] (points absent from the input add 0)."""
    rows = {tuple(c): i for i, c in enumerate(in_coords.tolist())}
    out = torch.zeros(len(out_coords), kernel.shape[-1], dtype=torch.float64)
    for m, (b, *xyz) in enumerate(out_coords.tolist()):
        for k, offset in enumerate(offsets):
            i = rows.get((b, *(p + d for p, d in zip(xyz, offset))))
            if i is not None:
                out[m] += feats[i].double() @ kernel[k].double()
    return out


def dense_conv_transpose(in_coords, feats, out_coords, offsets, kernel):
    """Reference: out[c + offsets[k]] += in[c] @ kernel[k] for every input (coarse) point c."""
    rows = {tuple(c): i for i, c in enumerate(out_coords.tolist())}
    out = torch.zeros(len(out_coords), kernel.shape[-1], dtype=torch.float64)
    for i, (b, *xyz) in enumerate(in_coords.tolist()):
        for k, offset in enumerate(offsets):
            m = rows.get((b, *(p + d for p, d in zip(xyz, offset))))
            if m is not None:
                out[m] += feats[i].double() @ kernel[k].double()
    return out


def _sparse(stride: int, seed: int, channels: int = 2):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(9 ** 3, generator=g)[:150]
    xyz = torch.stack([flat // 81, flat // 9 % 9, flat % 9], 1) * stride
    coords = torch.cat([torch.zeros(150, 1, dtype=torch.int64), xyz], 1).int()
    feats = torch.randn(150, channels, generator=g)
    manager = ME.CoordinateManager(D=3)
    return ME.SparseTensor(feats, coords, tensor_stride=stride, coordinate_manager=manager), coords, feats


def _scaled(offsets, stride):
    return [tuple(stride * d for d in o) for o in offsets]


def test_hybrid_order_is_the_one_minkowski_0_4_3_generates():
    assert [list(o) for o in hybrid_offsets(3)] == ME043["tensor_stride_1"]
    assert [list(o) for o in _scaled(hybrid_offsets(3), 4)] == ME043["tensor_stride_4"]
    assert hybrid_offsets(3) != hypercube_offsets(3)       # so the published block kernels must be re-ordered


@pytest.mark.parametrize("stride", [1, 2])
def test_minkowski_0_5_uses_the_hypercube_order_and_converted_hybrid_kernels_match(stride):
    x, coords, feats = _sparse(stride, seed=stride)
    conv = ME.MinkowskiConvolution(2, 3, kernel_size=3, bias=False, dimension=3)
    published = torch.randn(27, 2, 3, generator=torch.Generator().manual_seed(5))   # ME 0.4 HYBRID layout
    reference = dense_conv(coords, feats, coords, _scaled(ME043["tensor_stride_1"], stride), published)
    with torch.no_grad():
        conv.kernel.copy_(convert_hybrid_kernel(published, 3))
        out = conv(x)
        assert torch.equal(out.C, coords)
        torch.testing.assert_close(out.F.double(), reference, rtol=1e-5, atol=1e-5)
        conv.kernel.copy_(published)                        # unconverted: a different function
        assert (conv(x).F.double() - reference).abs().max() > 1e-2
        # ME 0.5's own order is the hypercube order of ME 0.4's region type 0 (first axis fastest)
        torch.testing.assert_close(conv(x).F.double(),
                                   dense_conv(coords, feats, coords, _scaled(hypercube_offsets(3), stride), published),
                                   rtol=1e-5, atol=1e-5)


def test_strided_and_transposed_kernels_carry_over_unchanged():
    """ME 0.4's k=2 s=2 (transposed) convolutions, region type 0: offsets {0,1}^3 × the fine stride from the coarse
    point, first axis fastest; ME 0.5 computes the same with the same kernel rows."""
    x, coords, feats = _sparse(1, seed=7)
    kernel = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(8))
    down = ME.MinkowskiConvolution(2, 3, kernel_size=2, stride=2, bias=False, dimension=3)
    up = ME.MinkowskiConvolutionTranspose(3, 2, kernel_size=2, stride=2, bias=False, dimension=3)
    up_kernel = torch.randn(8, 3, 2, generator=torch.Generator().manual_seed(9))
    offsets = hypercube_offsets(2)
    assert offsets[:3] == [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
    with torch.no_grad():
        down.kernel.copy_(kernel)
        up.kernel.copy_(up_kernel)
        coarse = down(x)
        torch.testing.assert_close(coarse.F.double(), dense_conv(coords, feats, coarse.C, offsets, kernel),
                                   rtol=1e-5, atol=1e-5)
        fine = up(coarse, coordinates=x.coordinate_map_key)
        torch.testing.assert_close(fine.F.double(), dense_conv_transpose(coarse.C, coarse.F, fine.C, offsets,
                                                                         up_kernel), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def published_file(tmp_path_factory):
    """Random weights in the published layout, saved as PointContrast's pre-training saves them."""
    keys = json.loads((DATA / "pointcontrast_keys.json").read_text())
    state = {k: torch.from_numpy(v) for k, v in fixture.random_state_dict(keys).items()}
    path = tmp_path_factory.mktemp("pointcontrast") / "nce.pth"
    torch.save({"curr_iter": 30000, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "scheduler": {"gamma": 0.99, "last_epoch": 30}}, path)
    return path, keys


def _official_outputs(net: Res16UNet34C) -> tuple[np.ndarray, np.ndarray]:
    golden = np.load(DATA / "official_outputs.npz")
    with torch.no_grad():
        out = net.eval()(ME.SparseTensor(torch.from_numpy(golden["feats"]), torch.from_numpy(golden["coords"])))
    ours = {tuple(c): f for c, f in zip(out.C.tolist(), out.F.numpy())}
    return np.stack([ours[tuple(c)] for c in golden["out_coords"].tolist()]), golden["out_feats"]


def test_published_file_reproduces_the_official_network(published_file):
    path, keys = published_file
    conversion = read_checkpoint(path, ["pointcontrast"])
    net = Res16UNet34C(3, 32)
    assert len(conversion.state) == len(keys) == len(net.state_dict()) and not conversion.dropped
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == \
        {k: list(v.shape) for k, v in conversion.state.items()}
    report = load_res16unet_weights(net, path)
    assert len(report.loaded) == len(keys) and not report.missing and not report.reinitialised
    ours, official = _official_outputs(net)
    np.testing.assert_allclose(ours, official, atol=1e-5, rtol=0)
    names_only = Res16UNet34C(3, 32)                      # the ME 0.5 kind: no re-ordering -> wrong outputs
    names_only.load_state_dict(read_checkpoint(path, ["pointcontrast-me05"]).state)
    assert np.abs(_official_outputs(names_only)[0] - official).max() > 1e-2


def test_converter_cli_output_loads_the_same(published_file, tmp_path, capsys):
    path, _ = published_file
    lang3d_main(["convert", "pointcontrast", str(path), str(tmp_path / "converted.ckpt")])
    assert "kept 374 tensors" in capsys.readouterr().out
    assert is_res16unet_file(tmp_path / "converted.ckpt") and is_res16unet_file(path)
    assert not is_res16unet_file(tmp_path / "missing.pth")        # left to the Text4Point loader to report
    net = Res16UNet34C(3, 13)                             # a task head of another width is re-initialised
    report = load_res16unet_weights(net, tmp_path / "converted.ckpt")
    assert report.reinitialised == ["head.kernel", "head.bias"]
    reference = Res16UNet34C(3, 32)
    load_res16unet_weights(reference, path)
    state = net.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reference.state_dict().items() if not k.startswith("head."))


@pytest.mark.parametrize("name", ["pretrain_with_config.pth", "pretrain_with_config_legacy.pth"])
def test_hydra_config_is_skipped_and_other_objects_are_refused(name, tmp_path):
    """tests/data/pointcontrast_official/pretrain_with_config*.pth: PointContrast's pre-training format with a real
    OmegaConf 2.0.6 DictConfig, SGD and ExponentialLR states (make_config_checkpoint.py), in PyTorch's zip format and
    in the pre-1.6 format PointContrast's PyTorch 1.5 wrote."""
    source = DATA / name
    with pytest.raises(UnsafeCheckpointError, match=rf"{name}.*omegaconf\.dictconfig\.DictConfig"):
        safe_load(source)
    conversion = read_checkpoint(source, ["pointcontrast"])
    assert list(conversion.state) == ["encoder.stem.conv.kernel"]
    torch.save({"state_dict": {"conv0p1s1.kernel": torch.zeros(27, 3, 32)}, "args": argparse.Namespace(lr=0.1)},
               tmp_path / "with_args.pth", _use_new_zipfile_serialization="legacy" not in name)
    with pytest.raises(UnsafeCheckpointError, match=r"with_args\.pth.*argparse\.Namespace"):
        read_checkpoint(tmp_path / "with_args.pth", ["pointcontrast"])


def test_a_file_of_another_network_is_an_error_naming_the_tensor(published_file, tmp_path):
    path, _ = published_file
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["block9.0.conv1.kernel"] = torch.zeros(27, 96, 96)
    torch.save(raw, tmp_path / "other.pth")
    with pytest.raises(ConversionError, match=r"other\.pth.*block9\.0\.conv1\.kernel"):
        read_checkpoint(tmp_path / "other.pth", ["pointcontrast"])
    raw["state_dict"].pop("block9.0.conv1.kernel")
    raw["state_dict"]["block1.0.conv1.kernel"] = torch.zeros(27, 32, 16)
    torch.save(raw, tmp_path / "narrow.pth")
    with pytest.raises(CheckpointMismatchError, match=r"block1\.0\.conv1\.kernel|stages\.0\.blocks\.0\.conv1\.kernel"):
        load_res16unet_weights(Res16UNet34C(3, 32), tmp_path / "narrow.pth")


def test_text4point_fine_tuning_starts_from_a_pointcontrast_tag(published_file, tmp_path, monkeypatch):
    """``model.pretrained: pointcontrast_nce`` (configs/text4point/ablations/pointcontrast.yaml): the published
    file from the checkpoint folder, converted at load time into the segmentation model's SR-UNet34."""
    from text4point import Text4PointSegmentation
    from text4point.guided_net import LanguageGuidedNet

    path, _ = published_file
    monkeypatch.setenv("LANG3D_CACHE", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "nce.pth").write_bytes(path.read_bytes())
    network = partial(LanguageGuidedNet, clip_model="lang3d-tiny-RN", clip_pretrained=None, use_tqm=False,
                      text_mode="fixed")
    model = Text4PointSegmentation(["wall", "floor", "chair"], network=network, pretrained="pointcontrast_nce")
    reference = Res16UNet34C(3, 32)
    load_res16unet_weights(reference, path)
    loaded = model.guided.net.backbone.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in reference.state_dict().items() if not k.startswith("head."))
    assert loaded["head.kernel"].shape == (96, 3)
