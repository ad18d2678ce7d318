"""ScanNet 3D object detection on votenet's prepared data: reader and LightningDataModule."""
from datamodules.scannet_detection.datamodule import ScanNetDetectionDataModule
from datamodules.scannet_detection.reader import (CLASS_NAMES, NYU40_IDS, instance_votes, load_scene, mean_sizes,
                                                  nyu40_to_class, read_scan)

__all__ = ["CLASS_NAMES", "NYU40_IDS", "ScanNetDetectionDataModule", "instance_votes", "load_scene", "mean_sizes",
           "nyu40_to_class", "read_scan"]
