"""SR-UNet34 (Res16UNet34C, MinkowskiEngine) speed on one ScanNet-sized room: inference forward and a training
forward + backward, at 2 cm and 2.5 cm voxels.

    python benchmarks/srunet_speed.py [--device cuda] [--voxel-sizes 0.02 0.025] [--repeats 5]

The room is synthetic but has a ScanNet room's surface area (a 4.6 m × 3.8 m floor, 2.2 m walls, furniture
boxes): ≈ 180k occupied voxels at 2 cm, ≈ 115k at 2.5 cm (ME's benchmark room had ≈ 162k at 2 cm).
MinkowskiEngine's published figure for MinkUNet34 inference at 2 cm is ≈ 0.08 s on an A100 (0.16 s on a V100,
9.2 s on a many-core Xeon). Random weights, batch of one room, fp32. Runs on CUDA when available; on a 2-core
CPU one 2 cm pass takes minutes. Prints figures only.
"""
from __future__ import annotations

import argparse

import MinkowskiEngine as ME
import torch

from lang3d.models.backbones.res16unet import Res16UNet34C
from lang3d.training.timing import record, seconds_per_call

# Axis-aligned boxes (min xyz, max xyz) in metres whose surfaces make the room: floor, four walls, furniture.
ROOM_BOXES = [
    ((0.0, 0.0, 0.0), (4.6, 3.8, 0.0)),                   # floor
    ((0.0, 0.0, 0.0), (4.6, 0.0, 2.2)), ((0.0, 3.8, 0.0), (4.6, 3.8, 2.2)),
    ((0.0, 0.0, 0.0), (0.0, 3.8, 2.2)), ((4.6, 0.0, 0.0), (4.6, 3.8, 2.2)),
    ((0.5, 0.5, 0.0), (2.5, 1.4, 0.45)),                  # bed
    ((3.0, 2.5, 0.0), (4.2, 3.3, 0.75)),                  # table
    ((3.2, 1.8, 0.0), (3.7, 2.3, 0.9)),                   # chair
    ((0.0, 3.2, 0.0), (1.2, 3.8, 2.0)),                   # wardrobe
    ((4.0, 0.2, 0.0), (4.6, 1.8, 0.8)),                   # sofa
]


def room_points(spacing: float = 0.008, seed: int = 0) -> torch.Tensor:
    """Points [P, 3] (metres) covering every face of ``ROOM_BOXES`` at ~``spacing`` with jitter."""
    g = torch.Generator().manual_seed(seed)
    faces = []
    for lo, hi in ROOM_BOXES:
        lo, hi = torch.tensor(lo), torch.tensor(hi)
        for axis in range(3):
            for level in {float(lo[axis]), float(hi[axis])}:
                u, v = [a for a in range(3) if a != axis]
                nu = max(int((hi[u] - lo[u]) / spacing), 1)
                nv = max(int((hi[v] - lo[v]) / spacing), 1)
                if (hi[u] - lo[u]) == 0 or (hi[v] - lo[v]) == 0:
                    continue
                pts = torch.empty(nu * nv, 3)
                pts[:, u] = lo[u] + (hi[u] - lo[u]) * torch.rand(nu * nv, generator=g)
                pts[:, v] = lo[v] + (hi[v] - lo[v]) * torch.rand(nu * nv, generator=g)
                pts[:, axis] = level
                faces.append(pts)
    return torch.cat(faces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--voxel-sizes", type=float, nargs="+", default=[0.02, 0.025])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = Res16UNet34C(3, 20).to(device)
    points = room_points()
    for voxel in args.voxel_sizes:
        coords = ME.utils.sparse_quantize(points / voxel)
        coords = ME.utils.batched_coordinates([coords]).to(device)
        feats = torch.rand(len(coords), 3, device=device)
        label = f"{voxel * 100:g} cm, {len(coords) / 1e3:.0f}k voxels, {device.type}"

        def inference():
            with torch.no_grad():
                net(ME.SparseTensor(feats, coordinates=coords))

        def train_step():
            out = net(ME.SparseTensor(feats, coordinates=coords))
            net.zero_grad(set_to_none=True)
            out.F.square().mean().backward()

        net.eval()
        infer_s = seconds_per_call(inference, device, repeats=args.repeats)
        net.train()
        train_s = seconds_per_call(train_step, device, repeats=args.repeats)
        print(f"SR-UNet34 {label}: inference {infer_s:.3f} s, forward+backward {train_s:.3f} s "
              f"(ME's MinkUNet34 at 2 cm: ~0.08 s inference on an A100)")
        record("srunet_speed", f"SR-UNet34 inference, {voxel * 100:g} cm room ({device.type})", infer_s, "s")
        record("srunet_speed", f"SR-UNet34 forward+backward, {voxel * 100:g} cm room ({device.type})", train_s, "s")
        if device.type == "cuda":
            print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
