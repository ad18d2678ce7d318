"""Readers of Cap3D per-object files: coloured point clouds and rendered views.

Point clouds: ``<uid>.pt`` = ``torch.save``d float tensor [6,16384], rows x, y, z (object in about ±0.5) and
r, g, b (0..255); or ``<uid>.ply`` (Point-E ``write_ply``: vertices with float x, y, z and uchar red, green, blue).

Rendered views of one object: a folder ``<uid>/`` or a zip ``<uid>.zip`` (read in place with ``zipfile``;
members at its top level or under one folder) holding per view ``NNNNN.png`` (RGBA, 8 or 16 bits per
channel), ``NNNNN_depth.png`` (uint16, value = clamp(depth / max_depth) · 65535, 65535 = background) and
``NNNNN.json`` (camera: ``origin`` [3], OpenCV-style camera axes ``x``, ``y``, ``z`` [3] in world coordinates,
``x_fov`` / ``y_fov`` radians, ``max_depth`` metres). A view whose depth is 65535 everywhere is blank (a failed
render).
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from plyfile import PlyData

from datamodules.cap3d.captions import Cap3DFormatError

DEPTH_BACKGROUND = 65535
_VIEW_PNG = re.compile(r"(\d{5})\.png")


def point_cloud_path(point_dir: str | Path, uid: str) -> Path | None:
    """``<uid>.pt`` (preferred) or ``<uid>.ply`` in ``point_dir``; None when neither exists."""
    for suffix in (".pt", ".ply"):
        path = Path(point_dir) / f"{uid}{suffix}"
        if path.is_file():
            return path
    return None


def read_point_cloud(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``.pt`` or ``.ply`` cloud -> (xyz float32 [P,3], rgb float32 [P,3] in 0..255); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Cap3D point cloud {path} does not exist")
    if path.suffix == ".pt":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any load failure means an unreadable file
            raise Cap3DFormatError(f"{path}: cannot be loaded ({type(err).__name__}: {err})") from None
        if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.shape[0] != 6:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise Cap3DFormatError(f"{path}: expected a tensor [6,P] (x,y,z,r,g,b rows), got {shape}")
        values = data.float().numpy().T
        return np.ascontiguousarray(values[:, :3]), np.ascontiguousarray(values[:, 3:])
    if path.suffix == ".ply":
        try:
            vertex = PlyData.read(str(path))["vertex"]
        except Exception as err:  # noqa: BLE001 - plyfile raises several types for damaged files
            raise Cap3DFormatError(f"{path}: not a PLY file with a vertex element ({err})") from None
        names = vertex.data.dtype.names
        missing = [n for n in ("x", "y", "z", "red", "green", "blue") if n not in names]
        if missing:
            raise Cap3DFormatError(f"{path}: vertex properties {missing} missing (has {list(names)})")
        xyz = np.stack([vertex[n] for n in ("x", "y", "z")], 1).astype(np.float32)
        rgb = np.stack([vertex[n] for n in ("red", "green", "blue")], 1).astype(np.float32)
        return xyz, rgb
    raise Cap3DFormatError(f"{path}: unknown point-cloud file type (expected .pt or .ply)")


class RenderedViews:
    """The rendered views of one object, in a folder or a zip. ``views``: sorted view ids ("00000", ...)."""

    def __init__(self, source: str | Path):
        self.source = Path(source)
        if self.source.is_dir():
            self._members = {p.name: p.name for p in self.source.iterdir() if p.is_file()}
        elif self.source.is_file():
            try:
                with zipfile.ZipFile(self.source) as archive:
                    names = [n for n in archive.namelist() if not n.endswith("/")]
            except zipfile.BadZipFile as err:
                raise Cap3DFormatError(f"{self.source}: not a readable zip ({err})") from None
            self._members = {n.rsplit("/", 1)[-1]: n for n in names}
        else:
            raise FileNotFoundError(f"Cap3D rendered views {self.source} do not exist")
        self.views = sorted(m[1] for m in (_VIEW_PNG.fullmatch(name) for name in self._members) if m)

    def _read(self, name: str) -> bytes:
        if name not in self._members:
            raise FileNotFoundError(f"{self.source}: view file {name} is missing")
        if self.source.is_dir():
            return (self.source / name).read_bytes()
        with zipfile.ZipFile(self.source) as archive:
            return archive.read(self._members[name])

    def depth(self, view: str) -> np.ndarray:
        """uint16 [H,W] encoded depth of ``view`` (65535 = background)."""
        name = f"{view}_depth.png"
        depth = np.asarray(self._image(name))
        if depth.ndim != 2:
            raise Cap3DFormatError(f"{self.source}: {name} is not a one-channel depth image")
        return depth.astype(np.uint16)

    def rgba(self, view: str) -> np.ndarray:
        """uint8 [H,W,4] colour of ``view`` (16-bit renders are reduced to 8 bits)."""
        return np.asarray(self._image(f"{view}.png").convert("RGBA"))

    def camera(self, view: str) -> dict:
        name = f"{view}.json"
        try:
            camera = json.loads(self._read(name))
        except json.JSONDecodeError as err:
            raise Cap3DFormatError(f"{self.source}: {name} is not valid JSON ({err})") from None
        missing = [k for k in ("origin", "x", "y", "z", "x_fov", "y_fov") if k not in camera]
        if missing:
            raise Cap3DFormatError(f"{self.source}: {name} lacks {missing}")
        return camera

    def is_blank(self, view: str) -> bool:
        """Whether ``view`` is a failed render: depth 65535 (background) at every pixel."""
        return bool((self.depth(view) == DEPTH_BACKGROUND).all())

    def _image(self, name: str) -> Image.Image:
        data = self._read(name)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, SyntaxError) as err:
            raise Cap3DFormatError(f"{self.source}: {name} is not a readable PNG ({err})") from None
        return image


def composite(rgba: np.ndarray, background: int = 255) -> np.ndarray:
    """uint8 [H,W,4] -> uint8 [H,W,3] over a uniform grey-level ``background`` (0..255)."""
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + float(background) * (1.0 - alpha)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def camera_matrices(camera: dict, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(K [3,3], cam-to-world [4,4]) float64 for an image of ``width`` x ``height`` pixels:
    fx = (W/2) / tan(x_fov/2), fy likewise, principal point (W/2, H/2); columns x, y, z, origin."""
    fx = width / 2 / np.tan(camera["x_fov"] / 2)
    fy = height / 2 / np.tan(camera["y_fov"] / 2)
    intrinsics = np.array([[fx, 0, width / 2], [0, fy, height / 2], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([camera["x"], camera["y"], camera["z"]], 1)
    c2w[:3, 3] = camera["origin"]
    return intrinsics, c2w


def depth_to_points(depth: np.ndarray, camera: dict) -> tuple[np.ndarray, np.ndarray]:
    """Back-project an encoded depth image uint16 [H,W] -> (world points [M,3] float64, pixels [M,2] int64
    (row, column)) for the M non-background pixels, through the pixel centres: P = R (d K⁻¹ [u,v,1]) + t."""
    height, width = depth.shape
    intrinsics, c2w = camera_matrices(camera, width, height)
    rows, cols = np.nonzero(depth != DEPTH_BACKGROUND)
    metres = depth[rows, cols].astype(np.float64) / DEPTH_BACKGROUND * float(camera.get("max_depth", 5.0))
    pix = np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))], 0)
    cam = (np.linalg.inv(intrinsics) @ pix) * metres
    return (c2w[:3, :3] @ cam).T + c2w[:3, 3], np.stack([rows, cols], 1)
