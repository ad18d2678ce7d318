"""Synthetic ModelNet40 in both real formats: ``modelnet40_normal_resampled`` and ``modelnet40_ply_hdf5_2048``.

Shapes of a few real ModelNet40 classes are made procedurally (``shapes.py``: cone, bowl, cup, bottle,
flower_pot, vase, lamp, glass_box, table, stairs, tent, door, keyboard). Each instance is sampled twice: ``points``
points (with normals) for its txt file and ``h5_points`` for the h5 shards, both centred and scaled into the unit
sphere, y up (the z-up shape turned by (x, y, z) -> (x, z, -y)). Labels index the full 40-class list, ids are
``<class>_<NNNN>`` numbered per class, train before test, as in the release. The h5 shards hold the shapes in a
shuffled order with ``data``, ``normal`` and ``label`` uint8 [n,1], plus ``ply_data_<split>_<k>_id2file.json``.

    python -m datamodules.synthetic.modelnet40 --out DIR --train-per-class 4 --test-per-class 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

from datamodules.modelnet40.common import MODELNET40_CLASSES
from datamodules.modelnet40.h5 import H5_DIR
from datamodules.modelnet40.resampled import RESAMPLED_DIR
from datamodules.synthetic.shapes import sample_shape

DEFAULT_CLASSES = ("cone", "bowl", "cup", "bottle", "flower_pot", "vase", "lamp", "glass_box", "table", "stairs",
                   "tent", "door", "keyboard")


def _y_up_unit_sphere(xyz: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    turn = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)  # (x, y, z) -> (x, z, -y)
    xyz, normal = xyz @ turn.T, normal @ turn.T
    xyz = xyz - xyz.mean(0)
    return (xyz / np.linalg.norm(xyz, axis=1).max()).astype(np.float32), normal.astype(np.float32)


def generate_modelnet40(root: str | Path, classes=DEFAULT_CLASSES, train_per_class: int = 4, test_per_class: int = 2,
                        points: int = 10000, h5_points: int = 2048, shard_size: int = 2048, seed: int = 0,
                        formats=("resampled", "h5")) -> dict:
    """Write ``root/modelnet40_normal_resampled`` and/or ``root/modelnet40_ply_hdf5_2048``.

    Returns {"train": [(shape id, label)], "test": [...]} in id order.
    """
    unknown = [c for c in classes if c not in MODELNET40_CLASSES]
    if unknown:
        raise ValueError(f"not ModelNet40 classes: {unknown}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    shapes: dict[str, list] = {"train": [], "test": []}
    for cls in classes:
        for k in range(train_per_class + test_per_class):
            split = "train" if k < train_per_class else "test"
            xyz, normal, params = sample_shape(cls, points, rng)
            h5_xyz, h5_normal, _ = sample_shape(cls, h5_points, rng, params=params)
            shapes[split].append((f"{cls}_{k + 1:04d}", MODELNET40_CLASSES.index(cls), _y_up_unit_sphere(xyz, normal),
                                  _y_up_unit_sphere(h5_xyz, h5_normal)))
    if "resampled" in formats:
        _write_resampled(root / RESAMPLED_DIR, shapes)
    if "h5" in formats:
        _write_h5(root / H5_DIR, shapes, shard_size, rng)
    return {split: [(s[0], s[1]) for s in items] for split, items in shapes.items()}


def _write_resampled(folder: Path, shapes: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    for split, items in shapes.items():
        (folder / f"modelnet40_{split}.txt").write_text("".join(f"{shape_id}\n" for shape_id, *_ in items))
        for shape_id, label, (xyz, normal), _ in items:
            path = folder / MODELNET40_CLASSES[label] / f"{shape_id}.txt"
            path.parent.mkdir(exist_ok=True)
            np.savetxt(path, np.concatenate([xyz, normal], 1), fmt="%.6f", delimiter=",")


def _write_h5(folder: Path, shapes: dict, shard_size: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    for split, items in shapes.items():
        order = rng.permutation(len(items))
        lines = []
        for k, start in enumerate(range(0, len(items), shard_size)):
            chunk = [items[i] for i in order[start:start + shard_size]]
            name = f"ply_data_{split}{k}.h5"
            with h5py.File(folder / name, "w") as f:
                f.create_dataset("data", data=np.stack([c[3][0] for c in chunk]))
                f.create_dataset("normal", data=np.stack([c[3][1] for c in chunk]))
                f.create_dataset("label", data=np.array([[c[1]] for c in chunk], dtype=np.uint8))
            files = [f"{MODELNET40_CLASSES[c[1]]}/{c[0]}.ply" for c in chunk]
            (folder / f"ply_data_{split}_{k}_id2file.json").write_text(json.dumps(files))
            lines.append(f"data/{H5_DIR}/{name}\n")
        (folder / f"{split}_files.txt").write_text("".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output root (the format folders go inside)")
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), choices=DEFAULT_CLASSES)
    parser.add_argument("--train-per-class", type=int, default=4)
    parser.add_argument("--test-per-class", type=int, default=2)
    parser.add_argument("--points", type=int, default=10000, help="points per txt shape")
    parser.add_argument("--h5-points", type=int, default=2048, help="points per h5 shape")
    parser.add_argument("--shard-size", type=int, default=2048, help="shapes per h5 file")
    parser.add_argument("--formats", nargs="+", default=["resampled", "h5"], choices=["resampled", "h5"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = generate_modelnet40(args.out, args.classes, args.train_per_class, args.test_per_class, args.points,
                               args.h5_points, args.shard_size, args.seed, args.formats)
    print(f"wrote {len(info['train'])} train and {len(info['test'])} test shapes under {args.out}")


if __name__ == "__main__":
    main()
