"""lang3d.training.sync_batchnorm: two gloo ranks with unequal slices of a batch against ONE plain torch BatchNorm over
the whole batch (outputs, input gradients, DDP-averaged parameter gradients, running statistics), the sparse layer in
a Res16UNet BasicBlock against the plain block on all scenes at once, conversion, and the single-process
fallbacks. float64 throughout, so the tolerances are tight."""

import lightning as L
import MinkowskiEngine as ME
import pytest
import torch
import torch.distributed as dist
from gloo_ranks import on_gloo_ranks
from torch import nn

from lang3d.geometry.sparse_index import lookup_rows
from lang3d.models.backbones.res16unet import BasicBlock
from lang3d.training.sync_batchnorm import (SparseSyncBatchNorm, SyncBatchNorm, convert_sync_batchnorm,
                                            sync_batchnorm_under_ddp)

WORLD = 2
TOL = dict(rtol=1e-10, atol=1e-10)
# name: (full input shape, rows of rank 0 (the rest go to rank 1), layer options)
DENSE = {
    "NC": ((9, 4), 2, dict(momentum=0.1)),
    "NCL": ((7, 3, 5), 4, dict(momentum=None)),                       # cumulative running average
    "NCHW": ((5, 3, 4, 2), 1, dict(momentum=0.3)),
    "NCL_no_affine_no_stats": ((6, 2, 3), 4, dict(affine=False, track_running_stats=False)),
}
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}
SCENES = (40, 25, 60)   # voxels per scene; rank 0 gets scene 0, rank 1 scenes 1 and 2
STEPS = 2


def _data(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = 3.0 + 2.0 * torch.randn(shape, generator=g, dtype=torch.float64)   # mean far from 0, as after a ReLU
    return x, torch.randn(shape, generator=g, dtype=torch.float64)         # input, loss weights


def _loss(out, weights):
    """Sum over rows, so the loss of the whole batch is the sum of the ranks' losses."""
    return (weights * out + 0.1 * weights * out ** 2).sum()


def _set_affine(bn, seed):
    if bn.weight is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            bn.weight.copy_(1 + 0.5 * torch.randn(bn.num_features, generator=g, dtype=torch.float64))
            bn.bias.copy_(0.5 * torch.randn(bn.num_features, generator=g, dtype=torch.float64))


def _stats(bn):
    return {k: None if getattr(bn, k) is None else getattr(bn, k).clone()
            for k in ("running_mean", "running_var", "num_batches_tracked")}


def _averaged_grads(module):
    """What DDP leaves in .grad: the mean over ranks."""
    out = {}
    for name, p in module.named_parameters():
        g = p.grad.clone()
        dist.all_reduce(g)
        out[name] = g / WORLD
    return out


def _rows(rank, n0, n):
    return slice(0, n0) if rank == 0 else slice(n0, n)


def _dense_rank(rank, shape, n0, options):
    bn = SyncBatchNorm(shape[1], **options).double()
    _set_affine(bn, 7)
    steps = []
    for step in range(STEPS):
        x, w = _data(shape, step)
        rows = _rows(rank, n0, shape[0])
        x = x[rows].clone().requires_grad_()
        bn.zero_grad()
        out = bn(x)
        _loss(out, w[rows]).backward()
        steps.append({"out": out.detach(), "grad": x.grad, "params": _averaged_grads(bn), **_stats(bn)})
    x, _ = _data(shape, 99)
    with torch.no_grad():
        evaluated = bn.eval()(x[_rows(rank, n0, shape[0])])
    return {"steps": steps, "eval": evaluated}


def _scene(i, step):
    """Voxels [V, 3] of scene i (fixed) and their features [V, 3] float64 at training step ``step``."""
    coords = torch.unique(torch.randint(0, 8, (SCENES[i], 3), generator=torch.Generator().manual_seed(100 + i)), dim=0)
    g = torch.Generator().manual_seed(1000 * step + i)
    return coords, 2.0 + torch.randn(len(coords), 3, generator=g, dtype=torch.float64)


def _batch(scene_ids, step):
    """Batched coordinates [ΣV, 4] of the scenes (batch index = position) and features requiring grad."""
    coords = ME.utils.batched_coordinates([_scene(i, step)[0] for i in scene_ids])
    feats = torch.cat([_scene(i, step)[1] for i in scene_ids]).requires_grad_()
    return coords, feats


def _block():
    torch.manual_seed(3)
    return BasicBlock(3, 8, bn_momentum=0.2).double()


def _sparse_loss(coords, feats):
    """Loss weights from the (global) coordinates only: a voxel has the same weight wherever it is batched."""
    c = coords.double()
    w = torch.sin(c[:, 1:] @ torch.tensor([0.3, 0.7, 1.1], dtype=torch.float64) + 0.5 * c[:, 0])
    return (w[:, None] * feats + 0.1 * feats ** 2).sum()


def _sparse_rank(rank):
    block = convert_sync_batchnorm(_block())
    scenes = [0] if rank == 0 else [1, 2]
    steps = []
    for step in range(STEPS):
        coords, feats = _batch(scenes, step)
        x = ME.SparseTensor(feats, coordinates=coords)
        block.zero_grad()
        out = block(x)
        global_c = out.C.clone()
        global_c[:, 0] += scenes[0]   # global scene index: rank 1's local batches 0 / 1 are scenes 1 / 2
        _sparse_loss(global_c, out.F).backward()
        stats = {name: _stats(m.bn) for name, m in block.named_modules() if isinstance(m, SparseSyncBatchNorm)}
        steps.append({"coords": out.C, "feats": out.F.detach(), "grad": feats.grad, "in_coords": coords,
                      "params": _averaged_grads(block), "stats": stats})
    return steps


def _offset_data():
    """float32 [64, 2] with mean 1000 and std ~1: E[x²] - E[x]² would lose all digits of the variance."""
    g = torch.Generator().manual_seed(5)
    return 1000.0 + torch.randn(64, 2, generator=g, dtype=torch.float64)


def _offset_rank(rank):
    bn = SyncBatchNorm(2, momentum=1.0)   # running statistics = this batch's
    bn(_offset_data()[_rows(rank, 20, 64)].float())
    return _stats(bn)


def _rank(rank):
    results = {name: _dense_rank(rank, *case[:2], case[2]) for name, case in DENSE.items()}
    results["offset"] = _offset_rank(rank)
    results["sparse"] = _sparse_rank(rank)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return on_gloo_ranks(_rank, tmp_path_factory.mktemp("syncbn"), WORLD)


def _reference_bn(shape, options):
    bn = TORCH_BN[len(shape)](shape[1], **options).double()
    _set_affine(bn, 7)
    return bn


@pytest.mark.parametrize("name", list(DENSE))
def test_dense_equals_one_batchnorm_over_the_union(ranks, name):
    shape, n0, options = DENSE[name]
    ref = _reference_bn(shape, options)
    for step in range(STEPS):
        x, w = _data(shape, step)
        x.requires_grad_()
        ref.zero_grad()
        out = ref(x)
        _loss(out, w).backward()   # = sum of the ranks' losses
        got = [r[name]["steps"][step] for r in ranks]
        torch.testing.assert_close(torch.cat([g["out"] for g in got]), out.detach(), **TOL)
        torch.testing.assert_close(torch.cat([g["grad"] for g in got]), x.grad, **TOL)
        for pname, p in ref.named_parameters():   # DDP averages over ranks: the mean of the ranks' losses
            for g in got:
                torch.testing.assert_close(g["params"][pname], p.grad / WORLD, **TOL)
        for key, value in _stats(ref).items():
            for g in got:
                if value is None:
                    assert g[key] is None
                else:
                    torch.testing.assert_close(g[key], value, **TOL)
    if ref.track_running_stats:
        assert int(ref.num_batches_tracked) == STEPS
    x, _ = _data(shape, 99)
    with torch.no_grad():   # eval mode: plain BatchNorm on each rank (batch statistics of the slice without
        ref.eval()          # running ones, as torch.nn.SyncBatchNorm)
        expected = ref(x) if ref.track_running_stats else torch.cat([ref(x[:n0]), ref(x[n0:])])
    torch.testing.assert_close(torch.cat([r[name]["eval"] for r in ranks]), expected, **TOL)


def test_float32_statistics_of_offset_data_are_accurate(ranks):
    x = _offset_data()
    for r in ranks:
        torch.testing.assert_close(r["offset"]["running_mean"].double(), x.mean(0), rtol=1e-7, atol=0)
        torch.testing.assert_close(r["offset"]["running_var"].double(), x.var(0), rtol=1e-4, atol=0)


def test_sparse_block_equals_the_plain_block_on_all_scenes(ranks):
    ref = _block()
    for step in range(STEPS):
        coords, feats = _batch(range(len(SCENES)), step)
        ref.zero_grad()
        out = ref(ME.SparseTensor(feats, coordinates=coords))
        _sparse_loss(out.C, out.F).backward()
        got = [r["sparse"][step] for r in ranks]
        offsets = [0, 1]   # global scene index of each rank's local batch 0
        for g, offset in zip(got, offsets):
            c = g["coords"].clone()
            c[:, 0] += offset
            rows = lookup_rows(out.C, c)
            assert (rows >= 0).all()
            torch.testing.assert_close(g["feats"], out.F.detach()[rows], **TOL)
            c_in = g["in_coords"].clone()
            c_in[:, 0] += offset
            torch.testing.assert_close(g["grad"], feats.grad[lookup_rows(coords, c_in)], **TOL)
        assert sum(len(g["feats"]) for g in got) == len(out.F)
        for pname, p in ref.named_parameters():
            for g in got:
                torch.testing.assert_close(g["params"][pname], p.grad / WORLD, **TOL)
        for mname, m in ref.named_modules():
            if isinstance(m, ME.MinkowskiBatchNorm):
                for g in got:
                    for key, value in _stats(m.bn).items():
                        torch.testing.assert_close(g["stats"][mname][key], value, **TOL)


def test_without_process_group_it_is_torch_batchnorm():
    for momentum in (0.1, None):
        sync, ref = SyncBatchNorm(3, momentum=momentum).double(), nn.BatchNorm2d(3, momentum=momentum).double()
        _set_affine(sync, 1)
        _set_affine(ref, 1)
        for step in range(3):
            x, _ = _data((4, 3, 2, 2), step)
            torch.testing.assert_close(sync(x), ref(x), **TOL)
        for key, value in _stats(ref).items():
            torch.testing.assert_close(_stats(sync)[key], value, **TOL)
        x, _ = _data((4, 3, 2, 2), 9)
        torch.testing.assert_close(sync.eval()(x), ref.eval()(x), **TOL)
    with pytest.raises(ValueError, match=r"SyncBatchNorm\(3\) expects input \[N, 3, \*\].*got \[4, 2\]"):
        SyncBatchNorm(3)(torch.zeros(4, 2))


@pytest.mark.parametrize("options", [{}, dict(affine=False), dict(track_running_stats=False),
                                     dict(eps=1e-3, momentum=None)])
def test_parameters_buffers_state_dict_and_repr_are_torch_batchnorms(options):
    sync, ref = SyncBatchNorm(5, **options), nn.BatchNorm1d(5, **options)
    assert repr(sync) == repr(ref).replace("BatchNorm1d", "SyncBatchNorm")
    for kind in ("named_parameters", "named_buffers"):
        ours, theirs = dict(getattr(sync, kind)()), dict(getattr(ref, kind)())
        assert ours.keys() == theirs.keys()
        for name, value in theirs.items():
            assert ours[name].dtype == value.dtype and torch.equal(ours[name], value), name
    assert [sync.weight, sync.bias] == [None, None] if not sync.affine else sync.weight.requires_grad
    with torch.no_grad():                      # state dicts load both ways
        for tensor in ref.state_dict().values():
            tensor.add_(torch.arange(tensor.numel()).reshape(tensor.shape).to(tensor.dtype) + 2)
    sync.load_state_dict(ref.state_dict())
    assert list(sync.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(sync.state_dict()[key], value), key
    SyncBatchNorm(5, **options).reset_parameters()
    sync.reset_parameters()
    for key, value in nn.BatchNorm1d(5, **options).state_dict().items():
        assert torch.equal(sync.state_dict()[key], value), key
    ref.load_state_dict(sync.state_dict())


def test_a_state_dict_from_before_num_batches_tracked_loads_as_into_torch():
    """torch loads a state dict of a version below 2 (or without metadata) that lacks num_batches_tracked, keeping
    the layer's count; at version 2 the key is missing (strict). SyncBatchNorm does the same."""
    for version, loads in ((None, True), (1, True), (2, False)):
        for layer in (SyncBatchNorm(3), nn.BatchNorm1d(3)):
            layer.num_batches_tracked.fill_(7)
            state = nn.BatchNorm1d(3).state_dict()
            del state["num_batches_tracked"]
            state._metadata[""] = {} if version is None else {"version": version}
            if loads:
                layer.load_state_dict(state)
                assert int(layer.num_batches_tracked) == 7
            else:
                with pytest.raises(RuntimeError, match="Missing key.*num_batches_tracked"):
                    layer.load_state_dict(state)


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.sparse = nn.Sequential(ME.MinkowskiLinear(3, 4), ME.MinkowskiBatchNorm(4, momentum=0.05))
        self.me_sync = ME.MinkowskiSyncBatchNorm(4)
        self.dense = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5), nn.BatchNorm1d(5, affine=False))
        self.torch_sync = nn.SyncBatchNorm(6)
        self.frozen = nn.BatchNorm3d(2).requires_grad_(False)


def test_conversion_shares_parameters_and_buffers():
    model = _Mixed()
    model.dense.eval()
    before = {name: m for name, m in model.named_modules()}
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    keys = list(model.state_dict())
    converted = convert_sync_batchnorm(model)
    assert converted is model
    assert isinstance(model.sparse[1], SparseSyncBatchNorm) and isinstance(model.me_sync, SparseSyncBatchNorm)
    assert isinstance(model.sparse[1].bn, SyncBatchNorm) and model.sparse[1].bn.momentum == 0.05
    for name in ("dense.1", "dense.2", "torch_sync", "frozen"):
        assert type(model.get_submodule(name)) is SyncBatchNorm, name
    assert model.dense[2].weight is None and not model.dense[1].training and model.sparse[1].training
    assert isinstance(model.sparse[0], ME.MinkowskiLinear) and model.dense[0] is before["dense.0"]
    assert list(model.state_dict()) == keys
    for name, p in model.named_parameters():
        assert p is params[name], name
    assert dict(model.named_parameters()).keys() == params.keys()
    for name, b in model.named_buffers():
        assert b is buffers[name], name
    assert not any(p.requires_grad for p in model.frozen.parameters())
    layers = [m for m in model.modules() if isinstance(m, (SyncBatchNorm, SparseSyncBatchNorm))]
    convert_sync_batchnorm(model)   # idempotent
    assert layers == [m for m in model.modules() if isinstance(m, (SyncBatchNorm, SparseSyncBatchNorm))]
    # Lightning's own conversion (Trainer(sync_batchnorm=True)) leaves these layers alone
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert layers == [m for m in model.modules() if isinstance(m, (SyncBatchNorm, SparseSyncBatchNorm))]


def test_converted_sparse_layer_keeps_the_coordinates():
    coords, feats = _batch([0, 1], 0)
    x = ME.SparseTensor(feats.detach(), coordinates=coords)
    plain = ME.MinkowskiBatchNorm(3).double()
    expected = plain(x)
    out = convert_sync_batchnorm(plain)(x)
    assert out.coordinate_map_key == x.coordinate_map_key and out.coordinate_manager is x.coordinate_manager
    torch.testing.assert_close(out.F, expected.F, **TOL)


def test_sync_batchnorm_under_ddp_converts_with_several_processes_only():
    one = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    model = nn.Sequential(nn.BatchNorm1d(2))
    assert type(sync_batchnorm_under_ddp(model, one)[0]) is nn.BatchNorm1d
    two = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    assert two.world_size == 2
    assert type(sync_batchnorm_under_ddp(model, two)[0]) is SyncBatchNorm
