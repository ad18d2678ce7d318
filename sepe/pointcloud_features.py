"""PointNet++ SSG classifier (plain PyTorch) as the feature network of P-FID / P-IS, and its ModelNet40 training.

Architecture of PointNet++ SSG classification (Qi et al. 2017) with channel widths times ``width`` (Point-E's
evaluator: width 2): three set-abstraction levels (512 centres r=0.2 k=32, 128 centres r=0.4 k=64, then all
points), then FC 1024w -> 512 -> 256 -> classes. ``features`` is the 512-d activation after the first FC;
``logits`` the class scores. Grouping: the k nearest points of each FPS centre, those beyond the radius replaced
by the nearest (the centre itself), i.e. a ball query in distance order instead of pointnet2_ops' index order.
Input clouds are centred and scaled into the unit sphere inside the network.

Train: ``python -m sepe.pointcloud_features --root /data/modelnet40_normal_resampled --out pointnet2.ckpt``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lang3d.data.point_ops import farthest_point_sample, index_points, knn, normalize_unit_sphere
from lang3d.sync_batchnorm import sync_batchnorm_under_ddp


def _mlp(channels: list[int]) -> nn.Sequential:
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SetAbstraction(nn.Module):
    """One SSG level: xyz [B,N,3], features [B,N,C] or None -> centres [B,M,3], features [B,M,C_out]
    (``centres`` None: one group of all points around the origin)."""

    def __init__(self, centres: int | None, radius: float, k: int, channels: list[int]):
        super().__init__()
        self.centres, self.radius, self.k = centres, radius, k
        self.mlp = _mlp(channels)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.centres is None:
            centre = xyz.new_zeros(xyz.shape[0], 1, 3)
            rel = xyz[:, None]                                                       # [B,1,N,3]
            grouped = None if feats is None else feats[:, None]
        else:
            centre = index_points(xyz, farthest_point_sample(xyz, min(self.centres, xyz.shape[1])))
            idx = knn(centre, xyz, min(self.k, xyz.shape[1]))                        # [B,M,k] nearest first
            dist = (index_points(xyz, idx) - centre[:, :, None]).norm(dim=-1)
            idx = torch.where(dist <= self.radius, idx, idx[..., :1])
            rel = index_points(xyz, idx) - centre[:, :, None]                       # [B,M,k,3]
            grouped = None if feats is None else index_points(feats, idx)
        x = rel if grouped is None else torch.cat([rel, grouped], -1)
        x = self.mlp(x.permute(0, 3, 1, 2))                                          # [B,C,M,k]
        return centre, x.amax(-1).transpose(1, 2)


class PointNet2SSG(nn.Module):
    """PointNet++ SSG classifier: points [B,N,3] -> ``logits`` [B,classes]; ``features`` [B,512]."""

    FEATURE_DIM = 512

    def __init__(self, num_classes: int = 40, width: int = 2):
        super().__init__()
        w = width
        self.hparams = {"num_classes": num_classes, "width": width}
        self.sa = nn.ModuleList([SetAbstraction(512, 0.2, 32, [3, 64 * w, 64 * w, 128 * w]),
                                 SetAbstraction(128, 0.4, 64, [128 * w + 3, 128 * w, 128 * w, 256 * w]),
                                 SetAbstraction(None, 0.0, 0, [256 * w + 3, 256 * w, 512 * w, 1024 * w])])
        self.fc1 = nn.Sequential(nn.Linear(1024 * w, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 256, bias=False), nn.BatchNorm1d(256),
                                  nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, num_classes))

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """points [B,N,3] (any position / scale: normalised into the unit sphere here) -> [B,512] features."""
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] == 0:
            raise ValueError(f"PointNet2SSG expects points [B,N,3] with N > 0, got {tuple(points.shape)}")
        xyz, feats = normalize_unit_sphere(points.float()), None
        for sa in self.sa:
            xyz, feats = sa(xyz, feats)
        return self.fc1(feats[:, 0])

    def logits(self, points: torch.Tensor) -> torch.Tensor:
        """points [B,N,3] -> class logits [B,num_classes]."""
        return self.head(self.features(points))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.logits(points)


class PointNet2Classification(L.LightningModule):
    """Trains ``PointNet2SSG`` on ModelNet40 batches (``points`` [B,N,3], ``label`` [B]) with cross-entropy,
    random scaling (0.8-1.25) and shifts (±0.1) as augmentation; Adam with cosine decay."""

    def __init__(self, num_classes: int = 40, width: int = 2, lr: float = 1e-3, weight_decay: float = 1e-4,
                 max_epochs: int = 200):
        super().__init__()
        self.save_hyperparameters()
        self.net = PointNet2SSG(num_classes, width)

    def setup(self, stage: str) -> None:
        """Under DDP (CPU or GPU) the BatchNorm layers are synchronised across processes (``lang3d.sync_batchnorm``)."""
        self.net = sync_batchnorm_under_ddp(self.net, self.trainer)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pts = batch["points"].float()
        scale = torch.empty(pts.shape[0], 1, 3, device=pts.device).uniform_(0.8, 1.25)
        shift = torch.empty(pts.shape[0], 1, 3, device=pts.device).uniform_(-0.1, 0.1)
        loss = F.cross_entropy(self.net.logits(pts * scale + shift), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=pts.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.net.logits(batch["points"].float())
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        self.log("val/acc", acc, prog_bar=True, batch_size=logits.shape[0])

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.hparams.max_epochs)]


def load_feature_network(path: str | Path) -> PointNet2SSG:
    """A ``PointNet2Classification`` checkpoint (or a plain ``PointNet2SSG`` state dict saved with
    ``{"hparams", "state_dict"}``) -> the network in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature-network checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint with a 'state_dict' (got {type(ckpt).__name__})")
    hp = ckpt.get("hyper_parameters", ckpt.get("hparams", {}))
    net = PointNet2SSG(hp.get("num_classes", 40), hp.get("width", 2))
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit PointNet2SSG{hp}: {e}") from e
    return net.eval()


def main() -> None:
    from datamodules.modelnet40.datamodule import ModelNet40DataModule
    parser = argparse.ArgumentParser(description="Train the P-FID / P-IS feature network on ModelNet40.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", default="pointnet2_ssg_modelnet40.ckpt")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-points", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=4)
    args = parser.parse_args()
    data = ModelNet40DataModule(args.root, num_points=args.num_points, batch_size=args.batch_size,
                                num_workers=args.num_workers)
    module = PointNet2Classification(width=args.width, max_epochs=args.epochs)
    trainer = L.Trainer(max_epochs=args.epochs, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
