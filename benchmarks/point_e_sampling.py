"""Point-E two-stage sampling time per sample: base40M (1024 points) then the upsampler (3072 more), each with
64 Karras Heun steps (127 guided evaluations on a batch of 2), in fp32 and under bf16 autocast.

    python benchmarks/point_e_sampling.py [--device cuda] [--batch-size 1] [--steps 64] [--precision fp32 bf16]

The Point-E paper reports ≈ 3.35 V100-seconds per sample for base40M and ≈ 12.6 s for the upsampler. Random
weights (speed does not depend on them; output_proj is re-initialised so the samples are not trivial), random
CLIP grids. fp32 runs with TF32 off. Runs on CUDA when available; on a CPU use ``--steps 2`` (the figure is then
per the steps run, extrapolated to 64 and labelled so). Prints figures only.
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace

import torch

from lang3d.models.point_e.models import build_model
from lang3d.models.point_e.sampler import PointCloudSampler
from lang3d.training.timing import record, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    models = [build_model("base40M"), build_model("upsample")]
    for model in models:
        torch.nn.init.normal_(model.output_proj.weight, std=0.02)
        model.to(device).eval()
    official = PointCloudSampler.point_e(*models)
    stages = [replace(stage, steps=args.steps) for stage in official.stages]
    grid = torch.randn(args.batch_size, 256, 1024, device=device)
    label = "measured" if args.steps == 64 else f"extrapolated from {args.steps} steps"
    for precision in args.precision:
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())

        def run(n_stages: int) -> None:
            """The first ``n_stages`` stages (1: base only, 2: base then upsampler) on one batch."""
            sampler = PointCloudSampler(models[:n_stages], official.diffusions[:n_stages], stages[:n_stages])
            with torch.no_grad(), autocast:
                sampler.sample(args.batch_size, {"grid": grid}, torch.Generator(device).manual_seed(0))

        run(1)                                                          # warm-up (kernels, allocator)
        base_s = timed(lambda: run(1), device)
        both_s = timed(lambda: run(2), device)
        scale = (2 * 64 - 1) / (2 * args.steps - 1) / args.batch_size  # per sample, per 64 steps
        base, upsampler = base_s * scale, (both_s - base_s) * scale
        print(f"Point-E sampling ({device.type}, {precision}, batch {args.batch_size}, {label}): "
              f"base40M {base:.2f} s/sample, upsampler {upsampler:.2f} s/sample, total {base + upsampler:.2f} s "
              f"(paper, V100: 3.35 s and 12.6 s)")
        record("point_e_sampling", f"base40M 64-step guided sample ({device.type}, {precision})", base, "s/sample")
        record("point_e_sampling", f"upsampler 64-step guided sample ({device.type}, {precision})", upsampler,
               "s/sample")


if __name__ == "__main__":
    main()
