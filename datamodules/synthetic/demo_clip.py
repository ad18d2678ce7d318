"""Weights of the demo CLIP (``lang3d.models.demo_clip``) for synthetic ScanNet scans, made from the colour frames of
their training split (the validation scans are not looked at).

    python -m datamodules.synthetic.demo_clip --scannet DIR --out FILE [--image-size 224 224]

``make pretrain-text4point`` without SCANNET writes them beside its synthetic scans and passes them as
``model.clip_pretrained`` with ``configs/text4point/demo_synthetic.yaml``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datamodules.scannet.meta import read_split
from datamodules.scannet.scene import open_scene
from lang3d.models.demo_clip import DEMO_MODEL, build_demo_clip
from lang3d.training.atomic import atomic_write


def training_images(root: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """Every colour frame of the scans in ``root/scannetv2_train.txt``, resized to size = (H, W): [N,3,H,W] in
    [0,1]."""
    root = Path(root)
    images = []
    for name in read_split(root / "scannetv2_train.txt"):
        scene = open_scene(root / "scans" / name)
        images += [scene.color_resized(i, (size[1], size[0]))[0] for i in scene.frame_ids]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scannet", required=True, help="root of the synthetic scans (scans/, split lists)")
    parser.add_argument("--out", required=True, help="weights file to write (a state dict of the open_clip model)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--model", default=DEMO_MODEL)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images = training_images(args.scannet, tuple(args.image_size))
    model = build_demo_clip(images, args.model, args.seed)
    with atomic_write(args.out) as f:
        torch.save(model.state_dict(), f)
    print(f"wrote the demo CLIP ({args.model}, from {len(images)} training frames) to {args.out}")


if __name__ == "__main__":
    main()
