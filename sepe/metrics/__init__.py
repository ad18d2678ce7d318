"""Evaluation of generated clouds as torchmetrics ``Metric``s, one metric a file: Chamfer and EMD to the ground truth,
CLIP R-precision of renders against captions, P-FID and P-IS on a point-cloud network's features and logits.

Clouds are Point-E's ``[B,6,N]``: xyz (data units) then RGB 0..255, as ``sepe.geometric_losses``.
"""
from sepe.metrics.chamfer import ChamferDistanceMetric
from sepe.metrics.emd import EarthMoversDistance, earth_movers_distance
from sepe.metrics.pfid import PointFID
from sepe.metrics.pis import PointIS
from sepe.metrics.r_precision import CLIPRPrecision, r_precision_hits, sample_key

__all__ = ["ChamferDistanceMetric", "CLIPRPrecision", "EarthMoversDistance", "PointFID", "PointIS",
           "earth_movers_distance", "r_precision_hits", "sample_key"]
