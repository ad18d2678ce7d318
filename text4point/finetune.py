"""Text4Point fine-tuning for semantic segmentation (Sec. 3.4, 4.2, appendix B.1): the pre-trained 3D network
with the Text Querying Module fed by class text embeddings (learnable CoOp prompts through the frozen CLIP text
encoder), an auxiliary score-map loss at the encoder (Eq. 15-16), and evaluation on every input point."""
from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lang3d.metrics.segmentation import SegmentationMetrics
from lang3d.training.sync_batchnorm import sync_batchnorm_under_ddp
from lang3d.visual.tensorboard import confusion_image, label_colors, log_image, log_point_cloud
from text4point.guided_net import GuidedOutput, LanguageGuidedNet


@dataclass
class RoomLabels:
    """The predicted class of every point of one room (what ``test`` writes, ``text4point.writers``): name
    (``Area_N/<room>``), xyz [P, 3] float metres, labels [P] int64 class indices."""

    name: str
    xyz: np.ndarray
    labels: np.ndarray


class Text4PointSegmentation(L.LightningModule):
    """Semantic segmentation on sparse voxels. Batches come from ``S3DISDataModule``.

    Args:
        class_names: the K classes, in label order (their names make the text prompts).
        clip_model / clip_pretrained: the frozen CLIP whose text encoder embeds the class names; must be the
            model the pre-training used (its width d sizes the Text Querying Module).
        text_mode: "learned" (CoOp: ``n_ctx`` learnable context vectors), "fixed" ("point cloud of [cls]."), or
            "random" (learnable random embeddings instead of text: the paper's Table 6 control).
        use_tqm: the Text Querying Module (off: the plain SR-UNet baseline).
        pretrained: a Text4Point pre-training checkpoint; its 3D network is loaded by name (the task head is
            re-initialised); None trains from scratch.
        aux_loss_weight / aux_temperature / aux_radius_voxels: the auxiliary loss (0 disables it); the radius of
            the pseudo-label neighbourhood is in input-voxel units (default: half an encoder cell).
        ignore_index: label ignored by the losses and metrics.
        lr, momentum, weight_decay, poly_power: SGD with a polynomial schedule over the run's total steps.
    """

    def __init__(self, class_names: list[str], clip_model: str = "RN50", clip_pretrained: str | None = "openai",
                 text_mode: str = "learned", n_ctx: int = 8, prompt_template: str = "point cloud of {}.",
                 use_tqm: bool = True, tqm_heads: int = 1, pretrained: str | None = None, in_channels: int = 3,
                 aux_loss_weight: float = 1.0, aux_temperature: float = 0.07, aux_radius_voxels: float = 8.0,
                 ignore_index: int = -1, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4,
                 poly_power: float = 0.9, stem_kernel_size: int = 3, bn_momentum: float = 0.05,
                 log_point_cloud_every_n_epochs: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.guided = LanguageGuidedNet(self.class_names, len(self.class_names), clip_model, clip_pretrained, text_mode,
                                        n_ctx, prompt_template, use_tqm, tqm_heads, in_channels, stem_kernel_size,
                                        bn_momentum, pretrained)
        self.val_metrics = SegmentationMetrics(len(self.class_names), ignore_index)
        self.test_metrics = SegmentationMetrics(len(self.class_names), ignore_index)
        self._shown_room: dict | None = None

    # ---------------------------------------------------------------- forward and losses
    def forward(self, batch: dict) -> tuple[torch.Tensor, GuidedOutput]:
        """Logits [ΣV, K] per input voxel (in the batch's row order) and the network's outputs."""
        out = self.guided(batch["coord"], batch["color"] - 0.5)
        return out.voxel_features, out

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        logits, guided = self(batch)
        target = batch["segment"].to(self.device)
        hp = self.hparams
        loss_task = F.cross_entropy(logits, target, ignore_index=hp.ignore_index)
        out = {"loss_task": loss_task, "loss": loss_task}
        if hp.aux_loss_weight > 0:
            out["loss_aux"] = self.guided.auxiliary_loss(guided, batch["coord"], target, hp.aux_radius_voxels,
                                                         hp.aux_temperature, hp.ignore_index)
            out["loss"] = loss_task + hp.aux_loss_weight * out["loss_aux"]
        return out

    def predict_points(self, batch: dict) -> torch.Tensor:
        """Class per original point [ΣP]: each voxel's prediction mapped back through the inverse index."""
        logits, _ = self(batch)
        return logits.argmax(1)[batch["inverse"][:, 1].to(self.device)]

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        """Under DDP (CPU or GPU) every BatchNorm of the network (sparse and dense) is synchronised across
        processes (``lang3d.training.sync_batchnorm``)."""
        self.guided = sync_batchnorm_under_ddp(self.guided, self.trainer)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self._losses(batch)
        self.guided.log_training(self, out, len(batch["names"]))
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self.predict_points(batch)
        self.val_metrics.update(pred, batch["point_segment"].to(self.device))
        if batch_idx == 0:
            first = batch["inverse"][:, 0] == 0
            self._shown_room = {"xyz": batch["point_coord"][first].cpu().numpy(),
                                "pred": pred[first.to(self.device)].cpu().numpy(),
                                "gt": batch["point_segment"][first].cpu().numpy(), "name": batch["names"][0]}

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_metrics)
        room, every = self._shown_room, self.hparams.log_point_cloud_every_n_epochs
        if room is not None and every and self.current_epoch % every == 0 and not self.trainer.sanity_checking:
            k = len(self.class_names)
            log_point_cloud(self.logger, "val_room/prediction", room["xyz"], label_colors(room["pred"], k), self.global_step)
            log_point_cloud(self.logger, "val_room/ground_truth", room["xyz"], label_colors(room["gt"], k), self.global_step)
        self._shown_room = None

    def test_step(self, batch: dict, batch_idx: int) -> list[RoomLabels]:
        """Updates the test metrics; returns the batch's rooms with their points' predicted classes (written by
        ``text4point.writers.SegmentationPredictionWriter``)."""
        pred = self.predict_points(batch)
        self.test_metrics.update(pred, batch["point_segment"].to(self.device))
        owner, xyz = batch["inverse"][:, 0].cpu().numpy(), batch["point_coord"].cpu().numpy()
        pred = pred.cpu().numpy()
        return [RoomLabels(name, xyz[owner == b], pred[owner == b].astype(np.int64))
                for b, name in enumerate(batch["names"])]

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_metrics)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(1.0 - step / total, 0.0) ** hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---------------------------------------------------------------- reporting
    def _log_scores(self, stage: str, metrics: SegmentationMetrics) -> None:
        scores = metrics.scores()
        self.log_dict({f"{stage}/miou": scores["miou"].float(), f"{stage}/macc": scores["macc"].float(),
                       f"{stage}/oa": scores["oa"].float()})
        self.log_dict({f"{stage}_iou/{name}": scores["iou"][i].float() for i, name in enumerate(self.class_names)
                       if not torch.isnan(scores["iou"][i])})
        confusion = metrics.compute().cpu().numpy()
        log_image(self.logger, f"{stage}/confusion_matrix", confusion_image(confusion, self.class_names), self.global_step)
        metrics.reset()
