"""What Text4Point's downstream tasks (segmentation, detection, instance segmentation) share: the language-guided
network given to them configured (``network``), pre-trained weights loaded into it, synchronised BatchNorm under DDP,
the training step's logging, the auxiliary loss (Eq. 15-16) and the SGD + poly schedule of the S3DIS tasks."""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from lang3d.training.sync_batchnorm import sync_batchnorm_under_ddp
from text4point.guided_net import GuidedOutput, LanguageGuidedNet

NetworkFactory = Callable[[list[str], int], LanguageGuidedNet]
"""The language-guided network, configured but for (class names, output channels z3D), which the task decides. In
YAML: ``network: {class_path: text4point.guided_net.LanguageGuidedNet, init_args: {clip_model: RN50, ...}}``; in
Python: ``functools.partial(LanguageGuidedNet, clip_model="RN50", ...)`` (kept in the module's hparams: such a
checkpoint reloads with ``load_from_checkpoint(path, weights_only=False)``; one written by the CLI holds the YAML
settings and reloads as is)."""


class Text4PointTask(L.LightningModule):
    """Base of the downstream tasks. A subclass calls ``__init__`` first (so the network is built, and its weights
    loaded, before the task's heads), then ``save_hyperparameters()``, and implements ``_losses(batch)`` returning
    named losses, "loss" the total (``add_auxiliary_loss`` adds L_aux to it). Its hyper-parameters must include
    ``aux_loss_weight``, ``aux_temperature``, ``aux_radius_voxels`` and ``ignore_index``, and, for the default
    optimiser, ``lr``, ``momentum``, ``weight_decay`` and ``poly_power``.

    Args:
        class_names: the K classes, in label order (their names make the text prompts).
        network: the language-guided network (``NetworkFactory``), called with the class names and ``out_channels``.
        out_channels: the network's decoder width, decided by the task (K logits, seed features, ...).
        pretrained: a Text4Point pre-training checkpoint or a PointContrast / CSC file loaded into the network
            (``LanguageGuidedNet.load_pretrained``: the task head is re-initialised); None trains from scratch.
    """

    synchronised_children: tuple[str, ...] = ("guided",)
    """Children whose BatchNorm layers are synchronised across DDP processes at ``setup``."""

    def __init__(self, class_names: list[str], network: NetworkFactory, out_channels: int,
                 pretrained: str | None = None):
        super().__init__()
        self.class_names = list(class_names)
        self.guided = network(self.class_names, out_channels)
        if pretrained:
            self.guided.load_pretrained(pretrained)

    def setup(self, stage: str) -> None:
        """Under DDP (CPU or GPU) every BatchNorm of ``synchronised_children`` (sparse and dense) is synchronised
        across processes (``lang3d.training.sync_batchnorm``)."""
        for name in self.synchronised_children:
            setattr(self, name, sync_batchnorm_under_ddp(getattr(self, name), self.trainer))

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def add_auxiliary_loss(self, losses: dict[str, torch.Tensor], out: GuidedOutput, batch: dict,
                           labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """When ``aux_loss_weight`` > 0: ``losses["loss_aux"]`` = L_aux of the encoder voxels with pseudo labels from
        ``labels`` [ΣV] (class per input voxel), and ``losses["loss"]`` += aux_loss_weight · L_aux."""
        hp = self.hparams
        if hp.aux_loss_weight > 0:
            losses["loss_aux"] = self.guided.auxiliary_loss(out, batch["coord"], labels, hp.aux_radius_voxels,
                                                            hp.aux_temperature, hp.ignore_index)
            losses["loss"] = losses["loss"] + hp.aux_loss_weight * losses["loss_aux"]
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Logs every loss as ``train/<name>`` ("loss" on the progress bar) and the TQM's aggregation weights α, β
        (when the TQM is on)."""
        losses = self._losses(batch)
        batch_size = len(batch["names"])
        for key, value in losses.items():
            self.log(f"train/{key}", value, batch_size=batch_size, prog_bar=key == "loss")
        net = self.guided.net
        if net.use_tqm:
            self.log("tqm/alpha", net.alpha, batch_size=batch_size)
            self.log("tqm/beta", net.beta, batch_size=batch_size)
        return losses["loss"]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        """SGD (``lr``, ``momentum``, ``weight_decay``) with a polynomial decay (``poly_power``) to 0 over the run's
        steps, stepped every step (the S3DIS recipe, appendix B.1)."""
        hp = self.hparams
        optimizer = torch.optim.SGD(self.trainable_parameters(), lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(1.0 - step / total, 0.0) ** hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
