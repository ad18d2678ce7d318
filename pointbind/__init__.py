"""Point-Bind: 3D encoders aligned into a frozen CLIP joint space (arXiv 2309.00615): zero-shot classification,
cross-modal retrieval and embedding arithmetic."""
from pointbind.data import PointBindDataModule
from pointbind.module import PointBindAlignment

__all__ = ["PointBindAlignment", "PointBindDataModule"]
