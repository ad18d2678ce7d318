"""Cap3D: caption CSV, point-cloud and rendered-view readers and the triplet DataModule."""
from datamodules.cap3d.captions import Cap3DFormatError, read_captions
from datamodules.cap3d.datamodule import Cap3DDataModule, Cap3DObject, Cap3DObjects, index_objects, split_of
from datamodules.cap3d.objects import (RenderedViews, camera_matrices, composite, depth_to_points, point_cloud_path,
                                       read_point_cloud)

__all__ = ["Cap3DDataModule", "Cap3DFormatError", "Cap3DObject", "Cap3DObjects", "RenderedViews", "camera_matrices",
           "composite", "depth_to_points", "index_objects", "point_cloud_path", "read_captions", "read_point_cloud",
           "split_of"]
