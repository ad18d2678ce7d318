"""S3DIS: raw-release reader, prepared-room cache and the segmentation LightningDataModule."""
from datamodules.s3dis.datamodule import S3DISDataModule, S3DISRooms, split_areas
from datamodules.s3dis.raw import S3DIS_CLASSES, S3DISFormatError, read_annotation, read_room
from datamodules.s3dis.rooms import S3DISCacheError, load_room, prepare_rooms

__all__ = ["S3DIS_CLASSES", "S3DISCacheError", "S3DISDataModule", "S3DISFormatError", "S3DISRooms", "load_room",
           "prepare_rooms", "read_annotation", "read_room", "split_areas"]
