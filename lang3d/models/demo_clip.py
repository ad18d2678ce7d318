"""A stand-in for pretrained CLIP weights in the offline demo of pre-training: a random ResNet CLIP whose dense
features tell its images' cells apart by what they show.

A randomly initialised ResNet CLIP gives every dense cell nearly the same feature: its BatchNorms (at their default
statistics) shrink the trunk's features to ~1e-3, and the attention pool's random queries and keys attend almost
uniformly, so each output is about the image's mean value (cosine > 0.99999 between the cells of
``lang3d-tiny-RN``). The encoder-level alignment of pre-training then has nothing to match. ``build_demo_clip``
keeps the random convolutions and projections and sets, from a set of images and deterministically:

1. the BatchNorm statistics of the image tower to those of the images (each BatchNorm's running mean and variance
   over them), so the trunk's features are of unit scale;
2. the attention pool so that every position attends to itself: the positional embedding holds a code per
   position (``code_scale`` times a one-hot vector in the first channels), the query and key projections read
   only those channels (``attention_scale`` times the identity in every head), the value projection only the
   others. The dense feature of a cell is then the value of its own trunk feature, a function of the image around
   the cell (MaskCLIP's value features), and not of where the cell is;
3. the output projection so that the dense features over the images are white (``whiten_dense_features``): zero
   mean, identity covariance, cells as different as a trained CLIP's.

The positional grid must be as large as the dense map: ``lang3d-demo-RN`` (``lang3d-tiny-RN`` at 224 px, a 7×7
grid) with 224×224 images. The text tower stays random. Not a model of anything; a demo's CLIP.
"""
from __future__ import annotations

import torch
from open_clip.modified_resnet import AttentionPool2d
from torch import nn

from lang3d.models.clip import CLIPDenseImageEncoder, load_clip

DEMO_MODEL = "lang3d-demo-RN"


@torch.no_grad()
def calibrate_batchnorm(visual: nn.Module, images: torch.Tensor, trunk) -> None:
    """Set every BatchNorm2d of ``visual`` to the statistics of its inputs over ``images`` [N,3,H,W] in [0,1]
    (one cumulative pass of ``trunk``), then leave ``visual`` in eval mode."""
    for module in visual.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: the statistics of this one pass
    visual.train()
    trunk(images)
    visual.eval()


@torch.no_grad()
def attend_to_self(pool: AttentionPool2d, code_scale: float = 10.0, attention_scale: float = 1.0) -> None:
    """Make each of the pool's ``T = 1 + g*g`` tokens attend to itself (see the module docstring, step 2)."""
    tokens, channels = pool.positional_embedding.shape
    head_dim = channels // pool.num_heads
    if tokens > head_dim:
        raise ValueError(f"attention pool of {tokens} tokens and {head_dim} channels per head: one-hot codes of the "
                         f"positions need at least as many channels per head as tokens")
    codes = torch.zeros(tokens, channels)
    codes[:, :tokens] = code_scale * torch.eye(tokens)
    pool.positional_embedding.copy_(codes)
    read_codes = torch.zeros(channels, channels)
    for head in range(pool.num_heads):
        read_codes[head * head_dim:head * head_dim + tokens, :tokens] = attention_scale * torch.eye(tokens)
    for projection in (pool.q_proj, pool.k_proj):
        projection.weight.copy_(read_codes)
        projection.bias.zero_()
    pool.v_proj.weight[:, :tokens] = 0.0


@torch.no_grad()
def whiten_dense_features(encoder: CLIPDenseImageEncoder, images: torch.Tensor) -> None:
    """Fold a whitening of the dense features over ``images`` into the attention pool's output projection: after
    it the features of the images' cells have zero mean and identity covariance (directions of variance below 1e-6
    of the largest are scaled as that floor)."""
    dense = encoder(images)["dense"]
    cells = dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1]).double()
    mean = cells.mean(0)
    values, vectors = torch.linalg.eigh((cells - mean).T @ (cells - mean) / len(cells))
    whiten = vectors @ torch.diag(values.clamp_min(values.max() * 1e-6).rsqrt()) @ vectors.T
    proj = encoder.visual.attnpool.c_proj
    weight, bias = proj.weight.double(), proj.bias.double()
    proj.weight.copy_(whiten @ weight)
    proj.bias.copy_(whiten @ (bias - mean))


def build_demo_clip(images: torch.Tensor, model_name: str = DEMO_MODEL, seed: int = 0) -> nn.Module:
    """The demo CLIP (open_clip model) of ``model_name`` made from its random initialisation under ``seed`` and
    ``images`` [N,3,H,W] float in [0,1], whose dense map must match the pool's positional grid."""
    torch.manual_seed(seed)
    model, _ = load_clip(model_name, None)
    encoder = CLIPDenseImageEncoder(model)
    pool = model.visual.attnpool
    grid = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
    dense_hw = (images.shape[-2] // encoder.output_stride, images.shape[-1] // encoder.output_stride)
    if dense_hw != (grid, grid):
        raise ValueError(f"{model_name}'s positional grid is {grid}x{grid} but images of "
                         f"{images.shape[-2]}x{images.shape[-1]} give a {dense_hw[0]}x{dense_hw[1]} dense map: use "
                         f"{grid * encoder.output_stride}x{grid * encoder.output_stride} images")
    calibrate_batchnorm(model.visual, images, encoder.trunk)
    attend_to_self(pool)
    whiten_dense_features(encoder, images)
    return model
