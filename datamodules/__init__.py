"""LightningDataModules reading each dataset's real on-disk format."""
from datamodules.scannet.datamodule import ScanNetPairsDataModule

__all__ = ["ScanNetPairsDataModule"]
