"""Point-E re-implemented: the point-cloud diffusion transformers (the official checkpoints load unchanged), CLIP
conditioning, Gaussian diffusion, the Karras Heun sampler with classifier-free guidance and the two-stage sampler."""
from lang3d.models.point_e.clip_condition import CLIPConditioner
from lang3d.models.point_e.diffusion import GaussianDiffusion, scale_channels, unscale_channels
from lang3d.models.point_e.models import (MODEL_CONFIGS, POINT_E_CHANNEL_BIASES, POINT_E_CHANNEL_SCALES,
                                          CLIPGridPointDiffusionTransformer, CLIPGridUpsamplePointDiffusionTransformer,
                                          CLIPVectorPointDiffusionTransformer, build_model, drop_condition,
                                          load_official_checkpoint)
from lang3d.models.point_e.sampler import PointCloudSampler, StageConfig
from lang3d.models.point_e.transformer import PointDiffusionTransformer, qkv_attention, timestep_embedding

__all__ = ["CLIPConditioner", "GaussianDiffusion", "PointCloudSampler", "StageConfig", "scale_channels",
           "unscale_channels", "MODEL_CONFIGS", "POINT_E_CHANNEL_BIASES", "POINT_E_CHANNEL_SCALES",
           "CLIPGridPointDiffusionTransformer", "CLIPGridUpsamplePointDiffusionTransformer",
           "CLIPVectorPointDiffusionTransformer", "PointDiffusionTransformer", "build_model",
           "drop_condition", "load_official_checkpoint", "qkv_attention", "timestep_embedding"]
