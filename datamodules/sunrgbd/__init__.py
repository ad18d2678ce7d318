"""SUN RGB-D 3D object detection on votenet's prepared data: reader and LightningDataModule."""
from datamodules.sunrgbd.datamodule import SUNRGBDDataModule
from datamodules.sunrgbd.reader import CLASS_NAMES, MEAN_SIZE, load_scene, read_sample, votenet_to_boxes

__all__ = ["CLASS_NAMES", "MEAN_SIZE", "SUNRGBDDataModule", "load_scene", "read_sample", "votenet_to_boxes"]
