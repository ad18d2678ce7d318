"""ImageBind's vision, text and audio towers (facebookresearch/ImageBind), the joint space of the released Point-Bind
models: ``load_towers`` builds them from ``imagebind_huge.pth`` or a Point-Bind release; ``encoders`` wraps them
as frozen encoders beside the CLIP ones."""
from lang3d.models.imagebind.encoders import ImageBindAudioEncoder, ImageBindImageEncoder, ImageBindTextEncoder
from lang3d.models.imagebind.load import ARCHITECTURES, architecture, is_imagebind, load_towers
from lang3d.models.imagebind.tower import MODALITIES, ImageBindTower

__all__ = ["ARCHITECTURES", "MODALITIES", "ImageBindAudioEncoder", "ImageBindImageEncoder", "ImageBindTextEncoder",
           "ImageBindTower", "architecture", "is_imagebind", "load_towers"]
