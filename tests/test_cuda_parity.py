"""CUDA against CPU on the same inputs and weights: SR-UNet34 forward and backward (MinkowskiEngine's CUDA
kernels), synchronised BatchNorm's statistics through a one-process NCCL group, Point-E base40M in fp32 and
under bf16 autocast. GPU tests: skipped without a CUDA device (``make gpu-check`` runs them on one); FPS / kNN
parity lives in tests/test_point_ops.py.

Tolerances: fp32 sums in a different order differ by a few ulps per operation, so the deep networks are
compared by relative L2 error (‖a − b‖ / ‖b‖) with TF32 off; bf16 keeps 8 mantissa bits (unit round-off
2^-9 ≈ 2e-3), and twelve pre-LN blocks under autocast stay within a few 1e-3 of fp32 in relative L2, so 3e-2
is a wide margin that still catches any wrong kernel (which gives errors of order 1).
"""
import datetime
import socket

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FP32_REL = 1e-4      # fp32 CUDA vs fp32 CPU, relative L2
BF16_REL = 3e-2      # bf16 autocast vs fp32, relative L2


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64, on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(autouse=True)
def no_tf32():
    """Exact fp32 matmuls on the GPU for the fp32 comparisons (TF32 keeps 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _room_voxels(n_per_scene: int, seed: int) -> torch.Tensor:
    """Batched integer coordinates [N, 4] (batch, x, y, z) of two scenes, each a floor and two walls of unique
    voxels (surface-like, as scans are), ``n_per_scene`` voxels each."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(2):
        side = int((n_per_scene / 3) ** 0.5) + 2
        u, v = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        u, v, zero = u.flatten(), v.flatten(), torch.zeros(side * side, dtype=torch.long)
        planes = torch.cat([torch.stack([u, v, zero], 1), torch.stack([u, zero, v], 1), torch.stack([zero, u, v], 1)])
        planes = torch.unique(planes, dim=0)
        keep = planes[torch.randperm(len(planes), generator=g)[:n_per_scene]]
        rows.append(torch.cat([torch.full((len(keep), 1), b, dtype=torch.long), keep], 1))
    return torch.cat(rows).int()


def _coordinate_order(coords: torch.Tensor) -> torch.Tensor:
    """Permutation putting rows in (batch, x, y, z) order, so the rows of two devices' outputs line up."""
    coords = coords.long()
    low = coords.min(0).values
    span = int((coords - low).max()) + 1
    c = coords - low
    return torch.argsort(((c[:, 0] * span + c[:, 1]) * span + c[:, 2]) * span + c[:, 3])


def test_minkowski_engine_has_cuda():
    import MinkowskiEngine as ME

    assert ME.is_cuda_available(), "MinkowskiEngine was built without CUDA: rebuild it with a CUDA toolkit"


def test_srunet34_forward_and_backward_on_cuda_match_cpu():
    """Same weights, same 12k-voxel input, training mode (batch statistics): outputs in coordinate order, the
    input-feature gradient and every parameter gradient of a weighted-sum loss agree."""
    import MinkowskiEngine as ME

    from lang3d.models.backbones.res16unet import Res16UNet34C

    torch.manual_seed(0)
    nets = {"cpu": Res16UNet34C(3, 20)}
    nets["cuda"] = Res16UNet34C(3, 20)
    nets["cuda"].load_state_dict(nets["cpu"].state_dict())
    nets["cuda"].cuda()
    coords = _room_voxels(6000, seed=1)
    feats = torch.rand(len(coords), 3, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(len(coords), 20, generator=torch.Generator().manual_seed(3))  # in coordinate order
    outputs, input_grads, param_grads = {}, {}, {}
    for device, net in nets.items():
        x_feats = feats.to(device).requires_grad_(True)
        out = net(ME.SparseTensor(x_feats, coordinates=coords.to(device)))
        rows = out.F[_coordinate_order(out.C)]
        (rows * weights.to(device)).sum().backward()
        outputs[device], input_grads[device] = rows, x_feats.grad
        param_grads[device] = {n: p.grad for n, p in net.named_parameters()}
    assert outputs["cuda"].shape == (len(coords), 20)
    assert rel_l2(outputs["cuda"], outputs["cpu"]) < FP32_REL
    assert rel_l2(input_grads["cuda"], input_grads["cpu"]) < FP32_REL
    for name, grad in param_grads["cpu"].items():
        assert rel_l2(param_grads["cuda"][name], grad) < FP32_REL, name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_batchnorm_statistics_through_one_process_nccl_group():
    """The union statistics and their gradients, computed through an NCCL all_reduce on the GPU, equal torch's
    var_mean on the CPU; the layer's output in that group equals torch's BatchNorm on the CPU."""
    from lang3d.training.sync_batchnorm import SyncBatchNorm

    assert dist.is_nccl_available(), "this torch build has no NCCL"
    store = dist.TCPStore("127.0.0.1", _free_port(), 1, is_master=True, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        g = torch.Generator().manual_seed(4)
        x = 3.0 + 2.0 * torch.randn(4096, 64, generator=g, dtype=torch.float64)
        bn = SyncBatchNorm(64).double().cuda().train()
        x_gpu = x.cuda().requires_grad_(True)
        mean, var, n = bn._union_statistics(x_gpu, world=1, rank=0)
        (mean.sum() + 0.5 * var.sum()).backward()
        x_cpu = x.clone().requires_grad_(True)
        var_ref, mean_ref = torch.var_mean(x_cpu, dim=0, correction=0)
        (mean_ref.sum() + 0.5 * var_ref.sum()).backward()
        assert n == 4096
        torch.testing.assert_close(mean.cpu(), mean_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var.cpu(), var_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=1e-10, atol=1e-12)

        ref = torch.nn.BatchNorm1d(64).double().train()
        out = bn(x.cuda())
        torch.testing.assert_close(out.cpu(), ref(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(bn.running_mean.cpu(), ref.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var.cpu(), ref.running_var, rtol=1e-12, atol=1e-12)
    finally:
        dist.destroy_process_group()


def _base40M_with_live_output():
    """base40M with random weights and a non-zero ``output_proj`` (zero-initialised as in Point-E)."""
    from lang3d.models.point_e.models import build_model

    torch.manual_seed(5)
    model = build_model("base40M").eval()
    torch.nn.init.normal_(model.output_proj.weight, std=0.02)
    x = torch.randn(2, 6, 1024)
    t = torch.tensor([10, 700])
    grid = torch.randn(2, 256, 1024)
    return model, (x, t), grid


def test_point_e_forward_on_cuda_matches_cpu_in_fp32():
    model, (x, t), grid = _base40M_with_live_output()
    with torch.no_grad():
        ref = model(x, t, grid=grid)
        out = model.cuda()(x.cuda(), t.cuda(), grid=grid.cuda())
    assert rel_l2(out, ref) < FP32_REL


def test_point_e_bf16_autocast_stays_close_to_fp32():
    model, (x, t), grid = _base40M_with_live_output()
    model, x, t, grid = model.cuda(), x.cuda(), t.cuda(), grid.cuda()
    with torch.no_grad():
        fp32 = model(x, t, grid=grid)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x, t, grid=grid)
    assert bf16.dtype == torch.bfloat16          # autocast really ran the matmuls in bf16
    err = rel_l2(bf16.float(), fp32)
    assert 0 < err < BF16_REL, err
