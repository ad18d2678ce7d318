"""Speed of Text4Point detection fine-tuning (VoteNet on the SR-UNet34) on fixed synthetic scenes: training seconds
per iteration and inference scenes per second (network, box decoding and NMS).

    python benchmarks/text4point_detection.py [--dataset scannet|sunrgbd] [--points 40000] [--batch-size 2]

Prints figures only; nothing is asserted. Runs on CUDA when available, else on the CPU.
"""
from __future__ import annotations

import argparse
import tempfile
from functools import partial

import lightning as L
import torch

from datamodules import ScanNetDetectionDataModule, SUNRGBDDataModule
from datamodules.synthetic.scannet_detection import generate_scannet_detection
from datamodules.synthetic.sunrgbd import generate_sunrgbd
from lang3d.training.timing import optimizer_step, record, seconds_per_call
from text4point import Text4PointDetection
from text4point.guided_net import LanguageGuidedNet


def datamodule(dataset: str, root: str, points: int, batch_size: int):
    """A synthetic dataset of ``batch_size`` training and validation scenes and its datamodule (paper recipe:
    2.5 cm voxels; ScanNet 1 heading bin, SUN RGB-D 12)."""
    common = dict(num_points=points, voxel_size=0.025, batch_size=batch_size, val_batch_size=batch_size,
                  num_workers=0, augment=False)
    if dataset == "scannet":
        generate_scannet_detection(root, num_scenes=2 * batch_size, points_per_scene=points, val_fraction=0.5)
        return ScanNetDetectionDataModule(root, **common), 1
    generate_sunrgbd(root, num_train=batch_size, num_val=batch_size, points_per_scene=points, empty_scenes=0)
    return SUNRGBDDataModule(root, **common), 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("scannet", "sunrgbd"), default="scannet")
    parser.add_argument("--points", type=int, default=None, help="points per scene (paper: ScanNet 40k, SUN 20k)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--clip-model", default="RN50", help="architecture only: weights are random")
    args = parser.parse_args()
    points = args.points or (40000 if args.dataset == "scannet" else 20000)
    L.seed_everything(0, verbose=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory() as root:
        dm, bins = datamodule(args.dataset, root, points, args.batch_size)
        dm.setup("fit")
        network = partial(LanguageGuidedNet, clip_model=args.clip_model, clip_pretrained=None)
        model = Text4PointDetection(dm.class_names, network=network, num_heading_bin=bins, oriented=dm.oriented,
                                    mean_size=torch.as_tensor(dm.mean_size).tolist()).to(device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        train_batch = next(iter(dm.train_dataloader()))
        voxels = len(train_batch["coord"])

        model.train()
        step_s = seconds_per_call(optimizer_step(lambda: model._losses(train_batch)["loss"], optimizer), device,
                                  args.steps)
        print(f"training ({device.type}, {args.dataset}, {args.clip_model} text + SR-UNet34 + VoteNet, batch "
              f"{args.batch_size} scenes, {voxels} voxels at 2.5 cm): {step_s:.3f} s/iteration")

        model.eval()
        val_batch = next(iter(dm.val_dataloader()))
        scenes = len(val_batch["names"])

        with torch.no_grad():
            infer_s = seconds_per_call(lambda: model.predict_boxes(model(val_batch)[0]), device, args.steps)
        print(f"inference: {scenes} scenes in {infer_s:.3f} s = {scenes / infer_s:.2f} scenes/s")
        name = f"{args.dataset} detection"
        record("text4point_detection", f"{name} training iteration, batch {args.batch_size} ({device.type})",
               step_s, "s/it")
        record("text4point_detection", f"{name} inference ({device.type})", scenes / infer_s, "scenes/s")


if __name__ == "__main__":
    main()
