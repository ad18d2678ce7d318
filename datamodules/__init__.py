"""LightningDataModules reading each dataset's real on-disk format."""
from datamodules.s3dis.datamodule import S3DISDataModule
from datamodules.scannet.datamodule import ScanNetPairsDataModule

__all__ = ["S3DISDataModule", "ScanNetPairsDataModule"]
