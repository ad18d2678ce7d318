"""LightningDataModules reading each dataset's real on-disk format."""
from datamodules.cap3d.datamodule import Cap3DDataModule
from datamodules.modelnet40.datamodule import ModelNet40DataModule
from datamodules.s3dis.datamodule import S3DISDataModule
from datamodules.scannet.datamodule import ScanNetPairsDataModule
from datamodules.scannet_detection.datamodule import ScanNetDetectionDataModule
from datamodules.sunrgbd.datamodule import SUNRGBDDataModule

__all__ = ["Cap3DDataModule", "ModelNet40DataModule", "S3DISDataModule", "ScanNetPairsDataModule"]
__all__ += ["ScanNetDetectionDataModule", "SUNRGBDDataModule"]
