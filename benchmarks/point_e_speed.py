"""Point-E base40M speed on this machine: one forward on 1281 tokens, and full 64-step Karras sampling with
classifier-free guidance (127 model evaluations on a batch of 2 per sample), with the achieved GFLOP/s next to
the machine's measured fp32 matmul GFLOP/s.

    python benchmarks/point_e_speed.py [--steps 2] [--threads N]

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention; elementwise ops
are not counted). By default only ``--steps`` Heun steps are run (2 steps = 3 evaluations) and the 64-step time
is extrapolated per evaluation (printed as such); ``--steps 64`` measures it. Random weights (speed does not
depend on them). Prints figures only.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from lang3d.models.point_e.diffusion import GaussianDiffusion
from lang3d.models.point_e.models import build_model
from lang3d.models.point_e.sampler import BASE_STAGE, PointCloudSampler
from lang3d.training.timing import record, timed


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GFLOP/s of an n×n matmul (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="Heun steps actually run (64 = full sampling)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("base40M").eval()
    params = sum(p.numel() for p in model.parameters())
    x, t, grid = torch.randn(1, 6, 1024), torch.tensor([500]), torch.randn(1, 256, 1024)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(x, t, grid=grid)
        flops = counter.get_total_flops()
        model(x, t, grid=grid)                                      # warm-up
        forward_s = min(timed(lambda: model(x, t, grid=grid)) for _ in range(3))
        peak = matmul_gflops()
        print(f"threads: {torch.get_num_threads()}  base40M parameters: {params / 1e6:.1f} M")
        print(f"measured fp32 matmul (2048²): {peak:.1f} GFLOP/s")
        record("point_e_speed", "fp32 matmul (2048²)", peak, "GFLOP/s")
        print(f"forward, batch 1, 1281 tokens: {flops / 1e9:.1f} GFLOP counted (paper: ≈137), {forward_s:.3f} s, "
              f"{flops / forward_s / 1e9:.1f} GFLOP/s ({100 * flops / forward_s / 1e9 / peak:.0f}% of matmul)")
        record("point_e_speed", "base40M forward, batch 1", forward_s, "s")
        record("point_e_speed", "base40M forward throughput", flops / forward_s / 1e9, "GFLOP/s")

        stage = replace(BASE_STAGE, steps=args.steps)
        sampler = PointCloudSampler([model], [GaussianDiffusion.from_schedule("cosine")], [stage])
        evaluations = 2 * args.steps - 1                            # Heun: 2 per step, 1 on the last
        sample_s = timed(lambda: sampler.sample(1, {"grid": grid}, torch.Generator().manual_seed(0)))
    per_eval = sample_s / evaluations
    label = "measured" if args.steps == 64 else f"EXTRAPOLATED from {args.steps} steps ({evaluations} evaluations)"
    full_s = per_eval * 127
    print(f"guided evaluation (batch 2): {per_eval:.3f} s, {2 * flops / per_eval / 1e9:.1f} GFLOP/s")
    print(f"full 64-step sample (127 evaluations × batch 2, {127 * 2 * flops / 1e12:.2f} TFLOP): "
          f"{full_s:.1f} s per sample [{label}]")
    record("point_e_speed", f"base40M 64-step guided sample ({'measured' if args.steps == 64 else 'extrapolated'})",
           full_s, "s/sample")


if __name__ == "__main__":
    main()
