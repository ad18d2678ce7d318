"""Text4Point pre-training (Sec. 3.3, 4.1): align a sparse-voxel SR-UNet34 with a frozen CLIP image encoder by
pixel-voxel contrastive learning on RGB-D 2D-3D pairs, with the Text Querying Module in between."""
from __future__ import annotations

from collections import Counter

import lightning as L
import MinkowskiEngine as ME
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from lang3d.data.sampling import seed_from_names
from lang3d.geometry.sparse_index import coarsen, lookup_rows
from lang3d.models.clip import CLIPDenseImageEncoder, CLIPTextEncoder, load_clip
from lang3d.models.losses import masked_l1, pixel_voxel_contrastive_loss
from lang3d.models.prompt_learner import build_class_embeddings
from lang3d.training.empty_steps import EmptyStepsMixin
from lang3d.training.sample_means import SampleMeans
from lang3d.training.sync_batchnorm import rows_left_out, sync_batchnorm_under_ddp
from lang3d.visual.tensorboard import log_image, overlay_points
from text4point.image_branch import ImageDecoder, pixel_cells, upsample_to_pixels
from text4point.network import ENCODER_STRIDE, Text4PointNet

VALUES = ("loss", "loss_enc", "loss_dec", "loss_depth", "pairs", "match_acc_enc", "match_chance_enc")
"""What ``Text4PointPretraining._losses`` returns: the losses, the pixel-voxel pairs of the batch and, when the batch
has encoder-level pairs, the encoder-level match accuracy and its chance level."""


class Text4PointPretraining(EmptyStepsMixin, L.LightningModule):
    """Pre-training module. Batches come from ``ScanNetPairsDataModule`` (see ``collate_point_samples``).

    Args:
        clip_model / clip_pretrained: open_clip model name and weights (tag such as "openai", a local file, or
            None for random init). The image tower must be a ResNet CLIP (attention pooling).
        class_names / prompt_template: the K texts "point cloud of [cls]." (Sec. 3.3); the class names come from
            the config (``pretrain_scannet.yaml``: ScanNet's 20 benchmark classes).
        text_mode: "fixed" (frozen CLIP text embeddings of the prompts) or "random" (learnable random vectors
            instead of text: the control of the paper's Table 6).
        feature_dim: channels C of the decoder features z2D, z3D.
        temperature: τ of Eq. (14) (paper: 0.4).
        num_pairs: positive pairs sampled per batch at each level (memory stays bounded).
        depth_loss_weight: weight of the 2D decoder's auxiliary depth loss (appendix C); 0 disables it.
        lr, momentum, weight_decay: SGD (paper: lr 0.1, momentum SGD).
        lr_decay, lr_decay_steps: exponential schedule lr·decay^(step / lr_decay_steps) (PointContrast's recipe, which
            the paper follows: 0.99 every 1,000 iterations).
        use_tqm: the Text Querying Module on/off.
        width: the SR-UNet34's channel scale (1.0: the published network; the paper's).
        seed: seeds the per-step pair sampling (so a resumed run samples the same pairs).
        image_log_interval: steps between TensorBoard overlays of matched voxels (0: never).
    """

    def __init__(self, clip_model: str = "RN50", clip_pretrained: str | None = "openai",
                 class_names: list[str] | None = None, prompt_template: str = "point cloud of {}.",
                 text_mode: str = "fixed",
                 in_channels: int = 3, feature_dim: int = 128, temperature: float = 0.4, num_pairs: int = 4096,
                 depth_loss_weight: float = 1.0, decoder_width: int = 256, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 1e-4, lr_decay: float = 0.99, lr_decay_steps: int = 1000,
                 use_tqm: bool = True, tqm_heads: int = 1, stem_kernel_size: int = 3, bn_momentum: float = 0.05,
                 width: float = 1.0, seed: int = 0, image_log_interval: int = 200):
        super().__init__()
        self.save_hyperparameters()
        if not class_names:
            raise ValueError("Text4PointPretraining needs class_names, the K classes of the prompts "
                             "(configs/text4point/pretrain_scannet.yaml lists ScanNet's 20 benchmark classes)")
        class_names = list(class_names)
        if text_mode not in ("fixed", "random"):
            raise ValueError(f"text_mode must be 'fixed' or 'random' for pre-training, got {text_mode!r}")
        clip, tokenizer = load_clip(clip_model, clip_pretrained)
        self.image_encoder = CLIPDenseImageEncoder(clip)
        options = {"template": prompt_template} if text_mode == "fixed" else {}
        self.text = build_class_embeddings(text_mode, CLIPTextEncoder(clip, tokenizer), class_names, **options)
        d = self.image_encoder.embed_dim
        self.image_decoder = ImageDecoder(d, feature_dim, decoder_width)
        self.net = Text4PointNet(in_channels, feature_dim, d, use_tqm=use_tqm, tqm_heads=tqm_heads,
                                 stem_kernel_size=stem_kernel_size, bn_momentum=bn_momentum, width=width)
        self._skipped: Counter = Counter()
        self.val_means = SampleMeans(VALUES)   # per-frame means over every rank's frames

    # ---------------------------------------------------------------- forward and losses
    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"].permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
        x = ME.SparseTensor(features=batch["color"] - 0.5, coordinates=batch["coord"], device=self.device)
        rows_in = lookup_rows(x.C, batch["coord"].to(self.device))  # dataset voxel -> row of x (ME may reorder)
        h2d = self.image_encoder(images)["dense"]
        z2d, depth = self.image_decoder(h2d)
        feats = self.net(x, self.text())

        pairs = batch["pairs"].to(self.device)  # [M, 4] (batch, voxel, row, col)
        fine = rows_in[pairs[:, 1]]
        generator = torch.Generator().manual_seed(self._pair_seed(batch))

        # encoder level: coarse voxel (stride 16) ↔ CLIP feature cell
        coarse = lookup_rows(feats.h3d.C, coarsen(x.C[fine], ENCODER_STRIDE))
        if (coarse < 0).any():
            raise RuntimeError("a voxel has no stride-16 parent in the encoder output: coordinate plan mismatch")
        enc_stride, dec_stride = self.feature_strides
        enc = _cells(pairs[:, 0], coarse, pairs[:, 2], pairs[:, 3], enc_stride, h2d.shape[-2:])
        enc = sample_one_to_one(enc, self.hparams.num_pairs, generator)
        loss_enc = pixel_voxel_contrastive_loss(h2d[enc[:, 0], :, enc[:, 2], enc[:, 3]].float(),
                                                feats.h3d_expanded[enc[:, 1]], self.hparams.temperature)
        # decoder level: voxel (stride 1) ↔ 2D decoder cell
        dec = _cells(pairs[:, 0], fine, pairs[:, 2], pairs[:, 3], dec_stride, z2d.shape[-2:])
        dec = sample_one_to_one(dec, self.hparams.num_pairs, generator)
        loss_dec = pixel_voxel_contrastive_loss(z2d[dec[:, 0], :, dec[:, 2], dec[:, 3]], feats.z3d.F[dec[:, 1]],
                                                self.hparams.temperature)
        depth_px = upsample_to_pixels(depth, dec_stride)[:, 0, :images.shape[-2], :images.shape[-1]]
        target = batch["depth"][:, :depth_px.shape[1], :depth_px.shape[2]]  # rows / columns the map covers
        loss_depth = masked_l1(depth_px, target.to(depth_px))
        loss = loss_enc + loss_dec + self.hparams.depth_loss_weight * loss_depth
        out = {"loss": loss, "loss_enc": loss_enc, "loss_dec": loss_dec, "loss_depth": loss_depth,
               "pairs": torch.tensor(float(len(pairs)))}
        if len(enc):  # no accuracy without encoder-level pairs (all pairs in rows the CLIP map does not cover)
            with torch.no_grad():
                out["match_acc_enc"] = _match_accuracy(h2d[enc[:, 0], :, enc[:, 2], enc[:, 3]].float(),
                                                       feats.h3d_expanded[enc[:, 1]])
                out["match_chance_enc"] = torch.tensor(1.0 / len(enc))  # the accuracy of a random match
        return out

    @property
    def feature_strides(self) -> tuple[int, int]:
        """Pixel strides of the CLIP map h2D and of the decoder maps z2D and depth (``image_branch.pixel_cells``)."""
        stride = self.image_encoder.output_stride
        return stride, stride // self.image_decoder.upsampling

    def _pair_seed(self, batch: dict) -> int:
        """Seed of the pair sampling: per (seed, step, rank) in training; in evaluation per (seed, frames of the
        batch), so a checkpoint scores the same on any number of processes (batch size 1: the same batches)."""
        if self.training:
            return hash((self.hparams.seed, self.global_step, self.global_rank)) % 2**63
        return seed_from_names([str(self.hparams.seed), *batch["names"]])

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        """Under DDP (CPU or GPU) every BatchNorm of the trainable networks (sparse and dense) is synchronised
        across processes (``lang3d.training.sync_batchnorm``)."""
        self.net = sync_batchnorm_under_ddp(self.net, self.trainer)
        self.image_decoder = sync_batchnorm_under_ddp(self.image_decoder, self.trainer)

    def training_step(self, batch: dict, batch_idx: int):
        n_skipped = sum(batch["skipped"].values())
        self._skipped.update(batch["skipped"])
        self.log("data/skipped_frames", float(n_skipped), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        if self.samples_on_all_ranks(batch) == 0:
            return self.zero_weight_loss()  # every rank's frames were skipped: no update (lang3d.training.empty_steps)
        if self.samples_in_batch(batch) == 0:
            return self._placeholder_loss()  # this rank's frames were all skipped, other ranks' were not
        out = self._losses(batch)
        bs = len(batch["names"])
        for key, value in out.items():
            self.log(f"train/{key}", value, batch_size=bs, prog_bar=key in ("loss", "loss_enc"))
        if self.hparams.use_tqm:
            self.log("tqm/alpha", self.net.alpha, batch_size=bs)
            self.log("tqm/beta", self.net.beta, batch_size=bs)
        interval = self.hparams.image_log_interval
        if interval and self.global_step % interval == 0:
            self._log_matches(batch)
        return out["loss"]

    def samples_in_batch(self, batch: dict) -> int:
        return len(batch["pairs"])   # pixel-voxel pairs: none when every frame of the batch was skipped

    def _placeholder_loss(self) -> torch.Tensor:
        """0 × the outputs of every trainable network (2D decoder; SR-UNet with the Text Querying Module) on a
        placeholder (one blank CLIP feature cell, one voxel) whose rows the synchronised BatchNorm leaves out: a
        rank without frames still joins the other ranks' BatchNorm all-reduces and DDP's gradient all-reduce,
        adding nothing to their statistics and zero to their gradients."""
        with rows_left_out(self):
            z2d, depth = self.image_decoder(torch.zeros(1, self.image_encoder.embed_dim, 1, 1, device=self.device))
            x = ME.SparseTensor(features=torch.zeros(1, self.hparams.in_channels, device=self.device),
                                coordinates=torch.zeros(1, 4, dtype=torch.int32), device=self.device)
            feats = self.net(x, self.text())
        return 0.0 * sum(t.sum() for t in (z2d, depth, feats.h3d_expanded, feats.z3d.F))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if len(batch["pairs"]) == 0:   # an empty shard's batch, or every frame skipped: nothing to add
            return
        self.val_means.update(self._losses(batch), len(batch["names"]))

    def on_validation_epoch_end(self) -> None:
        self.val_means.log(self, "val/")   # a collective: every rank gets here

    def on_train_epoch_end(self) -> None:
        if self._skipped:
            rank_zero_info(f"epoch {self.current_epoch}: skipped frames by reason {dict(self._skipped)}")
        self._skipped.clear()

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: hp.lr_decay ** (step / hp.lr_decay_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _log_matches(self, batch: dict) -> None:
        """The first frame of the batch with its matched voxels drawn at their pixels, coloured by depth."""
        pairs = batch["pairs"]
        first = pairs[pairs[:, 0] == 0]
        image = batch["image"][0].cpu().numpy()
        rows, cols = first[:, 2].cpu().numpy(), first[:, 3].cpu().numpy()
        depth = batch["depth"][0].cpu().numpy()[rows, cols]
        log_image(self.logger, "pairs/matched_voxels", overlay_points(image, rows, cols, depth), self.global_step)


def _cells(b: torch.Tensor, voxel: torch.Tensor, row: torch.Tensor, col: torch.Tensor, stride: int,
           feature_hw) -> torch.Tensor:
    """Pairs [M', 4] (batch, voxel row, feature row, feature col) at a stride-``stride`` feature map of size
    feature_hw, for the M' of the M pixel-voxel pairs whose pixel the map covers (``pixel_cells``)."""
    cell_rows, cell_cols, covered = pixel_cells(row, col, stride, feature_hw)
    return torch.stack([b, voxel, cell_rows, cell_cols], 1)[covered]


def sample_one_to_one(pairs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """A random subset of at most n pairs [M, 4] (batch, voxel, row, col) in which every pixel cell and every
    voxel occurs at most once, so that all other pairs of S are true negatives in Eq. (14)."""
    order = torch.randperm(len(pairs), generator=generator)
    shuffled = pairs.cpu()[order].numpy()
    _, first_pixel = np.unique(shuffled[:, [0, 2, 3]], axis=0, return_index=True)
    kept = shuffled[np.sort(first_pixel)]
    _, first_voxel = np.unique(kept[:, 1], return_index=True)
    kept = kept[np.sort(first_voxel)][:n]
    return torch.from_numpy(kept).to(pairs.device)


def _match_accuracy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels whose most similar voxel (cosine) among the sampled pairs is their own."""
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    return (sim.argmax(1) == torch.arange(len(sim), device=sim.device)).float().mean()
