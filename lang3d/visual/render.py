"""A small point-splat renderer in plain PyTorch (no gradient): coloured points -> RGB images.

The camera sits at ``distance`` from the origin at the given azimuth (degrees, about +z, 0 = on the +x axis)
and elevation (degrees above the xy-plane) and looks at the origin with +z up; a pinhole projection with a
vertical field of view ``fov`` (degrees). Each point is a square splat of ``radius`` pixels (a (2r+1)² block);
the nearest splat wins each pixel (z-buffer); pixels no splat covers are white.
"""
from __future__ import annotations

import math

import torch


def look_at_origin(azimuth: float, elevation: float, distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera pose looking at the origin, +z up -> (rotation [3,3] world->camera rows right/up/forward, centre [3])."""
    az, el = math.radians(azimuth), math.radians(elevation)
    centre = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)],
                          dtype=torch.float64) * distance
    forward = -centre / centre.norm()
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    right = torch.linalg.cross(forward, up)
    if right.norm() < 1e-8:   # looking straight down/up: any horizontal right vector
        right = torch.tensor([-math.sin(az), math.cos(az), 0.0], dtype=torch.float64)
    right = right / right.norm()
    cam_up = torch.linalg.cross(right, forward)
    return torch.stack([right, cam_up, forward]), centre


@torch.no_grad()
def render_points(xyz: torch.Tensor, rgb: torch.Tensor, *, azimuth: float = 0.0, elevation: float = 0.0,
                  distance: float = 3.0, image_size: int = 64, fov: float = 40.0, radius: int = 1) -> torch.Tensor:
    """Render points xyz [B,N,3] (world units) with colours rgb [B,N,3] in [0,1] -> images [B,3,H,W] float32 in
    [0,1], H = W = ``image_size``. The image centre is the projection of the origin; image row 0 is the top.
    Points behind the camera (or on its plane) are not drawn."""
    if xyz.ndim != 3 or xyz.shape[-1] != 3 or rgb.shape != xyz.shape:
        raise ValueError(f"render_points: xyz and rgb must both be [B,N,3], got {tuple(xyz.shape)} and "
                         f"{tuple(rgb.shape)}")
    if image_size < 1 or radius < 0 or not 0 < fov < 180 or distance <= 0:
        raise ValueError(f"render_points: need image_size >= 1, radius >= 0, 0 < fov < 180, distance > 0; got "
                         f"{image_size}, {radius}, {fov}, {distance}")
    batch, n = xyz.shape[:2]
    size = image_size
    rot, centre = look_at_origin(azimuth, elevation, distance)
    cam = (xyz.double() - centre.to(xyz.device)) @ rot.to(xyz.device).T          # [B,N,3]: right, up, depth
    depth = cam[..., 2]
    focal = 0.5 * size / math.tan(math.radians(fov) / 2)                           # pixels
    safe = torch.where(depth > 1e-9, depth, torch.ones_like(depth))
    col = torch.floor(size / 2 + focal * cam[..., 0] / safe).long()               # pixel containing the point
    row = torch.floor(size / 2 - focal * cam[..., 1] / safe).long()
    offsets = torch.arange(-radius, radius + 1, device=xyz.device)
    dr, dc = torch.meshgrid(offsets, offsets, indexing="ij")
    rows = (row[..., None] + dr.reshape(-1)).reshape(batch, -1)                   # [B, N*K]
    cols = (col[..., None] + dc.reshape(-1)).reshape(batch, -1)
    k = dr.numel()
    z = depth[..., None].expand(-1, -1, k).reshape(batch, -1)
    visible = (z > 1e-9) & (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    b_idx = torch.arange(batch, device=xyz.device)[:, None].expand_as(rows)
    pix = (b_idx * size * size + rows.clamp(0, size - 1) * size + cols.clamp(0, size - 1))[visible]
    z = z[visible]
    point = torch.arange(n, device=xyz.device).repeat_interleave(k).expand(batch, -1)[visible]
    zbuf = torch.full((batch * size * size,), float("inf"), dtype=torch.float64, device=xyz.device)
    zbuf.scatter_reduce_(0, pix, z, reduce="amin")
    winner = z == zbuf[pix]                                 # splats at the nearest depth of their pixel
    image = torch.ones(batch * size * size, 3, dtype=torch.float32, device=xyz.device)
    colours = rgb.float().clamp(0, 1)[b_idx[visible][winner], point[winner]]
    image[pix[winner]] = colours                            # exact depth ties: one of them, unspecified
    return image.reshape(batch, size, size, 3).permute(0, 3, 1, 2).contiguous()


def render_views(xyz: torch.Tensor, rgb: torch.Tensor, azimuths: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0),
                 elevation: float = 20.0, **kwargs) -> torch.Tensor:
    """Render each cloud from several azimuths -> [B,V,3,H,W] (V = len(azimuths)); kwargs as ``render_points``."""
    return torch.stack([render_points(xyz, rgb, azimuth=a, elevation=elevation, **kwargs) for a in azimuths], 1)
