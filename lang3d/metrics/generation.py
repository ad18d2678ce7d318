"""P-FID and P-IS as point-e's ``point_e/evals/fid_is.py`` computes them (its FID and IS come from OpenAI's
guided-diffusion evaluator).

- P-FID: Gaussian fits ``mu = mean``, ``sigma = np.cov(rowvar=False)`` (unbiased) of the features of each set;
  ``||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`` with scipy's ``sqrtm``. A product whose square root is
  not finite is retried with ``eps`` added to both diagonals (with a warning); an imaginary part of the root's
  diagonal above 1e-3 is an error, a smaller one is dropped.
- P-IS: per consecutive split of ``split_size`` clouds, ``exp(mean_x KL(p(y|x) || mean_x p(y|x)))``; the score
  is the mean over splits. Computed here from log-probabilities in float64, which equals point-e's float32
  ``p * (log p - log mean p)`` wherever that is finite (a probability that underflows to 0 makes it NaN).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch


def fid_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [n,d] (n >= 2) -> (mean [d], unbiased covariance [d,d]), float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"fid_statistics needs features [n,d] with n >= 2, got {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) as point-e's ``FIDStatistics.frechet_distance``."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"frechet_distance: statistics of different sizes: means {mu1.shape} vs {mu2.shape}, "
                         f"covariances {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: singular product; adding {eps} to the diagonal of both covariances")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score_splits(log_probs: torch.Tensor, split_size: int = 5000) -> torch.Tensor:
    """log p(y|x) [n,K] -> the score of each consecutive split of ``split_size`` rows [ceil(n/split_size)],
    float64; point-e's P-IS is their mean."""
    if log_probs.ndim != 2 or log_probs.shape[0] == 0 or split_size < 1:
        raise ValueError(f"inception score needs log-probabilities [n>0,K] and split_size >= 1, got "
                         f"{tuple(log_probs.shape)}, {split_size}")
    scores = []
    for part in log_probs.double().split(split_size):
        log_marginal = torch.logsumexp(part, 0) - np.log(part.shape[0])
        scores.append(torch.exp((part.exp() * (part - log_marginal)).sum(1).mean()))
    return torch.stack(scores)
