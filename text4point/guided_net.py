"""The language-guided 3D network of Text4Point's downstream tasks (Sec. 3.4): class text embeddings (CoOp prompts,
fixed prompts or random vectors, through the frozen CLIP text encoder) feed the Text Querying Module of the
pre-trained SR-UNet34, and an auxiliary loss classifies encoder voxels against the same embeddings (Eq. 15-16).

Segmentation, detection and instance segmentation (``text4point.task.Text4PointTask``) are given this module
configured and add their own heads and losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import MinkowskiEngine as ME
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lang3d.convert.pointcontrast import is_res16unet_file, load_res16unet_weights
from lang3d.geometry.sparse_index import lookup_rows
from lang3d.models.clip import CLIPTextEncoder, load_clip
from lang3d.models.prompt_learner import PROMPT_KINDS, build_class_embeddings
from lang3d.training.checkpoint import load_pretrained_weights
from text4point.aux_loss import auxiliary_loss, pseudo_labels
from text4point.network import ENCODER_STRIDE, Text4PointFeatures, Text4PointNet


@dataclass
class GuidedOutput:
    """features: the network's sparse outputs; text: [K, d] class embeddings used by the TQM;
    voxel_features: [ΣV, C] decoder features z3D in the batch's voxel row order."""

    features: Text4PointFeatures
    text: torch.Tensor
    voxel_features: torch.Tensor


class LanguageGuidedNet(nn.Module):
    """Text4PointNet + class text embeddings.

    Args:
        class_names: the K classes (their names make the prompts).
        out_channels: channels of the decoder output z3D (K logits for segmentation, a feature width otherwise).
        clip_model / clip_pretrained: the frozen CLIP whose text encoder embeds the classes; must be the model of
            the pre-training run (its width d sizes the Text Querying Module).
        text_mode: "learned" (CoOp, ``n_ctx`` context vectors), "fixed" (``prompt_template``) or "random"
            (learnable random embeddings: the paper's Table 6 control).
        use_tqm: the Text Querying Module (off: the plain SR-UNet baseline).
        bn_momentum: of the network's BatchNorm layers (``self.bn_momentum``: a task's heads may take it too).
        width: the SR-UNet34's channel scale (1.0: the published network, what pre-trained weights need).

    A task module receives this class configured (``text4point.task.NetworkFactory``: every argument but the
    first two) and calls it with its classes and output width; it loads pre-trained weights with
    ``load_pretrained``.
    """

    def __init__(self, class_names: list[str], out_channels: int, clip_model: str = "RN50",
                 clip_pretrained: str | None = "openai", text_mode: str = "learned", n_ctx: int = 8,
                 prompt_template: str = "point cloud of {}.", use_tqm: bool = True, tqm_heads: int = 1,
                 in_channels: int = 3, stem_kernel_size: int = 3, bn_momentum: float = 0.05, width: float = 1.0):
        super().__init__()
        if text_mode not in PROMPT_KINDS:
            raise ValueError(f"text_mode must be one of {PROMPT_KINDS}, got {text_mode!r}")
        clip, tokenizer = load_clip(clip_model, clip_pretrained)
        text_encoder = CLIPTextEncoder(clip, tokenizer)
        options = {"learned": {"n_ctx": n_ctx}, "fixed": {"template": prompt_template}, "random": {}}[text_mode]
        self.text = build_class_embeddings(text_mode, text_encoder, list(class_names), **options)
        self.bn_momentum = bn_momentum
        self.net = Text4PointNet(in_channels, out_channels, text_encoder.embed_dim, use_tqm=use_tqm,
                                 tqm_heads=tqm_heads, stem_kernel_size=stem_kernel_size, bn_momentum=bn_momentum,
                                 width=width)

    def load_pretrained(self, pretrained: str, reinit_prefixes: tuple[str, ...] = ("backbone.head.",)) -> None:
        """Load a Text4Point pre-training checkpoint's 3D network by name; tensors under ``reinit_prefixes`` whose
        shape differs (the task head) stay as initialised. Or a PointContrast / CSC Res16UNet34C file (path, tag
        such as ``pointcontrast_nce``, or its ``lang3d convert`` output): only the SR-UNet34 is loaded, converted
        from ME 0.4's layout (``lang3d.convert.pointcontrast``)."""
        if is_res16unet_file(pretrained):
            report = load_res16unet_weights(self.net.backbone, pretrained)
            rank_zero_info(f"SR-UNet34 weights from {pretrained} (PointContrast / CSC):\n{report.summary()}")
        else:
            report = load_pretrained_weights(self.net, pretrained, prefix="net.", reinit_prefixes=reinit_prefixes)
            rank_zero_info(f"Text4Point weights from {pretrained}:\n{report.summary()}")

    def forward(self, coord: torch.Tensor, features: torch.Tensor) -> GuidedOutput:
        """coord [ΣV, 4] int32 (batch index, voxel x, y, z); features [ΣV, in_channels] float32."""
        device = next(self.net.parameters()).device
        coord = coord.to(device)
        x = ME.SparseTensor(features=features.to(device), coordinates=coord, device=device)
        text = self.text()
        feats = self.net(x, text)
        return GuidedOutput(feats, text, feats.z3d.F[lookup_rows(x.C, coord)])

    def auxiliary_loss(self, out: GuidedOutput, coord: torch.Tensor, labels: torch.Tensor, radius_voxels: float,
                       temperature: float, ignore_index: int = -1) -> torch.Tensor:
        """Eq. 15-16 on the encoder voxels, with pseudo labels = the mode of ``labels`` [ΣV] (class per input
        voxel, ``ignore_index`` = none) within ``radius_voxels`` (input-voxel units) of each encoder voxel centre."""
        h3d = out.features.h3d
        coord = coord.to(h3d.F.device)
        pseudo = pseudo_labels(h3d.C[:, 1:].float() + ENCODER_STRIDE / 2, h3d.C[:, 0], coord[:, 1:].float() + 0.5,
                               coord[:, 0], labels.to(h3d.F.device), radius_voxels, ignore_index)
        return auxiliary_loss(out.features.h3d_expanded, out.text, pseudo, temperature, ignore_index)
