"""Procedural 3D shapes for the synthetic object datasets: points drawn uniformly (by area) on their surfaces.

A shape is a list of parts: surfaces of revolution about the z axis (a polyline profile of (radius, z) points:
cylinders, cones, spheres, tori, vases, ...) and flat polygons (rectangles and triangles: boxes, steps, tents).
Coordinates are z-up, about one unit across; ``sample_shape`` varies each shape's proportions (±15 %) and turns
it about z at random, so that instances of a class differ but stay recognisable.
"""
from __future__ import annotations

import numpy as np


def _arc(radius: float, z0: float, start: float, stop: float, steps: int = 16) -> list[tuple[float, float]]:
    """(r, z) polyline of a circle arc centred on the axis at height z0, angles from the -z pole."""
    return [(radius * np.sin(a), z0 - radius * np.cos(a)) for a in np.linspace(start, stop, steps)]


def _box(lo, hi) -> list[tuple]:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    dx, dy, dz = np.diag(hi - lo)
    return [("rect", lo, dx, dy), ("rect", lo + dz, dx, dy), ("rect", lo, dx, dz), ("rect", lo + dy, dx, dz),
            ("rect", lo, dy, dz), ("rect", lo + dx, dy, dz)]


def _profile(points) -> tuple:
    return ("revolve", np.asarray(points, float))


def _torus(major: float, minor: float) -> list[tuple]:
    a = np.linspace(0, 2 * np.pi, 25)
    return [_profile(np.stack([major + minor * np.cos(-a), minor * np.sin(-a)], 1))]


def _table() -> list[tuple]:
    parts = _box([-0.6, -0.4, 0.70], [0.6, 0.4, 0.76])
    for x in (-0.55, 0.5):
        for y in (-0.35, 0.3):
            parts += _box([x, y, 0], [x + 0.05, y + 0.05, 0.70])
    return parts


def _stairs() -> list[tuple]:
    return [p for k in range(4) for p in _box([0, 0.25 * k, 0], [0.8, 0.25 * (k + 1), 0.2 * (k + 1)])]


def _tent() -> list[tuple]:
    a, b, c = np.array([-0.5, -0.7, 0]), np.array([0.5, -0.7, 0]), np.array([0, -0.7, 0.7])
    length = np.array([0, 1.4, 0])
    return [("rect", a, c - a, length), ("rect", b, c - b, length), ("tri", a, b - a, c - a),
            ("tri", a + length, b - a, c - a)]


def _pyramid() -> list[tuple]:
    base = [np.array(p, float) for p in ((-0.5, -0.5, 0), (0.5, -0.5, 0), (0.5, 0.5, 0), (-0.5, 0.5, 0))]
    apex = np.array([0, 0, 0.8])
    return [("rect", base[0], base[1] - base[0], base[3] - base[0])] + [
        ("tri", base[i], base[(i + 1) % 4] - base[i], apex - base[i]) for i in range(4)]


SHAPES = {
    "sphere": lambda: [_profile(_arc(0.5, 0.5, 0, np.pi, 24))],
    "cube": lambda: _box([-0.5, -0.5, 0], [0.5, 0.5, 1]),
    "cylinder": lambda: [_profile([(0, 0), (0.35, 0), (0.35, 1.0), (0, 1.0)])],
    "cone": lambda: [_profile([(0, 0), (0.45, 0), (0, 1.0)])],
    "torus": lambda: _torus(0.45, 0.15),
    "pyramid": _pyramid,
    "bowl": lambda: [_profile(_arc(0.5, 0.5, 0, 0.55 * np.pi))],
    "cup": lambda: [_profile([(0, 0), (0.3, 0), (0.33, 0.8)])],
    "bottle": lambda: [_profile([(0, 0), (0.25, 0), (0.25, 0.6), (0.1, 0.8), (0.1, 1.0)])],
    "flower_pot": lambda: [_profile([(0, 0), (0.25, 0), (0.4, 0.5)])],
    "vase": lambda: [_profile([(0, 0)] + [(0.2 + 0.12 * np.sin(np.pi * z * 1.5), z) for z in np.linspace(0, 1, 12)])],
    "lamp": lambda: [_profile([(0, 0), (0.25, 0), (0.25, 0.04), (0.03, 0.06), (0.03, 0.75)]),
                     _profile([(0.12, 0.7), (0.3, 1.0)])],
    "glass_box": lambda: _box([-0.5, -0.5, 0], [0.5, 0.5, 1]),
    "table": _table,
    "stairs": _stairs,
    "tent": _tent,
    "door": lambda: _box([-0.45, -0.03, 0], [0.45, 0.03, 2.0]),
    "keyboard": lambda: _box([-0.45, -0.15, 0], [0.45, 0.15, 0.03]),
}


def _part_area(part) -> float:
    if part[0] == "revolve":
        (r0, z0), (r1, z1) = part[1][:-1].T, part[1][1:].T
        return float(np.sum(np.pi * (np.abs(r0) + np.abs(r1)) * np.hypot(r1 - r0, z1 - z0)))
    area = float(np.linalg.norm(np.cross(part[2], part[3])))
    return area if part[0] == "rect" else area / 2


def _sample_revolve(profile: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    (r0, z0), (r1, z1) = profile[:-1].T, profile[1:].T
    length = np.hypot(r1 - r0, z1 - z0)
    weight = np.pi * (r0 + r1) * length
    seg = rng.choice(len(weight), size=count, p=weight / weight.sum())
    a, b = r0[seg], r1[seg]
    u = rng.random(count)
    # radius with density ∝ r along the segment (a ring's circumference): r² uniform between a² and b²
    r = np.sqrt(a ** 2 + u * (b ** 2 - a ** 2))
    t = np.where(np.abs(b - a) > 1e-9, (r - a) / np.where(np.abs(b - a) > 1e-9, b - a, 1), u)
    z = z0[seg] + t * (z1[seg] - z0[seg])
    theta = rng.uniform(0, 2 * np.pi, count)
    n_r, n_z = (z1 - z0)[seg] / length[seg], -(r1 - r0)[seg] / length[seg]
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([r * c, r * s, z], 1), np.stack([n_r * c, n_r * s, n_z], 1)


def _sample_polygon(part, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    kind, origin, u, v = part
    a, b = rng.random(count), rng.random(count)
    if kind == "tri":
        flip = a + b > 1
        a, b = np.where(flip, 1 - a, a), np.where(flip, 1 - b, b)
    normal = np.cross(u, v)
    return origin + a[:, None] * u + b[:, None] * v, np.tile(normal / np.linalg.norm(normal), (count, 1))


def sample_shape(name: str, count: int, rng: np.random.Generator, vary: bool = True,
                 params: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` points on shape ``name`` -> (xyz [count,3], unit normals [count,3], params [4]).

    params = (scale x, scale y, scale z, turn about z in radians): drawn when ``vary`` (and not given), so a
    second call with the returned params samples the same instance again.
    """
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {sorted(SHAPES)}")
    if params is None:
        params = np.concatenate([rng.uniform(0.85, 1.15, 3), rng.uniform(0, 2 * np.pi, 1)]) if vary else \
            np.array([1.0, 1.0, 1.0, 0.0])
    parts = SHAPES[name]()
    area = np.array([_part_area(p) for p in parts])
    counts = rng.multinomial(count, area / area.sum())
    xyz, normal = [], []
    for part, n in zip(parts, counts):
        p, q = (_sample_revolve(part[1], n, rng) if part[0] == "revolve" else _sample_polygon(part, n, rng))
        xyz.append(p)
        normal.append(q)
    xyz, normal = np.concatenate(xyz), np.concatenate(normal)
    scale, turn = params[:3], params[3]
    c, s = np.cos(turn), np.sin(turn)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    xyz = (xyz * scale) @ rot.T
    normal = (normal / scale) @ rot.T  # normals transform with the inverse transpose of the scaling
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    order = rng.permutation(count)
    return xyz[order], normal[order], params
