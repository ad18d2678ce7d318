"""SEPE (Semantic Enhanced Point-E): text + image fusion conditioning base40M, and its geometric losses."""
from sepe.fusion import ConcatFusion, CrossAttentionFusion, GridFusion, drop_conditions, forward_with_condition
from sepe.geometric_losses import (COLOR_SCALE, chamfer_distance, color_loss, laplacian_smoothness,
                                   mean_neighbour_distance, uniformity)
from sepe.module import SEPEFineTuning
from sepe.predict_data import SEPEPromptsDataModule

__all__ = ["COLOR_SCALE", "ConcatFusion", "CrossAttentionFusion", "SEPEFineTuning", "SEPEPromptsDataModule",
           "GridFusion", "chamfer_distance", "color_loss", "drop_conditions",
           "forward_with_condition", "laplacian_smoothness", "mean_neighbour_distance", "uniformity"]
