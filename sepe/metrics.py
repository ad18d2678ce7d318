"""Evaluation of generated clouds as torchmetrics ``Metric``s: Chamfer and EMD to the ground truth, CLIP
R-precision of renders against captions, P-FID and P-IS on a point-cloud network's features and logits.

Clouds are Point-E's ``[B,6,N]``: xyz (data units) then RGB 0..255, as ``sepe.geometric_losses``. Networks
(CLIP, the feature network) are held without registering them as sub-modules, so they never enter a
checkpoint of the module that owns the metric; they are moved to the device of the inputs when used.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

from lang3d.data.point_ops import farthest_point_sample, index_points, normalize_unit_sphere
from lang3d.point_e.eval_pointnet import POINT_E_DEVICE_BATCH_SIZE, features_and_logits
from lang3d.point_e.eval_scores import fid_statistics, frechet_distance, inception_score_splits
from lang3d.render import render_views
from sepe.geometric_losses import _check_cloud, _check_pair, chamfer_distance


def _hold(metric: Metric, name: str, module: torch.nn.Module) -> None:
    object.__setattr__(metric, name, module)   # not a sub-module: no state_dict entries, no .to()


def _on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return module.to(device) if next(module.parameters()).device != device else module


class ChamferDistanceMetric(Metric):
    """Mean over clouds of ``chamfer_distance(pred, target, squared)`` (data units², or units when not squared)."""

    higher_is_better = False

    def __init__(self, squared: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.squared = squared
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred [B,6,N], target [B,6,M]."""
        self.total += chamfer_distance(pred.float(), target.float(), self.squared).double().sum()
        self.count += pred.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


def earth_movers_distance(pred: np.ndarray, target: np.ndarray) -> float:
    """Exact EMD between two equal-size point sets [N,3]: the minimum over one-to-one matchings of the mean
    Euclidean distance of matched points (data units). Hungarian algorithm, O(N³) time, O(N²) memory."""
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"earth_movers_distance needs two [N,3] sets of equal N, got {pred.shape}, {target.shape}")
    cost = np.linalg.norm(pred[:, None].astype(np.float64) - target[None].astype(np.float64), axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


class EarthMoversDistance(Metric):
    """Mean over clouds of the exact EMD (``earth_movers_distance``, data units) between pred and target xyz.
    Clouds with more than ``num_points`` points are first reduced to ``num_points`` by farthest-point sampling
    (the assignment costs O(N³): 1024 points take ~0.1 s); both clouds must then have the same count."""

    higher_is_better = False

    def __init__(self, num_points: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_points = num_points
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def _subsample(self, xyz: torch.Tensor) -> torch.Tensor:
        if xyz.shape[1] <= self.num_points:
            return xyz
        return index_points(xyz, farthest_point_sample(xyz, self.num_points))

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred [B,6,N], target [B,6,M]; after subsampling both must hold the same number of points."""
        _check_pair("EarthMoversDistance", pred, target)
        p = self._subsample(pred[:, :3].transpose(1, 2).float()).cpu().numpy()
        q = self._subsample(target[:, :3].transpose(1, 2).float()).cpu().numpy()
        if p.shape != q.shape:
            raise ValueError(f"EarthMoversDistance: clouds of {p.shape[1]} and {q.shape[1]} points after "
                             f"subsampling to {self.num_points}; exact EMD needs equal counts")
        self.total += sum(earth_movers_distance(a, b) for a, b in zip(p, q))
        self.count += len(p)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


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
    (``lang3d.render``, at CLIP's input size); the image embedding is the normalised mean of the views'
    normalised CLIP embeddings. Score: fraction of clouds whose own caption ranks in the ``top_k`` among itself
    and ``num_distractors`` captions of other clouds of the evaluated set (``r_precision_hits``).

    Distractors follow the samples, not the processes: ``compute`` orders the gathered samples by the key of their
    name (``sample_key``) before drawing, so the score is the same for any number of DDP processes and any batch
    order.

    ``clip_model``, ``tokenizer``: as ``lang3d.clip.load_clip`` returns (paper: ViT-B/32 and ViT-L/14)."""

    higher_is_better = True

    def __init__(self, clip_model: torch.nn.Module, tokenizer, num_distractors: int = 31, top_k: int = 1,
                 azimuths: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0), elevation: float = 20.0,
                 distance: float = 2.8, fov: float = 45.0, radius: int = 1, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        _hold(self, "clip", clip_model)
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

    @torch.no_grad()
    def embed_clouds(self, clouds: torch.Tensor) -> torch.Tensor:
        """clouds [B,6,N] -> normalised mean-of-views CLIP image embeddings [B,d] float32."""
        _check_cloud("CLIPRPrecision", clouds, "clouds")
        xyz = normalize_unit_sphere(clouds[:, :3].transpose(1, 2).float())
        rgb = (clouds[:, 3:].transpose(1, 2).float() / 255.0).clamp(0, 1)
        views = render_views(xyz, rgb, image_size=self.image_size, **self.render_kwargs)   # [B,V,3,S,S]
        b, v = views.shape[:2]
        pixels = (views.flatten(0, 1) - self.mean.to(views.device)) / self.std.to(views.device)
        clip = _on(self.clip, clouds.device)
        emb = F.normalize(clip.encode_image(pixels).float(), dim=-1).view(b, v, -1).mean(1)
        return F.normalize(emb, dim=-1)

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


class _EvalNetworkMetric(Metric):
    """Shared by P-FID and P-IS: runs point-e's evaluation network (``lang3d.point_e.eval_pointnet``) on clouds as
    point-e's feature extractor does, counting the clouds of each stream (the FPS start index of a cloud is its
    position in its batch of ``device_batch_size``). All clouds are brought to ``num_points`` points (a seeded random
    subset of each; a cloud with fewer points is an error), or, with ``num_points`` None, must all have the same
    count: the network's grouping depends on the point density, so both sets must be sampled alike."""

    def __init__(self, network: torch.nn.Module, num_points: int | None = None, seed: int = 0,
                 device_batch_size: int = POINT_E_DEVICE_BATCH_SIZE, **kwargs):
        super().__init__(**kwargs)
        _hold(self, "network", network)
        self.num_points, self.seed, self.device_batch_size = num_points, seed, device_batch_size
        self._points_seen: int | None = None

    def reset(self) -> None:
        super().reset()
        self._points_seen = None

    def _features_and_logits(self, clouds: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        if clouds.ndim == 3 and clouds.shape[1] == 6:
            xyz = clouds[:, :3].transpose(1, 2)
        elif clouds.ndim == 3 and clouds.shape[-1] == 3:
            xyz = clouds
        else:
            raise ValueError(f"{type(self).__name__}: clouds must be [B,6,N] (xyz + RGB) or [B,N,3], "
                             f"got {tuple(clouds.shape)}")
        seen = getattr(self, stream)
        xyz = self._same_point_count(xyz.float(), int(seen))
        net = _on(self.network, clouds.device)
        if net.training:
            raise ValueError(f"{type(net).__name__} is in training mode; call .eval() before using it for metrics")
        out = features_and_logits(net, xyz, int(seen), self.device_batch_size)
        setattr(self, stream, seen + xyz.shape[0])
        return out

    def _same_point_count(self, xyz: torch.Tensor, first_index: int) -> torch.Tensor:
        n = xyz.shape[1]
        if self.num_points is None:
            if self._points_seen is None:
                self._points_seen = n
            if n != self._points_seen:
                raise ValueError(f"{type(self).__name__}: clouds of {n} and {self._points_seen} points; P-FID / P-IS "
                                 "compare clouds of one size: set num_points")
            return xyz
        if n < self.num_points:
            raise ValueError(f"{type(self).__name__}: a cloud of {n} points, fewer than num_points="
                             f"{self.num_points}")
        if n == self.num_points:
            return xyz
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + first_index)
        keep = torch.stack([torch.randperm(n, generator=generator)[:self.num_points] for _ in range(len(xyz))])
        return index_points(xyz, keep.to(xyz.device))


class PointFID(_EvalNetworkMetric):
    """P-FID as point-e computes it (``lang3d.point_e.eval_scores``): the Fréchet distance between Gaussians
    (mean, unbiased covariance) fitted to the evaluation network's features (``bn2(fc2(.))``) of real and of
    generated clouds. ``network``: ``lang3d.point_e.eval_pointnet.PointNet2SSG`` (point-e's ``pointnet.pt`` via
    ``load_eval_pointnet``, or one trained by ``python -m sepe.pointcloud_features``); ``feature_dim`` checks its
    feature width (default: the network's)."""

    higher_is_better = False

    def __init__(self, network: torch.nn.Module, feature_dim: int | None = None, num_points: int | None = None,
                 seed: int = 0, **kwargs):
        super().__init__(network, num_points, seed, **kwargs)
        self.feature_dim = feature_dim if feature_dim is not None else network.feature_dim
        for side in ("real", "fake"):
            self.add_state(f"{side}_features", [], dist_reduce_fx="cat")
            self.add_state(f"{side}_seen", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, clouds: torch.Tensor | None = None, real: bool = False, *,
               features: torch.Tensor | None = None) -> None:
        """clouds [B,6,N] or [B,N,3] through the network, or ready ``features`` [B,F]; ``real``: which set."""
        if (clouds is None) == (features is None):
            raise ValueError("PointFID.update: give exactly one of clouds / features")
        side = "real" if real else "fake"
        if features is None:
            features = self._features_and_logits(clouds, f"{side}_seen")[0]
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"PointFID: features must be [B,{self.feature_dim}], got {tuple(features.shape)}")
        getattr(self, f"{side}_features").append(features.double())

    def compute(self) -> torch.Tensor:
        stats = []
        for side in ("real", "fake"):
            feats = getattr(self, f"{side}_features")
            feats = torch.cat(feats) if isinstance(feats, list) else feats
            if feats.shape[0] < 2:
                raise ValueError(f"PointFID: need at least 2 {side} clouds for a covariance, got {feats.shape[0]}")
            stats.append(fid_statistics(feats.cpu().numpy()))
        return torch.tensor(frechet_distance(*stats[0], *stats[1]), dtype=torch.float32)


class PointIS(_EvalNetworkMetric):
    """P-IS as point-e computes it (``lang3d.point_e.eval_scores.inception_score_splits``): exp(E_x KL(p(y|x) ||
    p(y))) on the softmax of the evaluation network's logits of generated clouds, per consecutive split of
    ``split_size`` clouds (point-e: 5000); ``compute`` -> (mean over splits: point-e's P-IS, their std)."""

    higher_is_better = True

    def __init__(self, network: torch.nn.Module, split_size: int = 5000, num_points: int | None = None,
                 seed: int = 0, **kwargs):
        super().__init__(network, num_points, seed, **kwargs)
        self.split_size = split_size
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("seen", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, clouds: torch.Tensor | None = None, *, logits: torch.Tensor | None = None) -> None:
        """clouds [B,6,N] or [B,N,3] through the network, or ready ``logits`` [B,K]."""
        if (clouds is None) == (logits is None):
            raise ValueError("PointIS.update: give exactly one of clouds / logits")
        if logits is None:
            logits = self._features_and_logits(clouds, "seen")[1]
        self.logits.append(logits.double())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.cat(self.logits) if isinstance(self.logits, list) else self.logits
        scores = inception_score_splits(torch.log_softmax(logits.double(), -1), self.split_size)
        std = scores.std(unbiased=False) if len(scores) > 1 else torch.zeros((), dtype=scores.dtype)
        return scores.mean().float(), std.float()
