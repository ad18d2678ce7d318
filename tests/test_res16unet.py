"""Res16UNet34C: parameter count, stride plan, gradients, SyncBN conversion, feature replacement."""

import MinkowskiEngine as ME
import pytest
import torch

from lang3d.models.backbones.res16unet import Res16UNet34C, SparseInputError, sparse_features_like
from lang3d.training.sync_batchnorm import SparseSyncBatchNorm, SyncBatchNorm, convert_sync_batchnorm

IN_CH, OUT_CH = 3, 20


def _basic_block(c_in, planes):
    """Hand list of one BasicBlock: (kernel volume, c_in, c_out) convs and BN channel counts."""
    convs = [(27, c_in, planes), (27, planes, planes)]
    bns = [planes, planes]
    if c_in != planes:
        convs.append((1, c_in, planes))
        bns.append(planes)
    return convs, bns


def _hand_layer_list(in_ch=IN_CH, out_ch=OUT_CH, stem_volume=27):
    """Every conv of the published plan, written out stage by stage, independent of the model code."""
    convs, bns = [(stem_volume, in_ch, 32)], [32]
    stages = [
        # (down/up conv, its BN, [(block c_in, planes), ...])
        ((8, 32, 32), 32, [(32, 32), (32, 32)]),
        ((8, 32, 32), 32, [(32, 64), (64, 64), (64, 64)]),
        ((8, 64, 64), 64, [(64, 128), (128, 128), (128, 128), (128, 128)]),
        ((8, 128, 128), 128, [(128, 256)] + [(256, 256)] * 5),
        ((8, 256, 256), 256, [(256 + 128, 256), (256, 256)]),  # decoder, transposed convs
        ((8, 256, 128), 128, [(128 + 64, 128), (128, 128)]),
        ((8, 128, 96), 96, [(96 + 32, 96), (96, 96)]),
        ((8, 96, 96), 96, [(96 + 32, 96), (96, 96)]),
    ]
    for conv, bn, blocks in stages:
        convs.append(conv)
        bns.append(bn)
        for c_in, planes in blocks:
            c, b = _basic_block(c_in, planes)
            convs += c
            bns += b
    convs.append((1, 96, out_ch))
    return convs, bns


def _model_conv_shapes(model):
    return [
        tuple(m.kernel.shape) if m.kernel.dim() == 3 else (1, *m.kernel.shape)
        for m in model.modules()
        if isinstance(m, (ME.MinkowskiConvolution, ME.MinkowskiConvolutionTranspose))
    ]


def _input(n_per_batch=150, seed=0, extent=24):
    """Batch of 2 random unique voxel sets, features [N, 3]."""
    g = torch.Generator().manual_seed(seed)
    coords = []
    for _ in range(2):
        c = torch.unique(torch.randint(0, extent, (n_per_batch, 3), generator=g), dim=0)
        coords.append(c)
    coords = ME.utils.batched_coordinates(coords)
    feats = torch.randn(coords.shape[0], IN_CH, generator=g)
    return ME.SparseTensor(feats, coordinates=coords)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Res16UNet34C(IN_CH, OUT_CH)


def test_parameter_count_matches_paper_and_hand_list(model):
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - 37.85e6) / 37.85e6 < 0.01, total
    convs, bns = _hand_layer_list()
    hand = sum(k * ci * co for k, ci, co in convs) + sum(2 * c for c in bns) + OUT_CH  # + head bias
    assert total == hand
    assert sorted(_model_conv_shapes(model)) == sorted(convs)
    n_bn = sum(isinstance(m, ME.MinkowskiBatchNorm) for m in model.modules())
    assert n_bn == len(bns)
    assert all(k.split(".")[0] in ("encoder", "decoder", "head") for k in model.state_dict())


def test_stem_kernel_size():
    m = Res16UNet34C(IN_CH, OUT_CH, stem_kernel_size=5)
    assert tuple(m.encoder.stem.conv.kernel.shape) == (125, IN_CH, 32)


def test_stride_plan_and_output_rows(model):
    x = _input()
    model.eval()
    with torch.no_grad():
        h, skips = model.encode(x)
        assert list(h.tensor_stride) == [16, 16, 16] and h.F.shape[1] == 256 == model.encoder_channels
        assert [list(s.tensor_stride) for s in skips] == [[1] * 3, [2] * 3, [4] * 3, [8] * 3]
        assert [s.F.shape[1] for s in skips] == [32, 32, 64, 128]
        # h lives on the stride-16 coordinates of the input: floor(c / 16) * 16 per batch.
        expect = torch.unique(torch.cat([x.C[:, :1], x.C[:, 1:] // 16 * 16], 1), dim=0)
        assert torch.equal(torch.unique(h.C, dim=0), expect)
        out = model.decode(h, skips)
    assert list(out.tensor_stride) == [1, 1, 1] and out.F.shape == (x.F.shape[0], OUT_CH)
    assert torch.equal(out.C, x.C)
    assert out.coordinate_map_key == x.coordinate_map_key


def test_width_scales_every_layer_and_keeps_the_plan():
    """width 0.25: stem 8, encoder 8/16/32/64, decoder 64/32/24/24; same strides and output rows as width 1."""
    narrow = Res16UNet34C(IN_CH, OUT_CH, width=0.25)
    assert (narrow.encoder_channels, narrow.decoder_channels) == (64, 24)
    assert tuple(narrow.encoder.stem.conv.kernel.shape) == (27, IN_CH, 8)
    assert [stage.blocks[-1].conv2.kernel.shape[-1] for stage in narrow.encoder.stages] == [8, 16, 32, 64]
    assert [stage.blocks[-1].conv2.kernel.shape[-1] for stage in narrow.decoder.stages] == [64, 32, 24, 24]
    total = sum(p.numel() for p in narrow.parameters())
    assert 37.85e6 / 20 < total < 37.85e6 / 12   # ~ width² of the published network's parameters
    x = _input()
    narrow.eval()
    with torch.no_grad():
        h, skips = narrow.encode(x)
        out = narrow.decode(h, skips)
    assert list(h.tensor_stride) == [16, 16, 16] and h.F.shape[1] == 64
    assert [s.F.shape[1] for s in skips] == [8, 8, 16, 32]
    assert out.F.shape == (x.F.shape[0], OUT_CH) and torch.equal(out.C, x.C)
    with pytest.raises(ValueError, match="width"):
        Res16UNet34C(IN_CH, OUT_CH, width=0.0)


def test_forward_backward_finite_gradients(model):
    model.train()
    model.zero_grad()
    out = model(_input(seed=1))
    (out.F ** 2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.head.kernel.grad.abs().sum() > 0
    assert model.encoder.stem.conv.kernel.grad.abs().sum() > 0


def test_bn_momentum_torch_semantics():
    m = Res16UNet34C(IN_CH, OUT_CH, bn_momentum=0.05)
    seen = {}

    def keep_input(module, inp, out):
        seen["x"] = inp[0].F.detach().clone()

    m.encoder.stem.norm.register_forward_hook(keep_input)
    with torch.no_grad():
        m.train()(_input(n_per_batch=60, seed=2))
    bn = m.encoder.stem.norm.bn
    assert bn.momentum == 0.05
    torch.testing.assert_close(bn.running_mean, 0.05 * seen["x"].mean(0))  # (1 - m) * 0 + m * batch


def test_decoder_accepts_replaced_encoder_features(model):
    x = _input(seed=3)
    model.eval()
    with torch.no_grad():
        h, skips = model.encode(x)
        same = model.decode(sparse_features_like(h, h.F.clone()), skips)
        ref = model.decode(h, skips)
        torch.testing.assert_close(same.F, ref.F)
        other = model.decode(sparse_features_like(h, torch.zeros_like(h.F)), skips)
    assert not torch.allclose(other.F, ref.F)


def test_sparse_features_like_keeps_coordinates():
    x = _input(n_per_batch=40, seed=4)
    f = torch.randn(x.F.shape[0], 7)
    y = sparse_features_like(x, f)
    assert torch.equal(y.C, x.C) and torch.equal(y.F, f)
    assert y.coordinate_map_key == x.coordinate_map_key and y.coordinate_manager is x.coordinate_manager
    with pytest.raises(SparseInputError, match=r"features must be \["):
        sparse_features_like(x, torch.randn(x.F.shape[0] + 1, 7))


def test_convert_sync_batchnorm_keeps_weights(model):
    original = Res16UNet34C(IN_CH, OUT_CH)  # ME modules lose their __slots__ under copy.deepcopy
    original.load_state_dict(model.state_dict())
    original.eval()
    with torch.no_grad():
        for m in original.modules():  # non-trivial statistics so the copy is checked
            if isinstance(m, ME.MinkowskiBatchNorm):
                m.bn.running_mean.uniform_(-0.1, 0.1)
                m.bn.running_var.uniform_(0.5, 1.5)
    n_bn = sum(isinstance(m, ME.MinkowskiBatchNorm) for m in original.modules())
    state = {k: v.clone() for k, v in original.state_dict().items()}
    converted = Res16UNet34C(IN_CH, OUT_CH)
    converted.load_state_dict(state)
    converted = convert_sync_batchnorm(converted)
    sync = [m for m in converted.modules() if isinstance(m, ME.MinkowskiBatchNorm)]
    assert len(sync) == n_bn
    assert all(isinstance(m, SparseSyncBatchNorm) for m in sync)
    assert all(isinstance(m.bn, SyncBatchNorm) for m in sync)
    assert all(m.bn.momentum == 0.05 for m in sync)
    new_state = converted.state_dict()
    assert new_state.keys() == state.keys()
    assert all(torch.equal(new_state[k], v) for k, v in state.items())
    x = _input(n_per_batch=60, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x).F, original(x).F)


def test_bad_input_is_rejected(model):
    x = _input(n_per_batch=20, seed=6)
    with pytest.raises(SparseInputError, match=r"features \[N, 3\]"):
        model.encode(ME.SparseTensor(torch.randn(x.F.shape[0], 4), coordinates=x.C))
    with pytest.raises(SparseInputError, match="ME.SparseTensor"):
        model.encode(x.F)
