"""Synthetic SUN RGB-D samples in votenet's prepared format (``sunrgbd_pc_bbox_votes_50k_<version>_{train,val}``).

A sample is the view of a camera at the origin in upright depth coordinates (X right, Y forward, Z up): a floor
patch 1.2 m below it, a back wall, and 2-4 objects of distinct classes of ``OBJECTS`` standing on the floor at
random headings without overlapping. Object shapes come from ``datamodules.synthetic.shapes`` stretched to 2 cm
inside their box; colours are a class colour x a per-instance tint + noise; half of the points go to the
objects. Everything is written in votenet's own convention, independently of the reader: boxes are
(centre, HALF sizes l w h, heading, class), a box-frame point p sits at ``rotz(-heading) p + centre`` (votenet's
``my_compute_box_3d``), and the vote file marks the points inside each box's hull (scipy Delaunay of its 8
corners, votenet's ``extract_pc_in_box3d``) and fills the 3 vote slots as votenet's ``sunrgbd_data.py``. The
first ``empty_scenes`` training samples hold no object (votenet keeps such samples).

    python -m datamodules.synthetic.sunrgbd --out DIR --train 4 --val 2 --points 20000
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.spatial import Delaunay

from datamodules.synthetic.shapes import sample_shape

# class id (votenet type2class): (shape in datamodules.synthetic.shapes, full size (l, w, h) metres, rgb 0..1)
OBJECTS = {
    0: ("cube", (2.0, 1.5, 0.5), (0.80, 0.80, 0.90)),       # bed
    1: ("table", (1.2, 0.8, 0.75), (0.25, 0.65, 0.25)),     # table
    3: ("stairs", (0.55, 0.55, 0.85), (0.80, 0.15, 0.25)),  # chair
    4: ("cup", (0.45, 0.45, 0.75), (0.95, 0.95, 0.95)),     # toilet
    8: ("cube", (0.4, 1.0, 1.7), (0.45, 0.30, 0.15)),       # bookshelf
}
FLOOR_Z, WALL_Y, MARGIN, NOISE = -1.2, 5.0, 0.02, 0.003


def votenet_rotz(t: float) -> np.ndarray:
    """votenet's ``rotz``: [3,3] rotation about z by ``t``."""
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def votenet_corners(centre: np.ndarray, half: np.ndarray, heading: float) -> np.ndarray:
    """votenet's ``my_compute_box_3d``: [8,3] corners of a box of half sizes (l, w, h) and heading."""
    l, w, h = half
    local = np.array([[-l, l, l, -l, -l, l, l, -l], [w, w, -w, -w, w, w, -w, -w], [h, h, h, h, -h, -h, -h, -h]])
    return (votenet_rotz(-heading) @ local).T + centre


def _objects(rng: np.random.Generator) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """(class, centre, half sizes, votenet heading) of 2-4 non-overlapping objects on the floor."""
    out = []
    for cls in rng.choice(sorted(OBJECTS), size=rng.integers(2, 5), replace=False):
        half = np.array(OBJECTS[cls][1]) * rng.uniform(0.9, 1.1, 3) / 2
        radius = np.hypot(half[0], half[1])
        for _ in range(200):
            xy = rng.uniform([-2.0 + radius, 1.0 + radius], [2.0 - radius, WALL_Y - 0.1 - radius])
            if all(np.hypot(*(xy - c[:2])) > radius + np.hypot(o[0], o[1]) for _, c, o, _ in out):
                centre = np.array([xy[0], xy[1], FLOOR_Z + 0.01 + half[2]])
                out.append((int(cls), centre, half, float(rng.uniform(-np.pi, np.pi))))
                break
    return out


def make_sample(rng: np.random.Generator, num_points: int, empty: bool = False) -> dict[str, np.ndarray]:
    """One sample in votenet's format: pc [N,6] float64 (rgb 0..1), bbox [K,8] float64, point_votes [N,10]."""
    objects = [] if empty else _objects(rng)
    n_objects = num_points // 2 if objects else 0
    parts = []
    if objects:
        surface = np.array([(h[0] * h[1] + h[0] * h[2] + h[1] * h[2]) for _, _, h, _ in objects])
        for (cls, centre, half, heading), count in zip(objects, rng.multinomial(n_objects, surface / surface.sum())):
            local, _, _ = sample_shape(OBJECTS[cls][0], max(int(count), 8), rng, vary=False)
            lo, hi = local.min(0), local.max(0)
            local = (local - lo) / np.maximum(hi - lo, 1e-9) * (2 * (half - MARGIN)) - (half - MARGIN)
            parts.append((local @ votenet_rotz(-heading).T + centre, OBJECTS[cls][2]))
    n_floor = (num_points - n_objects) * 2 // 3
    floor = np.stack([rng.uniform(-2, 2, n_floor), rng.uniform(1, WALL_Y, n_floor), np.full(n_floor, FLOOR_Z)], 1)
    n_wall = num_points - n_objects - n_floor
    wall = np.stack([rng.uniform(-2, 2, n_wall), np.full(n_wall, WALL_Y), rng.uniform(FLOOR_Z, 1.3, n_wall)], 1)
    parts += [(floor, (0.45, 0.35, 0.25)), (wall, (0.75, 0.72, 0.65))]
    xyz = np.concatenate([p for p, _ in parts])
    rgb = np.concatenate([np.asarray(c) * rng.uniform(0.85, 1.15, 3) + rng.normal(0, 0.03, p.shape)
                          for p, c in parts])
    order = rng.permutation(len(xyz))[:num_points]
    pc = np.concatenate([xyz + rng.normal(0, NOISE, xyz.shape), np.clip(rgb, 0, 1)], 1)[order]
    bbox = np.array([[*c, *h, heading, cls] for cls, c, h, heading in objects], dtype=np.float64).reshape(-1, 8)
    return {"pc": pc, "bbox": bbox, "point_votes": votenet_votes(pc[:, :3], bbox)}


def votenet_votes(xyz: np.ndarray, bbox: np.ndarray) -> np.ndarray:
    """[N,10] float64 as votenet's ``extract_sunrgbd_data``: column 0 = inside some box's hull, then up to 3
    votes centre - point (a point's first vote fills all 3 slots; later boxes fill slots 2, 3, 3, ...)."""
    votes = np.zeros((len(xyz), 10))
    slot = np.zeros(len(xyz), dtype=np.int64)
    for box in bbox:
        inside = np.nonzero(Delaunay(votenet_corners(box[:3], box[3:6], box[6])).find_simplex(xyz) >= 0)[0]
        votes[inside, 0] = 1
        vote = box[:3] - xyz[inside]
        for s in range(3):
            pick = slot[inside] == s
            votes[inside[pick], 1 + 3 * s:4 + 3 * s] = vote[pick]
        first = slot[inside] == 0
        votes[inside[first], 4:7] = vote[first]
        votes[inside[first], 7:10] = vote[first]
        slot[inside] = np.minimum(2, slot[inside] + 1)
    return votes


def generate_sunrgbd(root: str | Path, num_train: int = 4, num_val: int = 2, points_per_scene: int = 20000,
                     version: str = "v1", seed: int = 0, empty_scenes: int = 1) -> dict[str, list[str]]:
    """Write ``root/sunrgbd_pc_bbox_votes_50k_<version>_{train,val}/%06d_{pc.npz,bbox.npy,votes.npz}`` and
    ``root/sunrgbd_trainval/{train,val}_data_idx.txt`` (val image ids first, as in SUN RGB-D); returns
    {"train": names, "val": names}."""
    root = Path(root)
    ids = {"val": list(range(1, num_val + 1)), "train": list(range(num_val + 1, num_val + num_train + 1))}
    (root / "sunrgbd_trainval").mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "val"):
        folder = root / f"sunrgbd_pc_bbox_votes_50k_{version}_{split}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, image_id in enumerate(ids[split]):
            sample = make_sample(np.random.default_rng([seed, image_id]), points_per_scene,
                                 empty=split == "train" and k < empty_scenes)
            np.savez_compressed(folder / f"{image_id:06d}_pc.npz", pc=sample["pc"])
            np.save(folder / f"{image_id:06d}_bbox.npy", sample["bbox"])
            np.savez_compressed(folder / f"{image_id:06d}_votes.npz", point_votes=sample["point_votes"])
        (root / "sunrgbd_trainval" / f"{split}_data_idx.txt").write_text("".join(f"{i}\n" for i in ids[split]))
        out[split] = [f"{i:06d}" for i in ids[split]]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output root (gets the prepared folders, sunrgbd_trainval/)")
    parser.add_argument("--train", type=int, default=4, help="training samples")
    parser.add_argument("--val", type=int, default=2, help="validation samples")
    parser.add_argument("--points", type=int, default=20000, help="points per sample")
    parser.add_argument("--version", choices=("v1", "v2"), default="v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--empty-scenes", type=int, default=1, help="training samples without objects")
    args = parser.parse_args(argv)
    splits = generate_sunrgbd(args.out, args.train, args.val, args.points, args.version, args.seed, args.empty_scenes)
    print(f"wrote {len(splits['train'])} train and {len(splits['val'])} val samples under {args.out}")


if __name__ == "__main__":
    main()
