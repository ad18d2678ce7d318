"""Synthetic ScanNet scans in votenet's prepared detection format (``scannet_train_detection_data``).

A scan is a room [0,Lx] x [0,Ly] (z up) with a floor (nyu40 2) and four 2 m walls (nyu40 1), each its own
instance as in ScanNet's aggregations, 3-5 pieces of furniture of distinct classes of ``OBJECTS`` standing on the
floor without overlapping (turned by multiples of 90 degrees: boxes stay axis-aligned), and one clutter box of
nyu40 40 (otherprop: an instance without a detection box, which must not vote). Furniture shapes come from
``datamodules.synthetic.shapes``, stretched to fill their box; colours are a class colour x a per-instance tint +
noise. Half of the points go to the furniture and clutter (by surface area), half to the room. Boxes are the
axis-aligned extents of each instance's points (votenet's ``load_scannet_data.py``).

    python -m datamodules.synthetic.scannet_detection --out DIR --scenes 6 --points 20000
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datamodules.synthetic.shapes import sample_shape

# nyu40 id: (shape in datamodules.synthetic.shapes, full size (dx, dy, dz) metres, rgb 0..255)
OBJECTS = {
    3: ("cube", (0.8, 0.5, 1.6), (150, 110, 70)),       # cabinet
    4: ("cube", (2.0, 1.5, 0.5), (200, 200, 230)),      # bed
    5: ("stairs", (0.5, 0.5, 0.9), (200, 40, 60)),      # chair
    7: ("table", (1.4, 0.8, 0.75), (60, 160, 60)),      # table
    39: ("cylinder", (0.4, 0.4, 0.6), (90, 90, 200)),   # otherfurniture: votenet's "garbage bin"
}
CLUTTER = (40, "cube", (0.3, 0.3, 0.3), (60, 60, 70))   # otherprop: no detection class
FLOOR, WALL = (2, (120, 90, 60)), (1, (180, 170, 150))
WALL_HEIGHT, NOISE = 2.0, 0.003


def _fit(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Stretch points [n,3] so that their extent is exactly [lo, hi]."""
    p_lo, p_hi = points.min(0), points.max(0)
    return lo + (points - p_lo) / np.maximum(p_hi - p_lo, 1e-9) * (hi - lo)


def _place(rng: np.random.Generator, sizes: list[np.ndarray], lx: float, ly: float) -> list[np.ndarray]:
    """Lower xy corners of non-overlapping footprints (0.2 m apart, 0.1 m from the walls); objects that do not
    fit after 200 tries are left out (their entry is None)."""
    placed, corners = [], []
    for size in sizes:
        corner = None
        for _ in range(200):
            c = rng.uniform([0.1, 0.1], [lx - 0.1 - size[0], ly - 0.1 - size[1]])
            if all(c[0] + size[0] + 0.2 <= q[0] or q[0] + s[0] + 0.2 <= c[0] or c[1] + size[1] + 0.2 <= q[1]
                   or q[1] + s[1] + 0.2 <= c[1] for q, s in placed):
                corner = c
                placed.append((c, size))
                break
        corners.append(corner)
    return corners


def _rect(rng: np.random.Generator, origin, u, v, count: int) -> np.ndarray:
    ab = rng.random((count, 2))
    return np.asarray(origin) + ab[:, :1] * np.asarray(u, float) + ab[:, 1:] * np.asarray(v, float)


def make_scan(rng: np.random.Generator, num_points: int,
              room_size: tuple[float, float] = (4.0, 6.0)) -> dict[str, np.ndarray]:
    """One scan in votenet's format: vert [N,6] float32, sem_label [N] uint32, ins_label [N] uint32, bbox [K,7]
    float64 (N = ``num_points``); the room's sides are uniform in ``room_size`` (metres)."""
    lx, ly = rng.uniform(*room_size, size=2)
    kinds = list(rng.choice(sorted(OBJECTS), size=rng.integers(3, 6), replace=False)) + [CLUTTER[0]]
    specs = [(OBJECTS[k] if k in OBJECTS else CLUTTER[1:]) for k in kinds]
    turns = rng.integers(0, 2, size=len(kinds))
    sizes = [np.array(size)[[1, 0, 2] if t else [0, 1, 2]] for (_, size, _), t in zip(specs, turns)]
    corners = _place(rng, sizes, lx, ly)
    kept = [i for i, c in enumerate(corners) if c is not None]
    surface = np.array([2 * (s[0] * s[1] + s[0] * s[2] + s[1] * s[2]) for s in (sizes[i] for i in kept)])
    object_counts = rng.multinomial(num_points // 2, surface / surface.sum())
    room_area = np.array([lx * ly] + [lx * WALL_HEIGHT, ly * WALL_HEIGHT] * 2)
    room_counts = rng.multinomial(num_points - num_points // 2, room_area / room_area.sum())
    walls = [([0, 0, 0], [lx, 0, 0]), ([0, 0, 0], [0, ly, 0]), ([0, ly, 0], [lx, 0, 0]), ([lx, 0, 0], [0, ly, 0])]
    parts = [(FLOOR, _rect(rng, [0, 0, 0], [lx, 0, 0], [0, ly, 0], room_counts[0]))]
    parts += [(WALL, _rect(rng, o, u, [0, 0, WALL_HEIGHT], n)) for (o, u), n in zip(walls, room_counts[1:])]
    for i, count in zip(kept, object_counts):
        shape, _, rgb = specs[i]
        local, _, _ = sample_shape(shape, max(int(count), 8), rng, params=np.array([1, 1, 1, turns[i] * np.pi / 2]))
        lo = np.array([*corners[i], 0.0])
        parts.append(((int(kinds[i]), rgb), _fit(local, lo, lo + sizes[i])))
    vert, sem, ins = [], [], []
    for instance, ((nyu40, rgb), points) in enumerate(parts, start=1):
        points = points + rng.normal(0, NOISE, size=points.shape)
        color = np.clip(np.asarray(rgb) * rng.uniform(0.85, 1.15, 3) + rng.normal(0, 8, points.shape), 0, 255)
        vert.append(np.concatenate([points, color], 1))
        sem.append(np.full(len(points), nyu40))
        ins.append(np.full(len(points), instance))
    order = rng.permutation(sum(len(v) for v in vert))[:num_points]
    vert = np.concatenate(vert)[order].astype(np.float32)
    sem, ins = np.concatenate(sem)[order].astype(np.uint32), np.concatenate(ins)[order].astype(np.uint32)
    return {"vert": vert, "sem_label": sem, "ins_label": ins, "bbox": _boxes(vert, sem, ins)}


def _boxes(vert: np.ndarray, sem: np.ndarray, ins: np.ndarray) -> np.ndarray:
    """votenet's boxes: per instance (by id) of a detection class, [cx, cy, cz, dx, dy, dz, nyu40] float64."""
    rows = []
    for instance in np.unique(ins):
        points = vert[ins == instance, :3]
        label = int(sem[ins == instance][0])
        if label in OBJECTS:
            lo, hi = points.min(0).astype(np.float64), points.max(0).astype(np.float64)
            rows.append([*((lo + hi) / 2), *(hi - lo), label])
    return np.array(rows, dtype=np.float64).reshape(-1, 7)


def generate_scannet_detection(root: str | Path, num_scenes: int = 6, points_per_scene: int = 20000, seed: int = 0,
                               val_fraction: float = 1 / 3,
                               room_size: tuple[float, float] = (4.0, 6.0)) -> dict[str, list[str]]:
    """Write ``root/scannet_train_detection_data/<scan>_{vert,sem_label,ins_label,bbox}.npy`` and
    ``root/meta_data/scannetv2_{train,val}.txt``; returns {"train": scans, "val": scans}. ``room_size``: (min,
    max) of the rooms' side lengths in metres (real ScanNet rooms reach ~10 m)."""
    root = Path(root)
    data, meta = root / "scannet_train_detection_data", root / "meta_data"
    data.mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    names = [f"scene{i:04d}_00" for i in range(num_scenes)]
    for i, name in enumerate(names):
        scan = make_scan(np.random.default_rng([seed, i]), points_per_scene, room_size)
        for key, array in scan.items():
            np.save(data / f"{name}_{key}.npy", array)
    n_val = min(max(int(round(num_scenes * val_fraction)), 1), num_scenes - 1) if num_scenes > 1 else 0
    splits = {"train": names[:num_scenes - n_val], "val": names[num_scenes - n_val:]}
    for split, scans in splits.items():
        (meta / f"scannetv2_{split}.txt").write_text("".join(f"{s}\n" for s in scans))
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output root (gets scannet_train_detection_data/, meta_data/)")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--points", type=int, default=20000, help="points per scan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=1 / 3)
    parser.add_argument("--room-size", type=float, nargs=2, default=(4.0, 6.0), metavar=("MIN", "MAX"),
                        help="range of the rooms' side lengths in metres")
    args = parser.parse_args(argv)
    splits = generate_scannet_detection(args.out, args.scenes, args.points, args.seed, args.val_fraction,
                                        tuple(args.room_size))
    print(f"wrote {len(splits['train'])} train and {len(splits['val'])} val scans under {args.out}")


if __name__ == "__main__":
    main()
