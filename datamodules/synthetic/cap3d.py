"""Synthetic Cap3D objects in the real layout: caption CSV, coloured point clouds and rendered views.

Each object is a procedural shape (sphere, cube, cylinder, cone, torus, pyramid, bowl, table, ...; ``shapes.py``)
in one colour, or two (a different colour above mid-height), scaled so that its bounding box is centred and fits
±0.5 (z up). Written under ``root``:

- ``Cap3D_automated_ABO.csv`` (``subset="ABO"``) or ``Cap3D_automated_Objaverse_full.csv``: ``uid,caption``
  rows, no header; captions such as ``a small red torus, with a blue top`` (CSV-quoted).
- ``Cap3D_pcs_pt/<uid>.pt``: float32 tensor [6,points] (xyz, rgb 0..255), or ``<uid>.ply`` (Point-E layout:
  binary little-endian float x,y,z + uchar red,green,blue) with ``point_format="ply"``.
- ``Cap3D_Objaverse_renderimgs/<uid>/NNNNN.png`` (RGBA, 16 bits per channel like the Blender renders),
  ``NNNNN_depth.png`` (uint16, clamp(z / 5 m) · 65535, 65535 = background), ``NNNNN.json`` (camera), or the same
  files in ``<uid>.zip`` with ``zipped``. Cameras look at the origin from 2.0-2.6 m, random azimuth and elevation.
  Views are drawn by a z-buffered point splatter with head-light shading; with ``blank_views`` = k the first k
  views of the first object are blank (empty alpha, depth 65535 everywhere), like the failed renders of the
  release.

Options for experiments that need the caption and the image to carry different facts: ``shapes`` / ``colors``
restrict the draws, ``two_tone_prob`` sets how often an object gets a differently coloured top, ``shape_in_caption``
False leaves the shape out of the caption ("a small red object"), and ``grey_views`` renders every view in one
neutral grey, so the colour is only in the caption and the cloud, and the shape only in the views and the cloud.

    python -m datamodules.synthetic.cap3d --out DIR --objects 16 --views 4 --image-size 128
"""
from __future__ import annotations

import argparse
import csv
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from datamodules.synthetic.shapes import sample_shape

OBJECT_SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "bowl", "table")
COLORS = {"red": (200, 30, 30), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (230, 210, 40),
          "orange": (240, 130, 20), "purple": (130, 50, 170), "white": (235, 235, 235), "black": (30, 30, 30),
          "pink": (240, 120, 170), "brown": (120, 75, 40)}
CAPTION_FILES = {"ABO": "Cap3D_automated_ABO.csv", "Objaverse": "Cap3D_automated_Objaverse_full.csv"}
POINT_DIR = "Cap3D_pcs_pt"
VIEW_DIR = "Cap3D_Objaverse_renderimgs"
MAX_DEPTH = 5.0
FOV = 0.691150  # radians: Blender's default 50 mm lens on a 36 mm sensor


GREY = (170, 170, 170)


def make_object(rng: np.random.Generator, points: int, shapes: tuple[str, ...] = OBJECT_SHAPES,
                colors: tuple[str, ...] = tuple(COLORS), two_tone_prob: float = 0.5,
                shape_in_caption: bool = True) -> dict:
    """One coloured object: xyz [P,3] in ±0.5, rgb [P,3] uint8, normals [P,3], and its caption."""
    shape = shapes[rng.integers(len(shapes))]
    names = list(colors)
    colour = names[rng.integers(len(names))]
    second = names[rng.integers(len(names))] if rng.random() < two_tone_prob else colour
    xyz, normal, _ = sample_shape(shape, points, rng)
    lo, hi = xyz.min(0), xyz.max(0)
    xyz = (xyz - (lo + hi) / 2) / (hi - lo).max()
    top = xyz[:, 2] > 0
    rgb = np.where(top[:, None], COLORS[second], COLORS[colour]).astype(np.uint8)
    size = "small" if rng.random() < 0.5 else "large"
    article = "an" if second[0] in "aeiou" else "a"
    noun = shape if shape_in_caption else "object"
    caption = f"a {size} {colour} {noun}" + (f", with {article} {second} top" if second != colour else "")
    return {"shape": shape, "color": colour, "top_color": second, "xyz": xyz.astype(np.float32), "rgb": rgb,
            "normal": normal.astype(np.float32), "caption": caption}


def look_at_camera(origin: np.ndarray) -> dict:
    """Camera json (Cap3D layout) at ``origin`` looking at the world origin, z up; x, y, z are the OpenCV camera
    axes (right, down, forward) in world coordinates."""
    forward = -origin / np.linalg.norm(origin)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return {"format_version": 6, "max_depth": MAX_DEPTH, "bbox": [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]],
            "origin": origin.tolist(), "x_fov": FOV, "y_fov": FOV, "x": right.tolist(), "y": down.tolist(),
            "z": forward.tolist()}


def render_points(xyz: np.ndarray, rgb: np.ndarray, normal: np.ndarray, camera: dict,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """Splat points into a ``size``² view -> (rgba uint8 [H,W,4], depth uint16 [H,W]).

    A point lands in pixel (floor v, floor u) of its projection u = fx X/Z + W/2, v = fy Y/Z + H/2, and covers the
    square of ``radius`` pixels around it; the nearest point wins each pixel. Depth is the camera z of the point.
    """
    rot = np.stack([camera["x"], camera["y"], camera["z"]], 1)
    cam = (xyz - np.asarray(camera["origin"])) @ rot  # world -> camera: R^T (p - t)
    f = size / 2 / np.tan(camera["x_fov"] / 2)
    z = cam[:, 2]
    u, v = f * cam[:, 0] / z + size / 2, f * cam[:, 1] / z + size / 2
    # half the pixel spacing of points on a surface of area 6 (the cube of edge 1) seen from the nearest point
    radius = int(np.ceil(0.5 * f * np.sqrt(6.0 / len(xyz)) / z.min()))
    offsets = np.arange(-radius, radius + 1)
    du, dv = (a.ravel() for a in np.meshgrid(offsets, offsets))
    col = (np.floor(u)[:, None] + du).ravel().astype(np.int64)
    row = (np.floor(v)[:, None] + dv).ravel().astype(np.int64)
    point = np.repeat(np.arange(len(xyz)), len(du))
    ok = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (z[point] > 0) & (z[point] < MAX_DEPTH)
    pixel, point = row[ok] * size + col[ok], point[ok]
    order = np.lexsort((z[point], pixel))
    pixel, point = pixel[order], point[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    pixel, point = pixel[first], point[first]
    view_dir = -cam[point] / np.linalg.norm(cam[point], axis=1, keepdims=True)
    shade = 0.55 + 0.45 * np.abs(np.einsum("ij,ij->i", normal[point] @ rot, view_dir))
    rgba = np.zeros((size * size, 4), dtype=np.uint8)
    rgba[pixel, :3] = np.clip(rgb[point] * shade[:, None], 0, 255).astype(np.uint8)
    rgba[pixel, 3] = 255
    depth = np.full(size * size, 65535, dtype=np.uint16)
    depth[pixel] = np.round(np.clip(z[point] / MAX_DEPTH, 0, 1) * 65535).astype(np.uint16)
    return rgba.reshape(size, size, 4), depth.reshape(size, size)


def png_bytes(image: np.ndarray, bits: int = 16) -> bytes:
    """Encode uint8 or uint16 [H,W] / [H,W,4] as a PNG of ``bits`` per channel (8-bit input is scaled by 257 for
    16 bits). Written directly (zlib + chunks): Pillow cannot write 16-bit RGBA."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and bits == 16:
        image = image.astype(np.uint16) * 257
    channels = 1 if image.ndim == 2 else image.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    height, width = image.shape[:2]
    raw = image.astype(">u2" if bits == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    data = zlib.compress(np.concatenate([np.zeros((height, 1), np.uint8), raw], 1).tobytes(), 6)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Point-E's ``write_ply`` layout: binary little endian, float x,y,z and uchar red,green,blue, no faces."""
    vertex = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                       ("blue", "u1")])
    for i, name in enumerate("xyz"):
        vertex[name] = xyz[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))


def generate_cap3d(root: str | Path, num_objects: int = 8, subset: str = "ABO", views: int = 4,
                   image_size: int = 128, points: int = 16384, zipped: bool = False, point_format: str = "pt",
                   blank_views: int = 0, seed: int = 0, shapes: tuple[str, ...] = OBJECT_SHAPES,
                   colors: tuple[str, ...] = tuple(COLORS), two_tone_prob: float = 0.5, shape_in_caption: bool = True,
                   grey_views: bool = False) -> dict:
    """Write the caption CSV, clouds and views; returns {"objects": [{"uid", "caption", "shape", "color",
    "top_color"}], "captions": path, "blank": [(uid, view id)]}. See the module docstring for the options."""
    unknown = sorted(set(shapes) - set(OBJECT_SHAPES)) + sorted(set(colors) - set(COLORS))
    if unknown or not shapes or not colors:
        raise ValueError(f"shapes must be among {OBJECT_SHAPES} and colors among {tuple(COLORS)} (non-empty); "
                         f"unknown: {unknown}")
    if subset not in CAPTION_FILES:
        raise ValueError(f"subset must be one of {sorted(CAPTION_FILES)}, got {subset!r}")
    if point_format not in ("pt", "ply"):
        raise ValueError(f"point_format must be 'pt' or 'ply', got {point_format!r}")
    root = Path(root)
    (root / POINT_DIR).mkdir(parents=True, exist_ok=True)
    (root / VIEW_DIR).mkdir(parents=True, exist_ok=True)
    objects, blank = [], []
    for k in range(num_objects):
        rng = np.random.default_rng([seed, k])  # object k is the same whatever the subset or the object count
        ids = np.random.default_rng([seed, k, 1])
        uid = "".join(f"{b:02x}" for b in ids.integers(0, 256, 16)) if subset == "Objaverse" else \
            "B0" + "".join("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i] for i in ids.integers(0, 36, 8))
        obj = make_object(rng, points, tuple(shapes), tuple(colors), two_tone_prob, shape_in_caption)
        view_rgb = np.broadcast_to(np.asarray(GREY, np.uint8), obj["rgb"].shape) if grey_views else obj["rgb"]
        if point_format == "pt":
            tensor = torch.from_numpy(np.concatenate([obj["xyz"], obj["rgb"].astype(np.float32)], 1).T.copy())
            torch.save(tensor, root / POINT_DIR / f"{uid}.pt")
        else:
            write_ply(root / POINT_DIR / f"{uid}.ply", obj["xyz"], obj["rgb"])
        files = {}
        for view in range(views):
            azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.8)
            distance = rng.uniform(2.0, 2.6)
            origin = distance * np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                                          np.sin(elevation)])
            camera = look_at_camera(origin)
            rgba, depth = render_points(obj["xyz"], view_rgb, obj["normal"], camera, image_size)
            name = f"{view:05d}"
            if k == 0 and view < blank_views:
                rgba, depth = np.zeros_like(rgba), np.full_like(depth, 65535)
                blank.append((uid, name))
            files[f"{name}.png"] = png_bytes(rgba, 16)
            files[f"{name}_depth.png"] = png_bytes(depth, 16)
            files[f"{name}.json"] = json.dumps(camera).encode()
        if zipped:
            with zipfile.ZipFile(root / VIEW_DIR / f"{uid}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
        else:
            (root / VIEW_DIR / uid).mkdir(exist_ok=True)
            for name, data in files.items():
                (root / VIEW_DIR / uid / name).write_bytes(data)
        objects.append({"uid": uid, **{key: obj[key] for key in ("caption", "shape", "color", "top_color")}})
    captions = root / CAPTION_FILES[subset]
    with open(captions, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows((o["uid"], o["caption"]) for o in objects)
    return {"objects": objects, "captions": captions, "blank": blank}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output root")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--subset", choices=sorted(CAPTION_FILES), default="ABO")
    parser.add_argument("--views", type=int, default=4, help="rendered views per object (the release: 20)")
    parser.add_argument("--image-size", type=int, default=128, help="view width = height in pixels (release: 512)")
    parser.add_argument("--points", type=int, default=16384)
    parser.add_argument("--zipped", action="store_true", help="write <uid>.zip per object instead of folders")
    parser.add_argument("--point-format", choices=["pt", "ply"], default="pt")
    parser.add_argument("--blank-views", type=int, default=0, help="blank renders among the first object's views")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = generate_cap3d(args.out, args.objects, args.subset, args.views, args.image_size, args.points, args.zipped,
                          args.point_format, args.blank_views, args.seed)
    print(f"wrote {len(info['objects'])} objects, captions in {info['captions']}")


if __name__ == "__main__":
    main()
