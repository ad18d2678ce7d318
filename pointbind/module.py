"""Point-Bind alignment: a 3D encoder and projection trained into a frozen joint space (ImageBind's towers or an
open_clip model) on (point cloud, caption, rendered view) triplets; zero-shot classification and retrieval in that
space."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

from datamodules.modelnet40.prompts import prompt_names, templates
from lang3d.metrics.retrieval import EmbeddingBank, retrieval_scores
from lang3d.training.attached import attached_trainer
from lang3d.training.embedding_cache import EmbeddingCache, content_key, model_fingerprint
from lang3d.training.empty_steps import EmptyStepsMixin
from lang3d.training.schedules import warmup_cosine
from lang3d.training.sync_batchnorm import rows_left_out, sync_batchnorm_under_ddp
from lang3d.visual.tensorboard import confusion_image, log_image
from pointbind.arithmetic import composed_retrieval, nearest
from pointbind.encoders import build_encoder
from pointbind.head import LogitScale, ProjectionHead
from pointbind.joint_space import load_joint_space
from pointbind.loss import alignment_loss
from pointbind.pretrained import load_encoder, load_release
from pointbind.zeroshot import class_text_embeddings, topk_accuracy, zero_shot_logits

STAGES = ("val", "test")
LOSS_TERMS = ("loss", "loss_text", "loss_image")


class PointBindAlignment(EmptyStepsMixin, L.LightningModule):
    """Batches: alignment batches hold ``points`` [B,N,3], ``caption`` (B strings) and, when the image term is
    on, ``image`` uint8 [B,H,W,3] (``Cap3DDataModule``); zero-shot batches hold ``points`` and ``label`` [B]
    (``ModelNet40DataModule``). Validation and test take either kind (see ``PointBindDataModule``), and sound
    batches, ``audio`` [B,3,1,128,204] with the ``label`` of the shape class they map to: audio -> 3D retrieval
    against the zero-shot shapes (``AudioTo3DDataModule``; logged as ``*_retrieval_classes/audio_to_3d/*``).

    Args:
        encoder / encoder_options: "i2pmae" or "pointbert" and its constructor arguments (``pointbind.encoders``).
        clip_model / clip_pretrained: the frozen joint space (``pointbind.joint_space``): an open_clip model and its
            weights (ViT-L-14 / openai: 768-d), or ImageBind's towers (``imagebind_huge``, 1024-d) and their weights
            (tag ``imagebind_huge``, or a Point-Bind release's tag / path: its ``bind.*`` tensors; None: random).
        modalities: the joint-space towers to load (text, image, audio; audio: ImageBind only). ImageBind reads
            only these from its file; a zero-shot test needs text alone.
        projection_hidden / projection_dropout: the projection head (``ProjectionHead``).
        image_loss_weight: weight of the point<->image InfoNCE term (0: text only, no images needed).
        zeroshot_class_names: class names for prompts (None: the datamodule's ``prompt_names``, else ModelNet40's);
            zeroshot_templates: prompt templates (None: ULIP / Point-Bind's 64 ModelNet40 templates).
        embedding_cache: folder of the on-disk cache of CLIP text / image embeddings (None: no cache); one
            HDF5 file per DDP rank.
        lr, weight_decay, betas: AdamW (ULIP: 3e-3, 0.1, (0.9, 0.98)); no decay on biases, norms and the logit
            scale. warmup_steps linear from 0, then cosine down to min_lr.
        retrieval_ks: the K of recall@K. log_embeddings: shapes whose embeddings go to TensorBoard's projector
            at the end of each zero-shot evaluation (0: none).
        projection_norm_eps: eps of the projection's LayerNorm (1e-6: ImageBind's ``modality_head_point``).
        pretrained: a released Point-Bind model (path or tag ``pointbind_i2pmae`` / ``pointbind_pointbert``; the
            official file or its ``lang3d convert`` output): encoder, projection and logit scale, loaded strictly.
            It lives in ImageBind's 1024-d space (configs/pointbind_imagebind.yaml).
        encoder_init: a pre-trained 3D encoder to start from (path or tag ``i2pmae_pretrain`` /
            ``pointbert_pretrain``: I2P-MAE's or Point-BERT's pre-training checkpoint, or a converted file).
            None (both): random initialisation. Both are loaded when a run starts (``load_published``), unless it
            restores a checkpoint; see ``pointbind.pretrained``.
    """

    def __init__(self, encoder: str = "i2pmae", encoder_options: dict | None = None, clip_model: str = "ViT-L-14",
                 clip_pretrained: str | None = "openai", projection_hidden: int = 512, projection_dropout: float = 0.5,
                 image_loss_weight: float = 1.0, zeroshot_class_names: list[str] | None = None,
                 zeroshot_templates: list[str] | None = None, embedding_cache: str | None = None, lr: float = 3e-3,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 1000,
                 min_lr: float = 1e-5, retrieval_ks: tuple[int, ...] = (1, 5, 10), log_embeddings: int = 1000,
                 projection_norm_eps: float = 1e-6, pretrained: str | None = None, encoder_init: str | None = None,
                 modalities: tuple[str, ...] = ("text", "image")):
        super().__init__()
        self.save_hyperparameters()
        towers = load_joint_space(clip_model, clip_pretrained, modalities)  # first: random towers depend on the seed
        self.encoder = build_encoder(encoder, **(encoder_options or {}))
        self.text_encoder, self.image_encoder, self.audio_encoder = (towers.get(m) for m in ("text", "image", "audio"))
        embed_dim = next(iter(towers.values())).embed_dim
        self.head = ProjectionHead(self.encoder.out_dim, embed_dim, projection_hidden, projection_dropout,
                                   projection_norm_eps)
        self.logit_scale = LogitScale()
        if pretrained and encoder_init:
            raise ValueError("give model.pretrained (a whole released Point-Bind model) or model.encoder_init (a "
                             "pre-trained 3D encoder), not both")
        self._published_loaded = False
        self.banks = nn.ModuleDict()
        for stage in STAGES:
            self.banks[f"{stage}_zeroshot"] = EmbeddingBank(("point", "label"))
            self.banks[f"{stage}_text"] = EmbeddingBank(("point", "text"))
            self.banks[f"{stage}_image"] = EmbeddingBank(("point", "image"))
            self.banks[f"{stage}_loss"] = EmbeddingBank(LOSS_TERMS[:3 if image_loss_weight > 0 else 2])
            self.banks[f"{stage}_audio"] = EmbeddingBank(("audio", "label"))
        self._caches: dict[str, EmbeddingCache] = {}
        self._classes: tuple[list[str], torch.Tensor] | None = None
        self._gallery: torch.Tensor | None = None

    def load_published(self) -> None:
        """Load ``pretrained`` (encoder, projection, logit scale) or ``encoder_init`` (encoder), once. A run does it
        as it starts (``on_*_start``) unless it restored a checkpoint (``--ckpt_path``), whose weights win."""
        hp = self.hparams
        if self._published_loaded or not (hp.pretrained or hp.encoder_init):
            return
        if hp.pretrained:
            conversion, report = load_release({"encoder": self.encoder, "head": self.head,
                                               "logit_scale": self.logit_scale}, hp.encoder, hp.pretrained)
        else:
            conversion, report = load_encoder(self.encoder, hp.encoder, hp.encoder_init)
        self._published_loaded = True
        rank_zero_info(f"{conversion.summary()}\n{report.summary()}")

    # ---------------------------------------------------------------- embeddings
    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points [B,N,3] (unit sphere) -> unit-norm joint-space embeddings [B,D]."""
        return self.head(self.encoder(points))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """texts -> unit-norm joint-space text embeddings [n,D] on this module's device (through the disk cache)."""
        return self._embed("text", list(texts), [content_key(t) for t in texts])

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] -> unit-norm joint-space image embeddings [B,D] (through the disk cache)."""
        keys = [content_key(image) for image in images.cpu().numpy()]
        return self._embed("image", images, keys)

    def embed_audio(self, clips: torch.Tensor) -> torch.Tensor:
        """Audio clips [B,S,1,128,204] (``lang3d.models.imagebind.audio``) -> unit-norm joint-space audio embeddings
        [B,D] (through the disk cache)."""
        keys = [content_key(sound) for sound in clips.cpu().numpy()]
        return self._embed("audio", clips, keys)

    def _tower(self, kind: str) -> nn.Module:
        encoder = getattr(self, f"{kind}_encoder")
        if encoder is None:
            raise ValueError(f"this model has no {kind} tower: add '{kind}' to model.modalities "
                             f"(now {list(self.hparams.modalities)})")
        return encoder

    def _embed(self, kind: str, items, keys: list[str]) -> torch.Tensor:
        encoder, cache = self._tower(kind), self._cache(kind)
        if cache is None:
            out = encoder(items)
        else:
            def compute(index: list[int]):
                return encoder([items[i] for i in index] if kind == "text" else items[index])
            out = cache.get_or_compute(keys, compute)
        return F.normalize(out.float(), dim=-1).to(self.device)

    def _cache(self, kind: str) -> EmbeddingCache | None:
        folder = self.hparams.embedding_cache
        if not folder:
            return None
        if kind not in self._caches:
            trainer = attached_trainer(self)
            world, rank = (trainer.world_size, self.global_rank) if trainer is not None else (1, 0)
            path = Path(folder).expanduser() / f"clip_embeddings{'' if world == 1 else f'.rank{rank}'}.h5"
            hp, encoder = self.hparams, self._tower(kind)
            model = f"{hp.clip_model}|{hp.clip_pretrained}|{model_fingerprint(encoder.tower)}"   # the weights used
            what = f"image|{encoder.preprocessing}" if kind == "image" else kind
            self._caches[kind] = EmbeddingCache(path, f"{model}|{what}")
        return self._caches[kind]

    def class_embeddings(self) -> tuple[list[str], torch.Tensor]:
        """(class names, unit-norm class text embeddings [C,D]): templates averaged (``class_text_embeddings``)."""
        names = self.hparams.zeroshot_class_names
        if names is None and (trainer := attached_trainer(self)) is not None:
            names = getattr(trainer.datamodule, "prompt_names", None)
        names = list(names or prompt_names())
        if self._classes is None or self._classes[0] != names:
            self._classes = (names, class_text_embeddings(self.embed_texts, names,
                                                          self.hparams.zeroshot_templates or templates()))
        return self._classes[0], self._classes[1].to(self.device)

    # ---------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Under DDP (CPU or GPU) the 3D encoder's BatchNorm is synchronised across processes
        (``lang3d.training.sync_batchnorm``)."""
        self.encoder = sync_batchnorm_under_ddp(self.encoder, self.trainer)

    # Published weights are loaded when a run starts, after a checkpoint would have been restored: a restored
    # checkpoint's weights replace them, so then the published file is not read (nor needed).
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._published_loaded = True

    def on_fit_start(self) -> None:
        self.load_published()

    def on_validation_start(self) -> None:
        self.load_published()

    def on_test_start(self) -> None:
        self.load_published()

    def on_predict_start(self) -> None:
        self.load_published()

    # ---------------------------------------------------------------- embedding arithmetic (predict)
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One query of ``ArithmeticQueriesDataModule``: its embedding (a point cloud, text, image or sound; or a
        point cloud's composed with one of the others with the batch's ``weights``) ranks the batch's gallery
        (embedded once per predict epoch); returns the query with its ``k`` nearest items (``pointbind.writers``
        writes them)."""
        gallery = batch["gallery"]
        if self._gallery is None:
            parts = []
            if gallery["texts"]:
                parts.append(self.embed_texts(gallery["texts"]))
            if gallery["images"] is not None:
                parts.append(self.embed_images(gallery["images"].to(self.device)))
            if gallery["points"] is not None:
                parts.append(torch.cat([self(chunk.to(self.device)) for chunk in gallery["points"].split(16)]))
            self._gallery = torch.cat(parts)
        query = batch["query"]
        embeddings = [self(batch["points"].to(self.device))] if "points" in batch else []
        if "text" in query:
            embeddings.append(self.embed_texts([query["text"]]))
        elif "image" in batch:
            embeddings.append(self.embed_images(batch["image"].to(self.device)))
        elif "audio" in batch:
            embeddings.append(self.embed_audio(batch["audio"]))
        if len(embeddings) == 2:
            scores, index = composed_retrieval(*embeddings, self._gallery, batch["k"], batch["weights"])
        else:
            scores, index = nearest(embeddings[0], self._gallery, batch["k"])
        items, kinds = gallery["items"], gallery["kinds"]
        return {**query, "nearest": [{"item": items[i], "kind": kinds[i], "score": round(float(s), 6)}
                                     for s, i in zip(scores[0].tolist(), index[0].tolist())]}

    def on_predict_epoch_start(self) -> None:
        self._gallery = None

    def _alignment(self, batch: dict) -> dict[str, torch.Tensor]:
        if "caption" not in batch:
            raise KeyError(f"alignment batches need 'points' and 'caption', got keys {sorted(batch)}")
        weight = self.hparams.image_loss_weight
        if weight > 0 and "image" not in batch:
            raise KeyError("image_loss_weight > 0 needs an 'image' per sample (load_images on in the datamodule), "
                           f"got keys {sorted(batch)}")
        point = self(batch["points"])
        text = self.embed_texts(batch["caption"])
        image = self.embed_images(batch["image"]) if weight > 0 else None
        out = alignment_loss(point, text, image, self.logit_scale(), weight, gather=self.training)
        return {**out, "point": point.detach(), "text": text, "image": image}

    def training_step(self, batch: dict, batch_idx: int):
        skipped = float(sum(batch["skipped"].values())) if "skipped" in batch else 0.0
        self.log("data/skipped_samples", skipped, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        if self.samples_on_all_ranks(batch) == 0:
            return self.zero_weight_loss()  # every rank's samples were skipped: no update (lang3d.training.empty_steps)
        bs = self.samples_in_batch(batch)
        if bs == 0:
            return self._placeholder_loss()   # this rank's samples were all skipped, other ranks' were not
        out = self._alignment(batch)
        for key in ("loss", "loss_text", "loss_image", "acc_text", "acc_image"):
            if key in out:
                self.log(f"train/{key}", out[key], batch_size=bs, prog_bar=key == "loss")
        self.log("train/logit_scale", self.logit_scale(), batch_size=bs)
        return out["loss"]

    def _placeholder_loss(self) -> torch.Tensor:
        """The loss of no rows (0, with zero gradients) that still runs every collective of the other ranks' step:
        the encoder's synchronised BatchNorm, on a placeholder cloud left out of its statistics (the encoder's
        grouping takes no empty batch), the loss's gathers, then DDP's gradient all-reduce."""
        placeholder = torch.zeros(1, _fewest_points(self.encoder), 3, device=self.device)
        with rows_left_out(self.encoder):
            point = self(placeholder)[:0]
        no_rows = torch.zeros_like(point)
        weight = self.hparams.image_loss_weight
        return alignment_loss(point, no_rows, no_rows if weight > 0 else None, self.logit_scale(), weight)["loss"]

    def samples_in_batch(self, batch: dict) -> int:
        return len(batch["points"]) if "points" in batch else 0   # a batch of skipped samples holds no points

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.logit_scale.clamp_()
        super().on_train_batch_end(outputs, batch, batch_idx)

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or name.startswith("logit_scale.") else decay).append(p)
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        factor = warmup_cosine(max(min(hp.warmup_steps, total - 1), 0), total, hp.min_lr / hp.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, stage: str, batch: dict) -> None:
        if "audio" in batch:   # sound queries of audio -> 3D retrieval (AudioTo3DDataModule)
            self.banks[f"{stage}_audio"].update(audio=self.embed_audio(batch["audio"]), label=batch["label"])
            return
        if "points" not in batch:
            return
        bs = len(batch["points"])
        if "label" in batch:
            self.banks[f"{stage}_zeroshot"].update(point=self(batch["points"]), label=batch["label"])
            return
        out = self._alignment(batch)
        losses = self.banks[f"{stage}_loss"]   # per sample its batch's loss: the mean weights batches by size
        losses.update(**{key: out[key].detach().expand(bs) for key in losses.names})
        self.banks[f"{stage}_text"].update(point=out["point"], text=out["text"])
        if out["image"] is not None:
            self.banks[f"{stage}_image"].update(point=out["point"], image=out["image"])

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        """Every bank's ``compute`` is a collective: every rank gets here (also one without evaluation samples)
        and computes the same metrics from the same gathered embeddings."""
        ks = tuple(self.hparams.retrieval_ks)
        losses = self.banks[f"{stage}_loss"].compute()
        if losses is not None:
            self.log_dict({f"{stage}/{key}": value.mean() for key, value in losses.items()})
        self.banks[f"{stage}_loss"].reset()
        for other in ("text", "image"):
            bank = self.banks[f"{stage}_{other}"]
            data = bank.compute()
            if data is not None:
                items = torch.arange(len(data["point"]), device=data["point"].device)
                self._log_retrieval(stage, "pairs", f"3d_to_{other}",
                                    retrieval_scores(data["point"], data[other], items, items, ks))
                self._log_retrieval(stage, "pairs", f"{other}_to_3d",
                                    retrieval_scores(data[other], data["point"], items, items, ks))
            bank.reset()
        data, sounds = self.banks[f"{stage}_zeroshot"].compute(), self.banks[f"{stage}_audio"].compute()
        if data is not None:
            self._report_zeroshot(stage, data)
        if sounds is not None:
            if data is None:
                raise ValueError("audio -> 3D retrieval needs labelled shapes to retrieve (AudioTo3DDataModule's "
                                 "gallery); the evaluation data held sounds only")
            self._log_retrieval(stage, "classes", "audio_to_3d", retrieval_scores(
                sounds["audio"], data["point"], sounds["label"].long(), data["label"].long(), ks))
        self.banks[f"{stage}_zeroshot"].reset()
        self.banks[f"{stage}_audio"].reset()

    def _report_zeroshot(self, stage: str, data: dict[str, torch.Tensor]) -> None:
        names, classes = self.class_embeddings()
        points, labels = data["point"], data["label"].long()
        if labels.numel() and int(labels.max()) >= len(names):
            raise ValueError(f"label {int(labels.max())} but only {len(names)} zero-shot class names")
        logits = zero_shot_logits(points, classes)
        acc = topk_accuracy(logits, labels, (1, 5))
        confusion = multiclass_confusion_matrix(logits, labels, num_classes=len(names))   # [true, predicted]
        present = confusion.sum(1) > 0                                                     # classes with shapes
        per_class = confusion.diagonal()[present] / confusion.sum(1)[present]
        self.log_dict({f"{stage}/zeroshot_top1": acc[1], f"{stage}/zeroshot_top5": acc[5],
                       f"{stage}/zeroshot_class_mean": per_class.mean()})
        ks = tuple(self.hparams.retrieval_ks)
        class_ids = torch.arange(len(names), device=labels.device)
        self._log_retrieval(stage, "classes", "3d_to_text", retrieval_scores(points, classes, labels, class_ids, ks))
        self._log_retrieval(stage, "classes", "text_to_3d", retrieval_scores(classes, points, class_ids, labels, ks))
        self._log_retrieval(stage, "classes", "3d_to_3d",
                            retrieval_scores(points, points, labels, labels, ks, exclude_self=True))
        if not self.trainer.sanity_checking:
            log_image(self.logger, f"{stage}/zeroshot_confusion", confusion_image(confusion.cpu().numpy(), names),
                      self.global_step)
            self._log_projector(stage, points, [names[i] for i in labels.tolist()])

    def _log_retrieval(self, stage: str, relevance: str, direction: str, scores: dict[str, torch.Tensor]) -> None:
        """Logs ``<stage>_retrieval_<relevance>/<direction>/<R@k|mAP>``; relevance "pairs" (an item's own
        caption / view) or "classes" (every item of the class)."""
        self.log_dict({f"{stage}_retrieval_{relevance}/{direction}/{k}": v for k, v in scores.items()
                       if k != "queries"})

    @rank_zero_only
    def _log_projector(self, stage: str, points: torch.Tensor, names: list[str]) -> None:
        count = self.hparams.log_embeddings
        if count and isinstance(self.logger, TensorBoardLogger):
            keep = torch.linspace(0, len(points) - 1, min(count, len(points))).long().tolist()
            self.logger.experiment.add_embedding(points[keep].float().cpu(), metadata=[names[i] for i in keep],
                                                 global_step=self.global_step, tag=f"{stage}_point_embeddings")


def _fewest_points(encoder: nn.Module) -> int:
    """The fewest points per cloud the encoder accepts: its first grouping's FPS centres and neighbourhood size
    (``PointBERTEncoder.num_groups`` / ``group_size``; ``I2PMAEEncoder``: the first stage's)."""
    sizes = (encoder.num_groups, getattr(encoder, "group_size", None) or encoder.group_sizes)
    return max(size if isinstance(size, int) else size[0] for size in sizes)
