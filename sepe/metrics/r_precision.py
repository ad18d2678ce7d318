"""CLIP R-precision of renders of generated clouds against their captions, as a torchmetrics Metric."""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from lang3d.data.point_ops import normalize_unit_sphere
from lang3d.training.checkpoint import FrozenPretrained
from lang3d.visual.render import render_views
from sepe.geometric_losses import _check_cloud


def r_precision_hits(image_emb: torch.Tensor, text_emb: torch.Tensor, num_distractors: int, top_k: int = 1,
                     seed: int = 0) -> torch.Tensor:
    """For object i: its image embedding [N,d] scored (cosine) against its own caption embedding [N,d] and
    ``num_distractors`` captions of other objects (drawn without replacement with a seeded generator) ->
    hits [N] bool: fewer than ``top_k`` distractors score strictly higher than the true caption."""
    n = image_emb.shape[0]
    if text_emb.shape != image_emb.shape or not 0 <= num_distractors < n:
        raise ValueError(f"R-precision needs image and text embeddings of one shape [N,d] and 0 <= distractors < "
                         f"N; got {tuple(image_emb.shape)}, {tuple(text_emb.shape)}, {num_distractors} distractors")
    img, txt = F.normalize(image_emb.double(), dim=-1), F.normalize(text_emb.double(), dim=-1)
    sim = img @ txt.T                                                           # [N,N]
    generator = torch.Generator().manual_seed(seed)
    others = torch.stack([torch.randperm(n - 1, generator=generator)[:num_distractors] for _ in range(n)])
    others = (others + (others >= torch.arange(n)[:, None])).to(sim.device)     # skip index i itself
    true = sim.diagonal()
    beaten = (sim.gather(1, others) > true[:, None]).sum(1)
    return beaten < top_k


def sample_key(name: str) -> int:
    """A 63-bit integer key of a sample name (sha256), for ordering samples gathered from DDP ranks."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") & (2 ** 63 - 1)


class CLIPRPrecision(Metric):
    """CLIP R-precision: each generated cloud is normalised into the unit sphere and rendered from ``azimuths``
    (``lang3d.visual.render``, at CLIP's input size); the image embedding is the normalised mean of the views'
    normalised CLIP embeddings. Score: fraction of clouds whose own caption ranks in the ``top_k`` among itself
    and ``num_distractors`` captions of other clouds of the evaluated set (``r_precision_hits``).

    Distractors follow the samples, not the processes: ``compute`` orders the gathered samples by the key of their
    name (``sample_key``) before drawing, so the score is the same for any number of DDP processes and any batch
    order.

    ``clip_model``, ``tokenizer``: as ``lang3d.models.clip.load_clip`` returns (paper: ViT-B/32 and ViT-L/14). The
    model is held frozen (``FrozenPretrained``: moves with the metric, never in a checkpoint) and is ``clip``."""

    higher_is_better = True

    def __init__(self, clip_model: torch.nn.Module, tokenizer, num_distractors: int = 31, top_k: int = 1,
                 azimuths: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0), elevation: float = 20.0,
                 distance: float = 2.8, fov: float = 45.0, radius: int = 1, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.frozen = FrozenPretrained(clip=clip_model)
        self.tokenizer = tokenizer
        self.num_distractors, self.top_k, self.seed = num_distractors, top_k, seed
        self.render_kwargs = dict(azimuths=azimuths, elevation=elevation, distance=distance, fov=fov, radius=radius)
        cfg = clip_model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean, self.std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        self.add_state("image_emb", [], dist_reduce_fx="cat")
        self.add_state("text_emb", [], dist_reduce_fx="cat")
        self.add_state("keys", [], dist_reduce_fx="cat")

    @property
    def clip(self) -> torch.nn.Module:
        """The frozen CLIP model."""
        return self.frozen.clip

    @torch.no_grad()
    def embed_clouds(self, clouds: torch.Tensor) -> torch.Tensor:
        """clouds [B,6,N] -> normalised mean-of-views CLIP image embeddings [B,d] float32."""
        _check_cloud("CLIPRPrecision", clouds, "clouds")
        xyz = normalize_unit_sphere(clouds[:, :3].transpose(1, 2).float())
        rgb = (clouds[:, 3:].transpose(1, 2).float() / 255.0).clamp(0, 1)
        views = render_views(xyz, rgb, image_size=self.image_size, **self.render_kwargs)   # [B,V,3,S,S]
        b, v = views.shape[:2]
        pixels = (views.flatten(0, 1) - self.mean.to(views.device)) / self.std.to(views.device)
        device = next(self.clip.parameters()).device      # the metric's, normally already the clouds'
        emb = F.normalize(self.clip.encode_image(pixels.to(device)).float(), dim=-1).view(b, v, -1).mean(1)
        return F.normalize(emb, dim=-1).to(clouds.device)

    @torch.no_grad()
    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        """captions (B strings) -> normalised CLIP text embeddings [B,d] float32."""
        device = next(self.clip.parameters()).device
        return F.normalize(self.clip.encode_text(self.tokenizer(list(captions)).to(device)).float(), dim=-1)

    def update(self, clouds: torch.Tensor, captions: list[str], names: list[str]) -> None:
        """clouds [B,6,N] generated for captions (B strings) of the samples ``names`` (B unique ids, e.g. uids)."""
        if isinstance(captions, str) or len(captions) != clouds.shape[0]:
            raise ValueError(f"CLIPRPrecision: {clouds.shape[0]} clouds need as many captions, got {captions!r}")
        if isinstance(names, str) or len(names) != clouds.shape[0]:
            raise ValueError(f"CLIPRPrecision: {clouds.shape[0]} clouds need as many sample names, got {names!r}")
        self.image_emb.append(self.embed_clouds(clouds))
        self.text_emb.append(self.embed_captions(captions).to(clouds.device))
        self.keys.append(torch.tensor([sample_key(n) for n in names], dtype=torch.int64, device=clouds.device))

    def compute(self) -> torch.Tensor:
        image, text, keys = (torch.cat(x) if isinstance(x, list) else x
                             for x in (self.image_emb, self.text_emb, self.keys))
        order = torch.argsort(keys, stable=True)
        return r_precision_hits(image[order], text[order], self.num_distractors, self.top_k,
                                self.seed).float().mean()
