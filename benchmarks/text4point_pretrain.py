"""Throughput of Text4Point pre-training: the data pipeline (2D-3D pairs per second) against the model
(seconds per optimisation step), on a fixed synthetic scan, and the ratio between the two.

    python benchmarks/text4point_pretrain.py [--depth-size 640 480] [--batch-size 2] [--clip-model RN50]

Defaults: ScanNet's own frame sizes (colour 1296×968, depth 640×480).

Prints figures only; nothing is asserted. Runs on CUDA when available, else on the CPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch

from datamodules import ScanNetPairsDataModule
from datamodules.scannet.meta import CLASS_LABELS
from datamodules.synthetic.scannet import generate_scannet
from lang3d.training.timing import record, timed
from text4point import Text4PointPretraining


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--color-size", type=int, nargs=2, default=(1296, 968), metavar=("W", "H"))
    parser.add_argument("--depth-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--clip-model", default="RN50", help="architecture only: weights are random")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory() as root:
        generate_scannet(root, num_scenes=2, frames_per_scene=args.frames, color_size=tuple(args.color_size),
                         depth_size=tuple(args.depth_size), val_fraction=0.5)
        dm = ScanNetPairsDataModule(root, frame_skip=1, batch_size=args.batch_size, num_workers=0)
        dm.setup("fit")
        dataset = dm.train_set
        start = time.perf_counter()
        samples = [dataset[i] for i in range(len(dataset))]
        data_s = time.perf_counter() - start
        kept = [s for s in samples if "skipped" not in s]
        pairs = sum(len(s["pairs"]) for s in kept)
        voxels = sum(len(s["coord"]) for s in kept) / max(len(kept), 1)
        print(f"data: {len(samples)} frames (depth {args.depth_size[0]}x{args.depth_size[1]}, colour "
              f"{args.color_size[0]}x{args.color_size[1]}), {voxels:.0f} voxels/frame, "
              f"{pairs / len(kept):.0f} pairs/frame")
        print(f"data: {len(samples) / data_s:.2f} frames/s, {pairs / data_s:.0f} pairs/s (one process)")
        record("text4point_pretrain", "2D-3D pair pipeline (one process)", pairs / data_s, "pairs/s")

        model = Text4PointPretraining(class_names=list(CLASS_LABELS), clip_model=args.clip_model, clip_pretrained=None,
                                      image_log_interval=0).to(device)
        optimizer = model.configure_optimizers()["optimizer"]
        batch = next(iter(dm.train_dataloader()))
        def train_step():
            loss = model._losses(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        timed(train_step, device)  # warm-up
        times = [timed(train_step, device) for _ in range(args.steps)]
        step_s = sum(times) / len(times)
        data_per_batch = data_s / len(samples) * args.batch_size
        print(f"model ({device.type}, {args.clip_model} + SR-UNet34, batch {args.batch_size}): {step_s:.3f} s/step")
        record("text4point_pretrain", f"pre-training step, batch {args.batch_size} ({device.type})", step_s, "s/step")
        print(f"ratio data/model per batch: {data_per_batch / step_s:.2f} "
              f"(≈ data-loader workers needed to keep the model busy)")


if __name__ == "__main__":
    main()
