"""Text4Point fine-tuning for 3D object detection (Sec. 4.3, appendix B.2): VoteNet with the pre-trained SR-UNet34
(Text Querying Module, learnable CoOp prompts) in place of PointNet++, as PointContrast did, plus the auxiliary
score-map loss at the encoder (Eq. 15-16) with the voxels' class labels (the class of the box they lie in) as
pseudo-label source. ScanNet (18 classes, axis-aligned boxes, 1 heading bin) and SUN RGB-D (10 classes, oriented
boxes, 12 heading bins)."""
from __future__ import annotations

import math

import numpy as np
import torch

from lang3d.geometry.boxes import nms_3d
from lang3d.metrics.detection import DetectionMAP
from lang3d.training.schedules import warmup_cosine
from lang3d.visual.tensorboard import bev_boxes_image, log_image
from text4point.box_coder import BoxCoder
from text4point.guided_net import GuidedOutput
from text4point.task import NetworkFactory, Text4PointTask
from text4point.votenet_head import VoteNetHead, VoteNetOutput
from text4point.votenet_loss import build_targets, detection_losses

PREDICTION_DTYPE = np.dtype([("box", np.float32, (7,)), ("score", np.float32), ("label", np.int64)])
"""Rows of the per-scene prediction files written by ``test`` (``text4point.writers``): box (cx, cy, cz, dx, dy,
dz, heading) metres / radians, score in [0, 1], class index."""
GT_COLOUR, PRED_COLOUR = (0, 150, 0), (220, 30, 30)


class Text4PointDetection(Text4PointTask):
    """VoteNet detection on the language-guided SR-UNet34. Batches come from ``ScanNetDetectionDataModule`` or
    ``SUNRGBDDataModule`` (see ``datamodules.detection_common``).

    Args:
        class_names, network, pretrained: see ``Text4PointTask``; the network's decoder outputs ``seed_feature_dim``
            channels, a head re-initialised whenever its shape differs from the pre-training checkpoint's.
        num_heading_bin: VoteNet's heading bins (ScanNet 1, SUN RGB-D 12); oriented: boxes have headings
            (oriented IoU and NMS) or are axis-aligned (decoded headings set to 0).
        mean_size: [K,3] full sizes (metres) of the size clusters; None: the datamodule's ``mean_size`` at
            ``setup`` (kept in checkpoints). The CLI takes ``class_names``, ``oriented`` and ``mean_size`` from the
            data (``lang3d.training.cli.DATA_LINKS``); built in Python, the model must be given the data's.
        num_seed, num_proposal, vote_radius, vote_samples: VoteNet's 1024 seeds, 256 proposals, 0.3 m, 16 votes.
        near_threshold / far_threshold: objectness assignment radii (metres).
        aux_loss_weight / aux_temperature / aux_radius_voxels: the auxiliary loss (0 disables it); pseudo labels
            are the voxels' ``segment`` classes within ``aux_radius_voxels`` input voxels of each encoder voxel.
        lr, weight_decay: AdamW; warmup (in ``warmup_unit`` "epochs", which needs trainer.max_epochs, or "steps"):
            linear warm-up from 0, then cosine decay to 0 at the end of the run (the trainer's max_epochs / max_steps).
        nms_iou, conf_threshold, per_class_proposal: evaluation as VoteNet's: per-class 3D NMS of the proposals
            (class = argmax, score = objectness), then those with objectness > conf_threshold give one box per
            class scored objectness × class probability (or, without per_class_proposal, their argmax class).
        bev_every_n_epochs: epochs between bird's-eye views of a validation scene in TensorBoard (0: never);
            bev_threshold: objectness of the proposals drawn.
    """

    synchronised_children = ("guided", "head")

    def __init__(self, class_names: list[str], network: NetworkFactory, num_heading_bin: int = 1,
                 oriented: bool = False, mean_size: list[list[float]] | None = None, pretrained: str | None = None,
                 seed_feature_dim: int = 256,
                 num_seed: int = 1024, num_proposal: int = 256, vote_radius: float = 0.3, vote_samples: int = 16,
                 near_threshold: float = 0.3, far_threshold: float = 0.6, aux_loss_weight: float = 1.0,
                 aux_temperature: float = 0.07, aux_radius_voxels: float = 8.0, ignore_index: int = -1,
                 lr: float = 0.001, weight_decay: float = 0.0, warmup: float = 0.0, warmup_unit: str = "epochs",
                 nms_iou: float = 0.25, conf_threshold: float = 0.05, per_class_proposal: bool = True,
                 bev_every_n_epochs: int = 1, bev_threshold: float = 0.5):
        if warmup_unit not in ("epochs", "steps"):
            raise ValueError(f"warmup_unit must be 'epochs' or 'steps', got {warmup_unit!r}")
        super().__init__(class_names, network, seed_feature_dim, pretrained)
        self.save_hyperparameters()
        k = len(self.class_names)
        self.head = VoteNetHead(k, num_heading_bin, k, seed_feature_dim, num_seed, num_proposal, vote_radius,
                                vote_samples)
        if mean_size is None:
            initial = torch.full((k, 3), float("nan"))
        else:
            initial = torch.as_tensor(mean_size, dtype=torch.float32)
            BoxCoder(initial, num_heading_bin)   # checks shape and values
            if len(initial) != k:
                raise ValueError(f"mean_size has {len(initial)} rows for {k} classes")
        self.register_buffer("mean_size", initial)
        self.val_map = DetectionMAP(k, (0.25, 0.5), oriented, self.class_names)
        self.test_map = DetectionMAP(k, (0.25, 0.5), oriented, self.class_names)
        self._shown_scene: dict | None = None

    # ---------------------------------------------------------------- forward and losses
    def coder(self) -> BoxCoder:
        if not bool(torch.isfinite(self.mean_size).all()):
            raise RuntimeError("Text4PointDetection: the mean box sizes are unknown: pass model.mean_size, or run "
                               "with a datamodule that has a mean_size attribute")
        return BoxCoder(self.mean_size, self.hparams.num_heading_bin)

    def forward(self, batch: dict) -> tuple[VoteNetOutput, GuidedOutput]:
        """VoteNet's outputs for the batch's scenes and the language-guided network's outputs."""
        guided = self.guided(batch["coord"], batch["color"] - 0.5)
        return self.head(guided.voxel_features, batch["xyz"].to(self.device), batch["offset"]), guided

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        hp = self.hparams
        det, guided = self(batch)
        targets = build_targets(batch["gt_boxes"], batch["gt_labels"], self.coder(), self.device)
        rows = det.seed_rows
        out = detection_losses(det, targets, batch["vote"].to(self.device)[rows],
                               batch["vote_mask"].to(self.device)[rows], hp.near_threshold, hp.far_threshold)
        out["loss_det"] = out.pop("loss")
        out["loss"] = out["loss_det"]
        return self.add_auxiliary_loss(out, guided, batch, batch["segment"].to(self.device))

    def predict_boxes(self, det: VoteNetOutput) -> tuple[list[dict], list[dict]]:
        """Per scene: the detections scored for evaluation (dicts of boxes [D,7], scores [D], labels [D]) and the
        proposals kept by NMS (boxes, scores = objectness, labels = argmax class)."""
        hp = self.hparams
        boxes = self.coder().decode_scores(det.center, det.heading_scores, det.heading_residuals, det.size_scores,
                                           det.size_residuals)
        if not hp.oriented:
            boxes[..., 6] = 0.0
        objectness = det.objectness.softmax(-1)[..., 1]
        probs = det.sem_scores.softmax(-1)
        detections, kept = [], []
        for b in range(len(boxes)):
            labels = probs[b].argmax(-1)
            keep = nms_3d(boxes[b], objectness[b], hp.nms_iou, hp.oriented, labels=labels)
            keep = keep[objectness[b][keep] > hp.conf_threshold]
            kept.append({"boxes": boxes[b][keep], "scores": objectness[b][keep], "labels": labels[keep]})
            if hp.per_class_proposal:
                k = probs.shape[-1]
                detections.append({"boxes": boxes[b][keep].repeat_interleave(k, 0),
                                   "scores": (objectness[b][keep, None] * probs[b][keep]).reshape(-1),
                                   "labels": torch.arange(k, device=boxes.device).repeat(len(keep))})
            else:
                detections.append(kept[-1])
        return detections, kept

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        """Under DDP (CPU or GPU) every BatchNorm (sparse network and VoteNet head) is synchronised across processes
        (``lang3d.training.sync_batchnorm``); mean sizes not given are the datamodule's."""
        super().setup(stage)
        data = getattr(self.trainer, "datamodule", None)
        if not bool(torch.isfinite(self.mean_size).all()) and getattr(data, "mean_size", None) is not None:
            self.mean_size.copy_(torch.as_tensor(np.asarray(data.mean_size), dtype=torch.float32))

    def _evaluate(self, batch: dict, metric: DetectionMAP) -> tuple[list[dict], list[dict]]:
        det, _ = self(batch)
        detections, kept = self.predict_boxes(det)
        targets = [{"boxes": boxes.to(self.device), "labels": labels.to(self.device)}
                   for boxes, labels in zip(batch["gt_boxes"], batch["gt_labels"])]
        metric.update(detections, targets)
        return detections, kept

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, kept = self._evaluate(batch, self.val_map)
        if batch_idx == 0:
            end = int(batch["offset"][0])
            shown = kept[0]["scores"] >= self.hparams.bev_threshold
            self._shown_scene = {"xyz": batch["xyz"][:end].cpu().numpy(), "gt": batch["gt_boxes"][0].cpu().numpy(),
                                 "pred": kept[0]["boxes"][shown].cpu().numpy()}

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_map)
        scene, every = self._shown_scene, self.hparams.bev_every_n_epochs
        if scene is not None and every and self.current_epoch % every == 0 and not self.trainer.sanity_checking:
            image = bev_boxes_image(scene["xyz"], [(scene["gt"], GT_COLOUR), (scene["pred"], PRED_COLOUR)])
            log_image(self.logger, "val_scene/bev_gt_green_pred_red", image, self.global_step)
        self._shown_scene = None

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, np.ndarray]:
        """Updates the test mAP; returns {scene name: its detections as ``PREDICTION_DTYPE`` rows} (written by
        ``text4point.writers.DetectionPredictionWriter``)."""
        detections, _ = self._evaluate(batch, self.test_map)
        return {name: prediction_rows(det) for name, det in zip(batch["names"], detections)}

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_map)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("Text4PointDetection: the cosine schedule needs the run's length: set trainer.max_epochs "
                             "or trainer.max_steps")
        total, warmup = max(int(total), 1), hp.warmup
        if hp.warmup_unit == "epochs" and warmup > 0:
            if trainer.train_dataloader is None:     # loaded by estimated_stepping_batches unless max_epochs is -1
                raise ValueError("Text4PointDetection: warm-up in epochs needs the number of batches per epoch before "
                                 "training, which Lightning counts only for a run bounded by trainer.max_epochs; "
                                 "for a run bounded by max_steps alone use warmup_unit: steps")
            if not math.isfinite(trainer.num_training_batches):
                raise ValueError("Text4PointDetection: warm-up in epochs needs a training loader of known length "
                                 "(else use warmup_unit: steps)")
            warmup *= math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        warmup = max(min(int(round(warmup)), total - 1), 0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---------------------------------------------------------------- reporting
    def _log_scores(self, stage: str, metric: DetectionMAP) -> None:
        result = metric.compute()
        scores = {}
        for t in metric.iou_thresholds:
            scores[f"{stage}/map@{t:g}"] = result[f"map@{t:g}"].float()
            scores[f"{stage}/mean_recall@{t:g}"] = result[f"recall@{t:g}"].nanmean().float()
            scores.update({f"{stage}_ap@{t:g}/{name}": ap.float() for name, ap in
                           zip(self.class_names, result[f"ap@{t:g}"]) if not torch.isnan(ap)})
        self.log_dict(scores)
        metric.reset()


def prediction_rows(detections: dict) -> np.ndarray:
    """One scene's detections (``boxes`` [D, 7], ``scores`` [D], ``labels`` [D]) as [D] ``PREDICTION_DTYPE`` rows."""
    rows = np.empty(len(detections["scores"]), dtype=PREDICTION_DTYPE)
    rows["box"] = detections["boxes"].detach().cpu().numpy()
    rows["score"] = detections["scores"].detach().cpu().numpy()
    rows["label"] = detections["labels"].cpu().numpy()
    return rows
