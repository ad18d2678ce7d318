"""The P-FID / P-IS feature network: point-e's PointNet++ SSG classifier (``lang3d.models.point_e.eval_pointnet``),
either point-e's released ``pointnet.pt`` or one trained here on ModelNet40.

Training follows the PointNet++ PyTorch code point-e's network comes from (yanx27/Pointnet_Pointnet2_pytorch,
``train_classification.py``): clouds centred and scaled into the unit sphere, then random scaling (0.8-1.25) and
shifts (±0.1); negative log-likelihood of the log-softmax; Adam (lr 1e-3, weight decay 1e-4), learning rate × 0.7
every 20 epochs. Random FPS start points in training, point-e's fixed ones in evaluation.

Train: ``python -m sepe.pointcloud_features --root /data/modelnet40_normal_resampled --out pointnet2.ckpt``; the
checkpoint (or point-e's ``pointnet.pt``) is SEPE's ``--model.eval_feature_network``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from lang3d.models.point_e.eval_pointnet import PointNet2SSG, load_eval_pointnet, normalize_clouds
from lang3d.training.sync_batchnorm import sync_batchnorm_under_ddp

__all__ = ["PointNet2Classification", "PointNet2SSG", "load_feature_network"]


class PointNet2Classification(L.LightningModule):
    """Trains ``PointNet2SSG`` on ModelNet40 batches (``points`` [B,N,3], ``label`` [B]); the network is ``net``
    (checkpoint tensors ``net.*``, point-e's names below it)."""

    def __init__(self, num_classes: int = 40, width: int = 2, lr: float = 1e-3, weight_decay: float = 1e-4,
                 lr_step_epochs: int = 20, lr_gamma: float = 0.7):
        super().__init__()
        self.save_hyperparameters()
        self.net = PointNet2SSG(num_classes, width)

    def setup(self, stage: str) -> None:
        """Under DDP (CPU or GPU) the BatchNorm layers are synchronised across processes
        (``lang3d.training.sync_batchnorm``)."""
        self.net = sync_batchnorm_under_ddp(self.net, self.trainer)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pts = normalize_clouds(batch["points"].float())
        scale = torch.empty(pts.shape[0], 1, 3, device=pts.device).uniform_(0.8, 1.25)
        shift = torch.empty(pts.shape[0], 1, 3, device=pts.device).uniform_(-0.1, 0.1)
        logits, _ = self.net(pts * scale + shift)
        loss = F.nll_loss(F.log_softmax(logits, -1), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=pts.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.net.logits(batch["points"].float())
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        self.log("val/acc", acc, prog_bar=True, batch_size=logits.shape[0])

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, hp.lr_step_epochs, hp.lr_gamma)]


def load_feature_network(path: str | Path) -> PointNet2SSG:
    """Point-e's ``pointnet.pt`` or a ``PointNet2Classification`` checkpoint -> the network in eval mode (strict;
    ``lang3d.models.point_e.eval_pointnet.load_eval_pointnet``)."""
    return load_eval_pointnet(path)


def main() -> None:
    from datamodules.modelnet40.datamodule import ModelNet40DataModule
    parser = argparse.ArgumentParser(description="Train the P-FID / P-IS feature network (point-e's PointNet++ SSG) "
                                                 "on ModelNet40.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", default="pointnet2_ssg_modelnet40.ckpt")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--num-points", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2, help="point-e's width_mult (its pointnet.pt: 2)")
    parser.add_argument("--num-workers", type=int, default=4)
    args = parser.parse_args()
    data = ModelNet40DataModule(args.root, num_points=args.num_points, batch_size=args.batch_size,
                                num_workers=args.num_workers)
    module = PointNet2Classification(width=args.width)
    trainer = L.Trainer(max_epochs=args.epochs, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
