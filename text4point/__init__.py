"""Text4Point: language-guided 3D point-cloud models via 2D images as a bridge (arXiv 2301.07584)."""
from text4point.detection import Text4PointDetection
from text4point.finetune import Text4PointSegmentation
from text4point.instance import Text4PointInstanceSegmentation
from text4point.pretrain import Text4PointPretraining

__all__ = ["Text4PointPretraining", "Text4PointSegmentation", "Text4PointDetection", "Text4PointInstanceSegmentation"]
