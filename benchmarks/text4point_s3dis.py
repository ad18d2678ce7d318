"""Speed of Text4Point S3DIS fine-tuning on a fixed synthetic room: training seconds per iteration and
inference points per second (full resolution, through the inverse index).

    python benchmarks/text4point_s3dis.py [--points 200000] [--batch-size 2] [--clip-model RN50]

Prints figures only; nothing is asserted. Runs on CUDA when available, else on the CPU.
"""
from __future__ import annotations

import argparse
import tempfile
from functools import partial

import lightning as L
import torch

from datamodules import S3DISDataModule
from datamodules.synthetic.s3dis import generate_s3dis
from lang3d.training.timing import optimizer_step, record, seconds_per_call
from text4point import Text4PointSegmentation
from text4point.guided_net import LanguageGuidedNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=200000, help="points per synthetic room")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--clip-model", default="RN50", help="architecture only: weights are random")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory() as root:
        generate_s3dis(root, areas=(1, 5), rooms_per_area=args.batch_size, points_per_room=args.points)
        dm = S3DISDataModule(root, areas=(1, 5), batch_size=args.batch_size, num_workers=0)
        dm.prepare_data()
        dm.setup("fit")
        network = partial(LanguageGuidedNet, clip_model=args.clip_model, clip_pretrained=None)
        model = Text4PointSegmentation(list(dm.class_names), network=network).to(device)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        train_batch = next(iter(dm.train_dataloader()))
        voxels = len(train_batch["coord"])

        model.train()
        step_s = seconds_per_call(optimizer_step(lambda: model._losses(train_batch)["loss"], optimizer), device,
                                  args.steps)
        print(f"training ({device.type}, {args.clip_model} text + SR-UNet34, batch {args.batch_size} rooms, "
              f"{voxels} voxels at 5 cm): {step_s:.3f} s/iteration")

        model.eval()
        val_batch = next(iter(dm.val_dataloader()))
        points = len(val_batch["point_segment"])
        with torch.no_grad():
            infer_s = seconds_per_call(lambda: model.predict_points(val_batch), device, args.steps)
        print(f"inference: {points} points in {infer_s:.3f} s = {points / infer_s:,.0f} points/s")
        record("text4point_s3dis", f"S3DIS training iteration, batch {args.batch_size} ({device.type})", step_s, "s/it")
        record("text4point_s3dis", f"S3DIS inference ({device.type})", points / infer_s, "points/s")


if __name__ == "__main__":
    main()
