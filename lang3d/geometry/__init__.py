"""3D geometry: boxes, cameras and voxels, sparse-coordinate lookups."""
