"""Synthetic ScanNet scans in the real on-disk layout, rendered by exact ray casting of box rooms.

A room is a floor and 4 walls (thin solid boxes outside the free space [0,Lx]x[0,Ly]x[0,H], z up) plus 3-6
furniture boxes standing on the floor. A camera circles the room centre at ~1.3 m looking at the centre with a
15-20 degree downward tilt. Colour and depth share the pose; poses are camera-to-world, OpenCV axes
(x right, y down, z forward). Surface colour = nyu40 palette colour x face shading x world-anchored texture,
so the mesh vertex colours and the rendered pixels agree.

    python -m datamodules.synthetic.scannet --out DIR --scenes 2 --frames 30
"""

from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from plyfile import PlyData, PlyElement
from tqdm import tqdm

from datamodules.scannet.meta import NYU40_PALETTE
from datamodules.scannet.sens import write_sens as _write_sens_file

WALL, FLOOR = 1, 2
# nyu40 id -> ((min, max) width, (min, max) depth, (min, max) height) in metres
FURNITURE = {
    3: ((0.6, 1.2), (0.4, 0.6), (0.8, 2.0)),     # cabinet
    4: ((1.4, 2.0), (1.9, 2.1), (0.45, 0.6)),    # bed
    5: ((0.45, 0.55), (0.45, 0.55), (0.8, 1.0)),  # chair
    6: ((1.6, 2.2), (0.8, 1.0), (0.7, 0.9)),     # sofa
    7: ((0.8, 1.6), (0.6, 1.0), (0.7, 0.8)),     # table
    10: ((0.8, 1.2), (0.3, 0.4), (1.6, 2.0)),    # bookshelf
    14: ((1.0, 1.6), (0.6, 0.8), (0.72, 0.78)),  # desk
    39: ((0.4, 1.0), (0.4, 1.0), (0.4, 1.5)),    # otherfurniture
}
WALL_THICKNESS = 0.1
CAMERA_HEIGHT = 1.3
MAX_DEPTH = 10.0      # metres; farther hits are stored as 0 (invalid)
DEPTH_FX_640 = 577.870605   # ScanNet depth focal length at 640x480
COLOR_FX_1296 = 1170.187988  # ScanNet colour focal length at 1296x968
_LIGHT = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])


@dataclass(frozen=True)
class Box:
    """Axis-aligned solid box: corners `lo`, `hi` ([3] float64 metres), nyu40 `label`, base `rgb` ([3] 0..255)."""

    lo: np.ndarray
    hi: np.ndarray
    label: int
    rgb: np.ndarray


@dataclass(frozen=True)
class Room:
    """Free space [0, size[0]] x [0, size[1]] x [0, size[2]] metres (no ceiling).

    `boxes`, in this order: floor, walls at x=0, x=Lx, y=0, y=Ly, then the furniture standing on the floor.
    """

    size: np.ndarray
    boxes: list[Box]
    camera_radius: float


def _tint(rng: np.random.Generator, label: int) -> np.ndarray:
    return np.clip(np.array(NYU40_PALETTE[label], dtype=np.float64) * rng.uniform(0.85, 1.15), 0, 255)


def make_room(rng: np.random.Generator, room_size: tuple[float, float] = (4.0, 6.0)) -> Room:
    """Random room: Lx x Ly x 2.5-3 m, Lx and Ly uniform in ``room_size`` (metres; default 4-6 m), with 3-6
    non-overlapping furniture boxes clear of the camera path."""
    lx, ly, h = rng.uniform(*room_size), rng.uniform(*room_size), rng.uniform(2.5, 3.0)
    t = WALL_THICKNESS
    boxes = [Box(np.array([-t, -t, -t]), np.array([lx + t, ly + t, 0.0]), FLOOR, _tint(rng, FLOOR)),
             Box(np.array([-t, -t, -t]), np.array([0.0, ly + t, h]), WALL, _tint(rng, WALL)),
             Box(np.array([lx, -t, -t]), np.array([lx + t, ly + t, h]), WALL, _tint(rng, WALL)),
             Box(np.array([-t, -t, -t]), np.array([lx + t, 0.0, h]), WALL, _tint(rng, WALL)),
             Box(np.array([-t, ly, -t]), np.array([lx + t, ly + t, h]), WALL, _tint(rng, WALL))]
    radius = 0.25 * min(lx, ly)
    centre = np.array([lx / 2, ly / 2])
    target, placed, attempts = int(rng.integers(3, 7)), [], 0
    labels = sorted(FURNITURE)
    while len(placed) < target and attempts < 60:
        attempts += 1
        label = int(rng.choice(labels))
        (w0, w1), (d0, d1), (h0, h1) = FURNITURE[label]
        dims = np.array([rng.uniform(w0, w1), rng.uniform(d0, d1)])
        dims = dims[::-1] if rng.random() < 0.5 else dims
        height = rng.uniform(h0, h1)
        for _ in range(100):
            lo = rng.uniform([0.05, 0.05], [lx - 0.05 - dims[0], ly - 0.05 - dims[1]])
            hi = lo + dims
            # tall boxes must keep 0.35 m from the camera circle; low ones pass below the camera
            nearest = np.linalg.norm(np.clip(centre, lo, hi) - centre)
            if height > CAMERA_HEIGHT - 0.2 and nearest < radius + 0.35:
                continue
            if any((lo < q_hi + 0.05).all() and (q_lo < hi + 0.05).all() for q_lo, q_hi in placed):
                continue
            placed.append((lo, hi))
            boxes.append(Box(np.array([lo[0], lo[1], 0.0]), np.array([hi[0], hi[1], height]), label,
                             _tint(rng, label)))
            break
    if len(placed) < 3:
        raise RuntimeError("could not place 3 furniture boxes; room too small")
    return Room(np.array([lx, ly, h]), boxes, radius)


def scene_rng(seed: int, scene_index: int) -> np.random.Generator:
    """Random stream of one generated scene; its first draws are `make_room`, then `camera_path`."""
    return np.random.default_rng([seed, scene_index])


def camera_path(room: Room, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """[F, 4, 4] float64 camera-to-world poses (OpenCV axes) on a circle around the room centre, ~1.3 m high."""
    centre = np.array([room.size[0] / 2, room.size[1] / 2])
    theta0 = rng.uniform(0, 2 * np.pi)
    poses = np.zeros((num_frames, 4, 4))
    for k in range(num_frames):
        theta = theta0 + 2 * np.pi * k / num_frames
        eye_xy = centre + room.camera_radius * np.array([np.cos(theta), np.sin(theta)]) + rng.uniform(-.05, .05, 2)
        eye = np.array([*eye_xy, CAMERA_HEIGHT + rng.uniform(-0.05, 0.05)])
        look_xy = centre + rng.uniform(-0.2, 0.2, 2)
        tilt = np.deg2rad(rng.uniform(15.0, 20.0))
        look = np.array([*look_xy, eye[2] - np.linalg.norm(look_xy - eye_xy) * np.tan(tilt)])
        forward = (look - eye) / np.linalg.norm(look - eye)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        poses[k, :3, :3] = np.stack([right, down, forward], axis=1)
        poses[k, :3, 3] = eye
        poses[k, 3, 3] = 1.0
    return poses.astype(np.float32).astype(np.float64)  # exactly what .sens stores


def pinhole(size: tuple[int, int], focal_at_ref: float, ref_width: int) -> np.ndarray:
    """[4, 4] float64 intrinsics for an image of `size` (w, h): f scaled from `ref_width`, centre (w-1)/2, (h-1)/2."""
    w, h = size
    f = focal_at_ref * w / ref_width
    k = np.array([[f, 0, (w - 1) / 2, 0], [0, f, (h - 1) / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return k.astype(np.float32).astype(np.float64)


def _hit_room(room: Room, origin: np.ndarray, d: np.ndarray, inv: np.ndarray):
    """Nearest hit of rays d [3, N] from `origin` (inside the room) against the inside-facing shell and the
    furniture. Returns t [N] (inf = none), box [N] (-1 = none), normal axis [N]."""
    n_rays = d.shape[1]
    # shell seen from inside: exit through a wall or the floor; the room has no ceiling (rays may escape)
    upper = np.array([room.size[0], room.size[1], np.inf])[:, None]
    with np.errstate(invalid="ignore"):
        t_axis = np.where(d != 0, (np.where(d > 0, upper, 0.0) - origin[:, None]) * inv, np.inf)
    axis = t_axis.argmin(0)
    rows = np.arange(n_rays)
    t = t_axis[axis, rows]
    shell_box = np.array([[1, 2], [3, 4], [0, 0]])[axis, (d[axis, rows] > 0).astype(np.int64)]
    escaped = ~np.isfinite(t) | (origin[2] + t * d[2] > room.size[2])
    t = np.where(escaped, np.inf, t)
    box = np.where(escaped, -1, shell_box)
    # furniture seen from outside: slab test, entry distance
    furniture = room.boxes[5:]
    lo = np.stack([b.lo for b in furniture], 1)[:, :, None] - origin[:, None, None]  # [3, F, 1]
    hi = np.stack([b.hi for b in furniture], 1)[:, :, None] - origin[:, None, None]
    with np.errstate(invalid="ignore"):
        t1, t2 = lo * inv[:, None, :], hi * inv[:, None, :]  # [3, F, N]
    t_min = np.minimum(t1, t2)
    t_enter, t_exit = t_min.max(0), np.maximum(t1, t2).min(0)
    t_enter = np.where((t_enter <= t_exit) & (t_enter > 0), t_enter, np.inf)  # [F, N]
    f = t_enter.argmin(0)
    t_f = t_enter[f, rows]
    closer = t_f < t
    t = np.where(closer, t_f, t)
    box = np.where(closer, 5 + f, box)
    axis = np.where(closer, t_min[:, f, rows].argmax(0), axis)
    return t, box, axis


def cast_rays(room: Room, intrinsic: np.ndarray, pose: np.ndarray, size: tuple[int, int], chunk: int = 65536):
    """Nearest surface hit for every pixel (u = column, v = row, rays through integer pixel coordinates).

    Returns z [h, w] float64 metres along the optical axis (inf = no hit), box [h, w] int64 index into
    room.boxes (-1 = none), points [h, w, 3] float64 world hit points, axis / sign [h, w] int64 face normal.
    """
    w, h = size
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    d_cam = np.stack([((u - intrinsic[0, 2]) / intrinsic[0, 0]).ravel(),
                      ((v - intrinsic[1, 2]) / intrinsic[1, 1]).ravel(), np.ones(u.size)])
    dirs = pose[:3, :3] @ d_cam  # [3, N]; camera z-component 1, so the ray parameter t is the depth Z
    origin = pose[:3, 3]
    with np.errstate(divide="ignore"):
        inv = 1.0 / dirs
    parts = [_hit_room(room, origin, dirs[:, s:s + chunk], inv[:, s:s + chunk]) for s in range(0, u.size, chunk)]
    z, box, axis = (np.concatenate(x) for x in zip(*parts))
    hit = box >= 0
    rows = np.arange(u.size)
    points = (origin[:, None] + np.where(hit, z, 0.0) * dirs).T
    sign = -np.sign(dirs[axis, rows]).astype(np.int64)
    # snap the hit coordinate onto the exact face plane so the texture lattice is evaluated consistently
    lo, hi = np.stack([b.lo for b in room.boxes]), np.stack([b.hi for b in room.boxes])
    plane = np.where(sign > 0, hi[box, axis], lo[box, axis])
    points[rows[hit], axis[hit]] = plane[hit]
    return (z.reshape(h, w), box.reshape(h, w), points.reshape(h, w, 3), axis.reshape(h, w),
            sign.reshape(h, w))


def surface_color(room: Room, points: np.ndarray, box: np.ndarray, axis: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """[N, 3] float64 RGB (0..255) of surface points [N, 3] on faces (box index, normal axis, normal sign) [N]."""
    base = np.stack([b.rgb for b in room.boxes])[box]
    normal = np.zeros_like(points)
    normal[np.arange(len(points)), axis] = sign
    shade = 0.6 + 0.4 * np.clip(normal @ _LIGHT, 0.0, None) + 0.15 * (axis == 2)
    a1, a2 = (axis + 1) % 3, (axis + 2) % 3
    rows = np.arange(len(points))
    s, t = points[rows, a1], points[rows, a2]
    cells = np.stack([np.floor(s / 0.08), np.floor(t / 0.08)], -1).astype(np.int64).view(np.uint64)
    hsh = (cells[:, 0] * np.uint64(73856093)) ^ (cells[:, 1] * np.uint64(19349663)) \
        ^ (box.astype(np.uint64) * np.uint64(83492791))
    hsh = (hsh ^ (hsh >> np.uint64(13))) * np.uint64(1274126177)
    noise = ((hsh >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.float64) / 65535.0 - 0.5
    stripes = 0.06 * np.sin(2 * np.pi * (0.8 * s + 0.6 * t) / 0.3 + box)
    return np.clip(base * (shade * (1.0 + 0.3 * noise + stripes))[:, None], 0.0, 255.0)


def render(room: Room, intrinsic: np.ndarray, pose: np.ndarray, size: tuple[int, int],
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render (colour [h, w, 3] uint8, depth [h, w] uint16 mm, 0 = no hit or beyond 10 m) of one view.

    rng: if given, adds N(0, 2) sensor noise to the colour.
    """
    z, box, points, axis, sign = cast_rays(room, intrinsic, pose, size)
    hit = box >= 0
    rgb = np.zeros(points.shape)
    rgb[hit] = surface_color(room, points[hit], box[hit], axis[hit], sign[hit])
    if rng is not None:
        rgb += rng.normal(0.0, 2.0, rgb.shape)
    depth = np.where(hit & (z <= MAX_DEPTH), np.round(np.where(hit, z, 0.0) * 1000.0), 0.0)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), depth.astype(np.uint16)


def room_mesh(room: Room, spacing: float = 0.05):
    """Triangle mesh of the visible faces: vertices [V, 3] float32, faces [F, 3] int32 (outward winding),
    vertex labels [V] uint16 nyu40, vertex colours [V, 3] uint8 (same shading/texture as the renderer)."""
    verts, tris, labels, info = [], [], [], []
    offset = 0
    shell = [(0, 2, 1), (1, 0, 1), (2, 0, -1), (3, 1, 1), (4, 1, -1)]  # (box, normal axis, sign) facing inwards
    for b, ax, sgn in shell + [(b, ax, sgn) for b in range(5, len(room.boxes)) for ax in range(3) for sgn in (-1, 1)]:
        box = room.boxes[b]
        lo = np.maximum(box.lo, 0.0) if b < 5 else box.lo  # room shell: only the part facing the free space
        hi = np.minimum(box.hi, room.size) if b < 5 else box.hi
        a1, a2 = (ax + 1, ax + 2) if sgn > 0 else (ax + 2, ax + 1)
        a1, a2 = a1 % 3, a2 % 3
        n1 = max(1, int(np.ceil((hi[a1] - lo[a1]) / spacing)))
        n2 = max(1, int(np.ceil((hi[a2] - lo[a2]) / spacing)))
        g1, g2 = np.meshgrid(np.linspace(lo[a1], hi[a1], n1 + 1), np.linspace(lo[a2], hi[a2], n2 + 1),
                             indexing="ij")
        p = np.empty((g1.size, 3))
        p[:, ax] = box.hi[ax] if sgn > 0 else box.lo[ax]
        p[:, a1], p[:, a2] = g1.ravel(), g2.ravel()
        idx = np.arange(g1.size).reshape(n1 + 1, n2 + 1) + offset
        v00, v10, v11, v01 = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
        tris.append(np.stack([np.stack([v00, v10, v11], -1).reshape(-1, 3),
                              np.stack([v00, v11, v01], -1).reshape(-1, 3)], 1).reshape(-1, 3))
        verts.append(p)
        labels.append(np.full(len(p), box.label))
        info.append(np.tile([b, ax, sgn], (len(p), 1)))
        offset += len(p)
    verts, info, tris = np.concatenate(verts), np.concatenate(info), np.concatenate(tris)
    # drop hidden triangles (furniture bottoms, floor under furniture): centroid + 1 mm normal inside a box
    normal = np.zeros((len(tris), 3))
    normal[np.arange(len(tris)), info[tris[:, 0], 1]] = info[tris[:, 0], 2]
    probe = verts[tris].mean(1) + 1e-3 * normal
    hidden = np.zeros(len(tris), dtype=bool)
    for box in room.boxes:
        hidden |= ((probe > box.lo) & (probe < box.hi)).all(1)
    tris = tris[~hidden]
    used = np.unique(tris)
    remap = np.zeros(len(verts), dtype=np.int64)
    remap[used] = np.arange(len(used))
    verts, info = verts[used], info[used]
    colors = surface_color(room, verts, info[:, 0], info[:, 1], info[:, 2])
    return (verts.astype(np.float32), remap[tris].astype(np.int32),
            np.concatenate(labels)[used].astype(np.uint16), np.round(colors).astype(np.uint8))


def write_mesh_ply(path: str, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray,
                   labels: np.ndarray | None = None) -> None:
    """Binary little-endian PLY: vertex x,y,z float, red,green,blue,alpha uchar (+ label ushort); face
    `list uchar int vertex_indices`."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    vertex = np.empty(len(verts), dtype=fields + ([("label", "u2")] if labels is not None else []))
    vertex["x"], vertex["y"], vertex["z"] = verts.T
    vertex["red"], vertex["green"], vertex["blue"] = colors.T
    vertex["alpha"] = 255
    if labels is not None:
        vertex["label"] = labels
    face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = faces
    ply = PlyData([PlyElement.describe(vertex, "vertex"),
                   PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"},
                                       val_types={"vertex_indices": "i4"})], byte_order="<")
    # plyfile writes list properties row by row (slow); the body is written with numpy instead, byte for byte
    # what plyfile writes: packed little-endian vertex records, then per face uchar 3 + int32[3].
    packed = np.empty(len(faces), dtype=[("n", "u1"), ("vertex_indices", "<i4", (3,))])
    packed["n"], packed["vertex_indices"] = 3, faces
    with open(path + ".partial", "wb") as f:
        f.write(ply.header.encode("ascii") + b"\n")
        f.write(vertex.astype(vertex.dtype.newbyteorder("<")).tobytes())
        f.write(packed.tobytes())
    os.replace(path + ".partial", path)


def _write_meta(path: str, k_color: np.ndarray, k_depth: np.ndarray, color_size, depth_size, n: int) -> None:
    identity = " ".join(["%f" % x for x in np.eye(4).ravel()])
    meta = {"axisAlignment": identity, "colorHeight": color_size[1], "colorToDepthExtrinsics": identity,
            "colorWidth": color_size[0], "depthHeight": depth_size[1], "depthWidth": depth_size[0],
            "fx_color": "%f" % k_color[0, 0], "fx_depth": "%f" % k_depth[0, 0],
            "fy_color": "%f" % k_color[1, 1], "fy_depth": "%f" % k_depth[1, 1],
            "mx_color": "%f" % k_color[0, 2], "mx_depth": "%f" % k_depth[0, 2],
            "my_color": "%f" % k_color[1, 2], "my_depth": "%f" % k_depth[1, 2],
            "numColorFrames": n, "numDepthFrames": n, "numIMUmeasurements": 0, "sceneType": "Living room / Lounge"}
    with open(path, "w") as f:
        f.writelines(f"{key} = {meta[key]}\n" for key in sorted(meta))


def _savetxt(path: str, mat: np.ndarray) -> None:
    """4x4 matrix, 9 significant digits: float32 values (the .sens precision) round-trip exactly."""
    np.savetxt(path, mat, fmt="%.9g")


def generate_scannet(root: str | os.PathLike, num_scenes: int = 2, frames_per_scene: int = 30,
                     color_size: tuple[int, int] = (320, 240), depth_size: tuple[int, int] = (160, 120),
                     seed: int = 0, write_sens: bool = True, write_exported: bool = True,
                     val_fraction: float = 0.5, mesh_spacing: float = 0.05, progress: bool = False,
                     room_size: tuple[float, float] = (4.0, 6.0)) -> list[str]:
    """Write `root/scans/scene%04d_00/` scans and `root/scannetv2_{train,val}.txt`; returns the scene ids.
    `room_size`: (min, max) of the rooms' side lengths in metres (real ScanNet rooms reach ~10 m).

    Sizes are (width, height) pixels. The last round(num_scenes * val_fraction) scenes form the val split
    (at least one of each split when num_scenes >= 2 and 0 < val_fraction < 1). Deterministic for a seed.
    """
    if not (write_sens or write_exported):
        raise ValueError("nothing to write: enable write_sens and/or write_exported")
    if num_scenes < 1 or frames_per_scene < 1:
        raise ValueError(f"need num_scenes >= 1 and frames_per_scene >= 1, got {num_scenes}, {frames_per_scene}")
    root = os.fspath(root)
    k_color = pinhole(color_size, COLOR_FX_1296, 1296)
    k_depth = pinhole(depth_size, DEPTH_FX_640, 640)
    names = [f"scene{s:04d}_00" for s in range(num_scenes)]
    bar = tqdm(total=num_scenes * frames_per_scene, unit="frame", disable=not progress)
    for s, name in enumerate(names):
        rng = scene_rng(seed, s)
        room = make_room(rng, room_size)
        poses = camera_path(room, frames_per_scene, rng)
        out = os.path.join(root, "scans", name)
        os.makedirs(out, exist_ok=True)
        jpegs, depths = [], []
        for pose in poses:
            color, _ = render(room, k_color, pose, color_size, rng)
            _, depth = render(room, k_depth, pose, depth_size)
            buf = io.BytesIO()
            Image.fromarray(color).save(buf, format="JPEG", quality=95)
            jpegs.append(buf.getvalue())
            depths.append(depth)
            bar.update(1)
        if write_sens:
            _write_sens_file(os.path.join(out, f"{name}.sens"), k_color, k_depth, jpegs, depths, poses)
        if write_exported:
            for sub in ("color", "depth", "pose", "intrinsic"):
                os.makedirs(os.path.join(out, sub), exist_ok=True)
            for i, (jpeg, depth, pose) in enumerate(zip(jpegs, depths, poses)):
                with open(os.path.join(out, "color", f"{i}.jpg"), "wb") as f:
                    f.write(jpeg)
                Image.fromarray(depth).save(os.path.join(out, "depth", f"{i}.png"))
                _savetxt(os.path.join(out, "pose", f"{i}.txt"), pose)
            for cam, k in (("color", k_color), ("depth", k_depth)):
                _savetxt(os.path.join(out, "intrinsic", f"intrinsic_{cam}.txt"), k)
                _savetxt(os.path.join(out, "intrinsic", f"extrinsic_{cam}.txt"), np.eye(4))
        verts, faces, labels, colors = room_mesh(room, mesh_spacing)
        write_mesh_ply(os.path.join(out, f"{name}_vh_clean_2.ply"), verts, faces, colors)
        palette = np.array(NYU40_PALETTE, dtype=np.uint8)[labels]
        write_mesh_ply(os.path.join(out, f"{name}_vh_clean_2.labels.ply"), verts, faces, palette, labels)
        _write_meta(os.path.join(out, f"{name}.txt"), k_color, k_depth, color_size, depth_size, frames_per_scene)
    bar.close()
    n_val = int(round(num_scenes * val_fraction))
    if num_scenes >= 2 and 0 < val_fraction < 1:
        n_val = min(max(n_val, 1), num_scenes - 1)
    for split, split_names in (("train", names[:num_scenes - n_val]), ("val", names[num_scenes - n_val:])):
        with open(os.path.join(root, f"scannetv2_{split}.txt"), "w") as f:
            f.writelines(f"{n}\n" for n in split_names)
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write small synthetic ScanNet scans in the real layout.")
    p.add_argument("--out", required=True, help="output root (gets scans/ and scannetv2_*.txt)")
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--frames", type=int, default=30, help="frames per scene")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    p.add_argument("--depth-size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    p.add_argument("--val-fraction", type=float, default=0.5)
    p.add_argument("--mesh-spacing", type=float, default=0.05, help="mesh vertex spacing in metres")
    p.add_argument("--no-sens", action="store_true", help="do not write <scene>.sens")
    p.add_argument("--no-exported", action="store_true", help="do not write color/ depth/ pose/ intrinsic/")
    p.add_argument("--room-size", type=float, nargs=2, default=(4.0, 6.0), metavar=("MIN", "MAX"),
                   help="range of the rooms' side lengths in metres")
    a = p.parse_args(argv)
    names = generate_scannet(a.out, a.scenes, a.frames, tuple(a.color_size), tuple(a.depth_size), a.seed,
                             not a.no_sens, not a.no_exported, a.val_fraction, a.mesh_spacing, progress=True,
                             room_size=tuple(a.room_size))
    print(f"wrote {len(names)} scenes to {os.path.join(a.out, 'scans')}")


if __name__ == "__main__":
    main()
