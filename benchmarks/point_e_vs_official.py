"""Point-E base40M forward on the CPU: this project's model against the official openai/point-e code on the same
random weights and inputs, in one process, runs interleaved, medians reported.

    python benchmarks/point_e_vs_official.py --official-point-e /path/to/point-e [--batch-size 2] [--repeats 7]

``--official-point-e`` is a checkout of https://github.com/openai/point-e (it cannot ship with this project);
its ``point_e.models.transformer`` must import (it needs ``requests``, ``filelock``, ``tqdm`` and ``PIL``). The
official grid model loads CLIP in its constructor, so the official side is its ``PointDiffusionTransformer``
with a time token and 1024 + 256 context run through ``_forward_with_cond`` with the time token and the
``clip_embed`` (LayerNorm + Linear, as the official class builds it) of the same CLIP grid: the body of the
official ``CLIPImageGridPointDiffusionTransformer.forward`` without the CLIP call. The two outputs are compared
(max |difference|) before timing. Wall-clock and process CPU seconds per forward are printed: on a shared
machine the wall-clock ratio of interleaved runs is the figure to read.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from torch import nn

from lang3d.models.point_e.models import build_model
from lang3d.models.point_e.transformer import timestep_embedding
from lang3d.training.timing import record


def official_base40M(path: str, ours: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The official backbone and a clip_embed with ``ours``' weights (strict loads)."""
    sys.path.insert(0, path)
    from point_e.models.transformer import PointDiffusionTransformer  # noqa: PLC0415 (user-given checkout)

    official = PointDiffusionTransformer(device=torch.device("cpu"), dtype=torch.float32, input_channels=6,
                                         output_channels=12, n_ctx=1024 + 256, width=512, layers=12, heads=8,
                                         init_scale=0.25, time_token_cond=True)
    state = ours.state_dict()
    official.load_state_dict({k: v for k, v in state.items() if not k.startswith("clip_embed.")}, strict=True)
    clip_embed = nn.Sequential(nn.LayerNorm(1024), nn.Linear(1024, 512))
    clip_embed.load_state_dict({k[len("clip_embed."):]: v for k, v in state.items() if k.startswith("clip_embed.")},
                               strict=True)
    return official.eval(), clip_embed.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-point-e", required=True, help="checkout of openai/point-e")
    parser.add_argument("--batch-size", type=int, default=2, help="2 = one guided evaluation")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = build_model("base40M").eval()
    nn.init.normal_(ours.output_proj.weight, std=0.02)        # zero-initialised in Point-E: make outputs non-trivial
    official, clip_embed = official_base40M(args.official_point_e, ours)
    b = args.batch_size
    x, t, grid = torch.randn(b, 6, 1024), torch.randint(0, 1024, (b,)), torch.randn(b, 256, 1024)

    def run_ours() -> torch.Tensor:
        return ours(x, t, grid=grid)

    def run_official() -> torch.Tensor:
        t_embed = official.time_embed(timestep_embedding(t, official.backbone.width))
        return official._forward_with_cond(x, [(t_embed, True), (clip_embed(grid), True)])

    runs = {"lang3d": run_ours, "official": run_official}
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    with torch.no_grad():
        diff = (run_ours() - run_official()).abs().max().item()
        print(f"max |lang3d - official| = {diff:.2e} (batch {b}, 1281 tokens)")
        for _ in range(args.repeats):
            for name, fn in runs.items():
                before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                fn()
                after = resource.getrusage(resource.RUSAGE_SELF)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    for name in runs:
        print(f"{name:9s} forward, batch {b}: {statistics.median(wall[name]):.3f} s wall, "
              f"{statistics.median(cpu[name]):.3f} CPU-s (median of {args.repeats}, {torch.get_num_threads()} threads)")
    speedup = statistics.median(wall["official"]) / statistics.median(wall["lang3d"])
    ratios = [o / m for o, m in zip(wall["official"], wall["lang3d"])]
    print(f"speed-up over the official code: {speedup:.2f}x (ratio of medians); median of paired ratios "
          f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}")
    record("point_e_vs_official", f"base40M forward, batch {b} (lang3d)", statistics.median(wall["lang3d"]), "s")
    record("point_e_vs_official", f"base40M forward, batch {b} (official)", statistics.median(wall["official"]), "s")
    record("point_e_vs_official", "speed-up over the official forward", speedup, "x")


if __name__ == "__main__":
    main()
