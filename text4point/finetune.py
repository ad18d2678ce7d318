"""Text4Point fine-tuning for semantic segmentation (Sec. 3.4, 4.2, appendix B.1): the pre-trained 3D network
with the Text Querying Module fed by class text embeddings (learnable CoOp prompts through the frozen CLIP text
encoder), an auxiliary score-map loss at the encoder (Eq. 15-16), and evaluation on every input point."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lang3d.metrics.segmentation import SegmentationMetrics
from lang3d.visual.tensorboard import confusion_image, label_colors, log_image, log_point_cloud
from text4point.guided_net import GuidedOutput
from text4point.task import NetworkFactory, Text4PointTask


@dataclass
class RoomLabels:
    """The predicted class of every point of one room (what ``test`` writes, ``text4point.writers``): name
    (``Area_N/<room>``), xyz [P, 3] float metres, labels [P] int64 class indices."""

    name: str
    xyz: np.ndarray
    labels: np.ndarray


class Text4PointSegmentation(Text4PointTask):
    """Semantic segmentation on sparse voxels. Batches come from ``S3DISDataModule``.

    Args:
        class_names, network, pretrained: see ``Text4PointTask``; the network's decoder outputs K logits.
        aux_loss_weight / aux_temperature / aux_radius_voxels: the auxiliary loss (0 disables it); the radius of
            the pseudo-label neighbourhood is in input-voxel units (default: half an encoder cell).
        ignore_index: label ignored by the losses and metrics.
        lr, momentum, weight_decay, poly_power: SGD with a polynomial schedule over the run's total steps.
    """

    def __init__(self, class_names: list[str], network: NetworkFactory, pretrained: str | None = None,
                 aux_loss_weight: float = 1.0, aux_temperature: float = 0.07, aux_radius_voxels: float = 8.0,
                 ignore_index: int = -1, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4,
                 poly_power: float = 0.9, log_point_cloud_every_n_epochs: int = 1):
        super().__init__(class_names, network, len(class_names), pretrained)
        self.save_hyperparameters()
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
        loss_task = F.cross_entropy(logits, target, ignore_index=self.hparams.ignore_index)
        return self.add_auxiliary_loss({"loss_task": loss_task, "loss": loss_task}, guided, batch, target)

    def predict_points(self, batch: dict) -> torch.Tensor:
        """Class per original point [ΣP]: each voxel's prediction mapped back through the inverse index."""
        logits, _ = self(batch)
        return logits.argmax(1)[batch["inverse"][:, 1].to(self.device)]

    # ---------------------------------------------------------------- Lightning hooks
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
            log_point_cloud(self.logger, "val_room/prediction", room["xyz"], label_colors(room["pred"], k),
                            self.global_step)
            log_point_cloud(self.logger, "val_room/ground_truth", room["xyz"], label_colors(room["gt"], k),
                            self.global_step)
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

    # ---------------------------------------------------------------- reporting
    def _log_scores(self, stage: str, metrics: SegmentationMetrics) -> None:
        scores = metrics.scores()
        self.log_dict({f"{stage}/miou": scores["miou"].float(), f"{stage}/macc": scores["macc"].float(),
                       f"{stage}/oa": scores["oa"].float()})
        self.log_dict({f"{stage}_iou/{name}": scores["iou"][i].float() for i, name in enumerate(self.class_names)
                       if not torch.isnan(scores["iou"][i])})
        confusion = metrics.compute().cpu().numpy()
        log_image(self.logger, f"{stage}/confusion_matrix", confusion_image(confusion, self.class_names),
                  self.global_step)
        metrics.reset()
