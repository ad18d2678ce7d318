"""Text4Point fine-tuning for S3DIS instance segmentation (Sec. 4.2, Table 2, appendix B.1): the language-guided
SR-UNet34 (TQM, learnable prompts, auxiliary loss) with a PointGroup head (Jiang et al. 2020): semantic scores and
offsets to the instance centre per voxel, dual-set clustering (original and shifted coordinates), ScoreNet.

The network works on voxels: training, clustering and scoring happen on the voxels of each room, and a proposal's
mask on the room's points is its voxels' mask read through ``inverse`` (each point takes its voxel's class and
offset, so point-level clustering would differ only inside voxels); evaluation scores every original point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lang3d.metrics.instance import InstanceSegmentationMetrics
from lang3d.visual.tensorboard import log_point_cloud
from text4point.guided_net import GuidedOutput
from text4point.instance_clustering import Clusters, best_iou, mask_nms, propose_instances
from text4point.instance_heads import ScoreNet, batch_instance_ids, offset_losses, score_targets
from text4point.task import NetworkFactory, Text4PointTask


@dataclass
class InstanceOutput:
    """Per input voxel, in the batch's row order: features [ΣV, C] (after BN + ReLU), semantic logits [ΣV, K],
    offset [ΣV, 3] metres (predicted vector to the instance centre); guided: the language-guided network's outputs."""

    features: torch.Tensor
    semantic: torch.Tensor
    offset: torch.Tensor
    guided: GuidedOutput


@dataclass
class RoomInstances:
    """Predicted instances of one room (what ``test`` writes, ``text4point.writers``): point_rows [P] int64 (its rows
    in the batch's ``point_*`` arrays), masks [I, P] bool over those points, labels [I] int64 classes, scores [I]
    float32 in [0, 1]."""

    name: str
    point_rows: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def instance_colors(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random uint8 RGB colour [N, 3] per instance id (fixed by ``seed``); negative ids grey."""
    ids = np.asarray(ids)
    palette = np.random.default_rng(seed).integers(40, 256, size=(int(ids.max(initial=-1)) + 1, 3)).astype(np.uint8)
    out = np.full((len(ids), 3), 128, np.uint8)
    out[ids >= 0] = palette[ids[ids >= 0]]
    return out


class Text4PointInstanceSegmentation(Text4PointTask):
    """PointGroup-style instance segmentation on sparse voxels. Batches come from
    ``S3DISDataModule(with_instance=True)``.

    The decoder z3D has ``feature_dim`` channels (not K logits): the semantic head (linear -> K) and the offset head
    (linear, BN, ReLU, linear -> 3) share it after BN + ReLU, as in PointGroup, and ScoreNet reads it for each
    cluster's points. Loss: semantic cross-entropy + offset_loss_weight (L_reg + L_dir) + score_loss_weight ScoreNet
    BCE (from ``score_start_step``) + aux_loss_weight L_aux (Eq. 15-16, as in ``Text4PointSegmentation``).

    Args (those shared with ``Text4PointSegmentation`` mean the same):
        class_names, network, pretrained: see ``Text4PointTask``; the network's decoder outputs ``feature_dim``
            channels.
        feature_dim: channels of z3D; score_hidden: ScoreNet width.
        voxel_size: voxel edge in metres, the datamodule's (the CLI takes it from the data,
            ``lang3d.training.cli.DATA_LINKS``).
        cluster_radius: metres; same-class voxel centres within it are linked, on original and shifted coordinates
            (default 0.09: the 26 neighbours of a 5 cm voxel); cluster_min_voxels: smaller clusters are dropped;
            cluster_max_neighbours: cap of each voxel's links (see ``text4point.instance_clustering``);
            skip_classes: class names never clustered (e.g. [ceiling, floor, wall]).
        score_start_step: ScoreNet is trained (on clusters of the current predictions) from this step on
            (PointGroup: after a third of training); before, its parameters are in no step's graph, so a DDP run
            needs ``trainer.strategy: ddp_find_unused_parameters_true`` (as configs/text4point/instance_s3dis.yaml);
            score_iou_low / score_iou_high: its soft-target ramp.
        test_score_threshold: proposals scoring below are dropped at evaluation; nms_iou: mask-NMS IoU threshold
            (null: no NMS).
        offset_loss_weight, score_loss_weight: weights of (L_reg + L_dir) and the ScoreNet BCE.
        eval_convention, eval_min_region_size: ``lang3d.metrics.instance.InstanceSegmentationMetrics``'s
            convention ("scannet": the ScanNet benchmark's script; "greedy_voc") and minimum region size (points).
    """

    synchronised_children = ("guided", "heads")

    def __init__(self, class_names: list[str], network: NetworkFactory, pretrained: str | None = None,
                 feature_dim: int = 32, score_hidden: int = 32, voxel_size: float = 0.05, cluster_radius: float = 0.09,
                 cluster_min_voxels: int = 20, cluster_max_neighbours: int = 64, skip_classes: list[str] = (),
                 score_start_step: int = 20000, score_iou_low: float = 0.25, score_iou_high: float = 0.75,
                 test_score_threshold: float = 0.09, nms_iou: float | None = 0.3, offset_loss_weight: float = 1.0,
                 score_loss_weight: float = 1.0, aux_loss_weight: float = 1.0, aux_temperature: float = 0.07,
                 aux_radius_voxels: float = 8.0, ignore_index: int = -1, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 1e-4, poly_power: float = 0.9, log_point_cloud_every_n_epochs: int = 1,
                 eval_convention: str = "scannet", eval_min_region_size: int = 100):
        if voxel_size is None or not voxel_size > 0:
            raise ValueError(f"Text4PointInstanceSegmentation: voxel_size must be the data's voxel edge in metres, got "
                             f"{voxel_size} (does the datamodule voxelise?)")
        unknown = [name for name in skip_classes if name not in class_names]
        if unknown:
            raise ValueError(f"skip_classes {unknown} are not among the classes {list(class_names)}")
        super().__init__(class_names, network, feature_dim, pretrained)
        self.save_hyperparameters()
        self.skip_ids = [self.class_names.index(name) for name in skip_classes]
        k, c, bn_momentum = len(self.class_names), feature_dim, self.guided.bn_momentum   # BN as the network's
        self.heads = nn.ModuleDict({
            "trunk": nn.Sequential(nn.BatchNorm1d(c, momentum=bn_momentum), nn.ReLU()),
            "semantic": nn.Linear(c, k),
            "offset": nn.Sequential(nn.Linear(c, c), nn.BatchNorm1d(c, momentum=bn_momentum), nn.ReLU(),
                                    nn.Linear(c, 3))})
        self.score_net = ScoreNet(c, score_hidden)
        self.val_metrics, self.test_metrics = (
            InstanceSegmentationMetrics(k, self.class_names, eval_convention, min_region_size=eval_min_region_size)
            for _ in range(2))
        self._shown_room: dict | None = None

    # ---------------------------------------------------------------- forward and losses
    def forward(self, batch: dict) -> InstanceOutput:
        guided = self.guided(batch["coord"], batch["color"] - 0.5)
        features = self.heads["trunk"](guided.voxel_features)
        return InstanceOutput(features, self.heads["semantic"](features), self.heads["offset"](features), guided)

    def voxel_centres(self, batch: dict) -> torch.Tensor:
        """[ΣV, 3] float32 metres: centres of the batch's voxels (in the room's centred frame)."""
        return (batch["coord"][:, 1:].to(self.device).float() + 0.5) * self.hparams.voxel_size

    def _room_clusters(self, batch: dict, out: InstanceOutput) -> list[tuple[np.ndarray, Clusters]]:
        """Per room of the batch: (its voxel rows [V_b] int64, its proposals; members index into those rows)."""
        hp = self.hparams
        room = batch["coord"][:, 0].numpy()
        centres = self.voxel_centres(batch).cpu().numpy()
        labels = out.semantic.detach().argmax(1).cpu().numpy()
        offset = out.offset.detach().float().cpu().numpy()
        result = []
        for b in range(len(batch["names"])):
            rows = np.flatnonzero(room == b)
            result.append((rows, propose_instances(centres[rows], offset[rows], labels[rows], hp.cluster_radius,
                                                   hp.cluster_min_voxels, self.skip_ids, hp.cluster_max_neighbours)))
        return result

    def _score_logits(self, out: InstanceOutput, centres: torch.Tensor, rows: np.ndarray,
                      clusters: Clusters) -> torch.Tensor:
        """ScoreNet logits [I] of one room's clusters."""
        point_index = torch.as_tensor(rows[clusters.point_index], dtype=torch.int64, device=self.device)
        cluster_index = torch.as_tensor(clusters.cluster_index, dtype=torch.int64, device=self.device)
        return self.score_net(out.features, centres, point_index, cluster_index, len(clusters))

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        _require_instances(batch)
        hp = self.hparams
        out = self(batch)
        target = batch["segment"].to(self.device)
        key = batch_instance_ids(batch["coord"][:, 0], batch["instance"]).to(self.device)
        centres = self.voxel_centres(batch)
        losses = {"loss_semantic": F.cross_entropy(out.semantic, target, ignore_index=hp.ignore_index)}
        losses["loss_offset_l1"], losses["loss_offset_dir"] = offset_losses(out.offset, centres, key)
        losses["loss"] = losses["loss_semantic"] + hp.offset_loss_weight * (
            losses["loss_offset_l1"] + losses["loss_offset_dir"])
        if self.global_step >= hp.score_start_step:
            logits, targets = [], []
            for rows, clusters in self._room_clusters(batch, out):
                if len(clusters):
                    logits.append(self._score_logits(out, centres, rows, clusters))
                    iou = best_iou(clusters, batch["instance"].numpy()[rows])
                    targets.append(score_targets(torch.as_tensor(iou, dtype=torch.float32, device=self.device),
                                                 hp.score_iou_low, hp.score_iou_high))
            if logits:
                losses["loss_score"] = F.binary_cross_entropy_with_logits(torch.cat(logits), torch.cat(targets))
                losses["loss"] = losses["loss"] + hp.score_loss_weight * losses["loss_score"]
        return self.add_auxiliary_loss(losses, out.guided, batch, target)

    def predict_instances(self, batch: dict) -> list[RoomInstances]:
        """Per room: proposals scored by ScoreNet, those below ``test_score_threshold`` dropped, mask-NMS, masks
        mapped from voxels to every point through ``inverse``; in descending score order."""
        hp = self.hparams
        out = self(batch)
        centres = self.voxel_centres(batch)
        inverse = batch["inverse"].numpy()
        rooms = []
        for b, (rows, clusters) in enumerate(self._room_clusters(batch, out)):
            scores = np.zeros(0, np.float32)
            if len(clusters):
                scores = torch.sigmoid(self._score_logits(out, centres, rows, clusters)).float().cpu().numpy()
            keep = np.flatnonzero(scores >= hp.test_score_threshold)
            clusters, scores = clusters.select(keep), scores[keep]
            order = (mask_nms(clusters, scores, len(rows), hp.nms_iou) if hp.nms_iou is not None
                     else np.argsort(-scores, kind="stable"))
            clusters, scores = clusters.select(order), scores[order]
            point_rows = np.flatnonzero(inverse[:, 0] == b)
            local = np.full(len(batch["coord"]), -1, dtype=np.int64)  # batch voxel row -> row within the room
            local[rows] = np.arange(len(rows))
            voxel_masks = clusters.incidence(len(rows)).toarray().astype(bool)
            rooms.append(RoomInstances(batch["names"][b], point_rows, voxel_masks[:, local[inverse[point_rows, 1]]],
                                       clusters.labels, scores))
        return rooms

    # ---------------------------------------------------------------- Lightning hooks
    def _evaluate(self, batch: dict, metrics: InstanceSegmentationMetrics) -> list[RoomInstances]:
        _require_instances(batch)
        rooms = self.predict_instances(batch)
        for room in rooms:
            metrics.update(torch.from_numpy(room.masks).to(self.device), torch.from_numpy(room.labels).to(self.device),
                           torch.from_numpy(room.scores).to(self.device), batch["point_instance"][room.point_rows],
                           batch["point_segment"][room.point_rows])
        return rooms

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        rooms = self._evaluate(batch, self.val_metrics)
        if batch_idx == 0 and rooms:
            room = rooms[0]
            shown = np.full(len(room.point_rows), -1, dtype=np.int64)
            for i in range(len(room.scores))[::-1]:  # descending score order: the best proposal is painted last
                shown[room.masks[i]] = i
            self._shown_room = {"xyz": batch["point_coord"][room.point_rows].numpy(), "pred": shown,
                                "gt": batch["point_instance"][room.point_rows].numpy()}

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_metrics)
        room, every = self._shown_room, self.hparams.log_point_cloud_every_n_epochs
        if room is not None and every and self.current_epoch % every == 0 and not self.trainer.sanity_checking:
            log_point_cloud(self.logger, "val_room/instances_predicted", room["xyz"], instance_colors(room["pred"]),
                            self.global_step)
            log_point_cloud(self.logger, "val_room/instances_ground_truth", room["xyz"], instance_colors(room["gt"]),
                            self.global_step)
        self._shown_room = None

    def test_step(self, batch: dict, batch_idx: int) -> list[RoomInstances]:
        """Updates the test metrics; returns the batch's rooms with their predicted instances (written by
        ``text4point.writers.InstancePredictionWriter``)."""
        return self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_metrics)

    # ---------------------------------------------------------------- reporting
    def _log_scores(self, stage: str, metrics: InstanceSegmentationMetrics) -> None:
        scores = metrics.compute()
        keys = ("map", "map@0.5", "map@0.25", "mprec@0.5", "mrec@0.5")
        self.log_dict({f"{stage}/{key}": scores[key].float() for key in keys if not torch.isnan(scores[key])})
        self.log_dict({f"{stage}_ap50/{name}": scores["ap@0.5"][i].float() for i, name in enumerate(self.class_names)
                       if not torch.isnan(scores["ap@0.5"][i])})
        metrics.reset()


def _require_instances(batch: dict) -> None:
    if "instance" not in batch:
        raise KeyError("Text4PointInstanceSegmentation needs instance ids in the batch: use "
                       "S3DISDataModule(with_instance=True) (data.init_args.with_instance: true)")
