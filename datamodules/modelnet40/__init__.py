"""ModelNet40: PointNet h5 and ``modelnet40_normal_resampled`` readers, zero-shot prompts, the DataModule."""
from datamodules.modelnet40.common import MODELNET40_CLASSES, ModelNet40FormatError, read_shape_names
from datamodules.modelnet40.datamodule import ModelNet40DataModule, ModelNet40Shapes, resolve_format
from datamodules.modelnet40.h5 import load_h5_split, read_h5
from datamodules.modelnet40.prompts import class_prompts, prompt_names, templates
from datamodules.modelnet40.resampled import read_shape, read_split_ids, read_ulip_cache

__all__ = ["MODELNET40_CLASSES", "ModelNet40DataModule", "ModelNet40FormatError", "ModelNet40Shapes", "class_prompts",
           "load_h5_split", "prompt_names", "read_h5", "read_shape", "read_shape_names", "read_split_ids",
           "read_ulip_cache", "resolve_format", "templates"]
