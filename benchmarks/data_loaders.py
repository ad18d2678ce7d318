"""Samples per second one process prepares for the fine-tuning and alignment loaders, on synthetic data at the real
datasets' sizes: S3DIS rooms (a 40 m hallway included) at 5 cm, ScanNet and SUN RGB-D detection scans at 2.5 cm,
Cap3D objects with a rendered view. Pre-training's ScanNet frames: ``benchmarks/text4point_pretrain.py``.

    python benchmarks/data_loaders.py [--only s3dis scannet_det sunrgbd cap3d] [--repeats 3]

Each figure is the median over ``--repeats`` passes of building every sample of the set in one process
(``dataset[i]``, the training or the evaluation transform) and collating them in batches, with the CPU time per
sample beside it (robust to a busy machine). Prints figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from datamodules import Cap3DDataModule, S3DISDataModule, ScanNetDetectionDataModule, SUNRGBDDataModule
from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.s3dis import generate_s3dis
from datamodules.synthetic.scannet_detection import generate_scannet_detection
from datamodules.synthetic.sunrgbd import generate_sunrgbd
from lang3d.training.timing import record

S3DIS_POINTS = 1_000_000      # S3DIS: ~273 M points over 271 rooms
HALLWAY_POINTS = 2_000_000    # the 40 × 2.5 m hallway at the same density of its larger surfaces
CAP3D_POINTS, CAP3D_VIEW = 16384, 512   # Cap3D's clouds (16,384 points) and renders (512×512 RGBA PNG)


def time_set(dataset, collate, batch_size: int, repeats: int) -> tuple[float, float, list[dict]]:
    """(median wall seconds, median CPU seconds, the samples) of passes building every sample and collating."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        samples = [dataset[i] for i in range(len(dataset))]
        for start in range(0, len(samples), batch_size):
            collate(samples[start:start + batch_size])
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), samples


def report(name: str, what: str, dataset, collate, batch_size: int, repeats: int) -> None:
    wall, cpu, samples = time_set(dataset, collate, batch_size, repeats)
    n = len(samples)
    size = [len(s["coord"]) for s in samples if "coord" in s]
    voxels = f", {statistics.mean(size):,.0f} voxels per sample" if size else ""
    print(f"{name}, {what}: {n / wall:.2f} samples/s per process ({1000 * cpu / n:.0f} ms CPU per sample{voxels}, "
          f"{n} samples, median of {repeats} passes)")
    record("data_loaders", f"{name}, {what} (one process)", n / wall, "samples/s")


def s3dis(root: Path, repeats: int) -> None:
    for label, sizes, points in (("S3DIS rooms of 4-7 m", None, S3DIS_POINTS),
                                 ("S3DIS 40 m hallway", [(40.0, 2.5)], HALLWAY_POINTS)):
        data = root / label.replace(" ", "_")
        generate_s3dis(data, areas=(1, 5), rooms_per_area=1 if sizes else 2, points_per_room=points,
                       malformed_line=False, room_sizes=sizes)
        dm = S3DISDataModule(str(data), areas=(1, 5), num_workers=0, batch_size=1, val_batch_size=1)
        dm.prepare_data()
        dm.setup("fit")
        room = f"{points:,} points, 5 cm"
        report(label, f"training ({room})", dm.train_set, dm.train_dataloader().collate_fn, 1, repeats)
        report(label, f"evaluation ({room}, all points kept)", dm.val_set, dm.val_dataloader().collate_fn, 1,
               repeats)


def detection(root: Path, repeats: int, dataset: str) -> None:
    if dataset == "scannet_det":
        label, points, raw = "ScanNet detection", 40000, 150_000   # votenet's scans: ~150 k mesh vertices
        generate_scannet_detection(root / dataset, num_scenes=8, points_per_scene=raw, val_fraction=0.5,
                                   room_size=(6.0, 10.0))
        dm = ScanNetDetectionDataModule(str(root / dataset), num_points=points, num_workers=0)
    else:
        label, points, raw = "SUN RGB-D detection", 20000, 50_000  # votenet's pc_bbox_votes_50k
        generate_sunrgbd(root / dataset, num_train=4, num_val=4, points_per_scene=raw, empty_scenes=0)
        dm = SUNRGBDDataModule(str(root / dataset), num_points=points, num_workers=0)
    dm.setup("fit")
    scan = f"{raw:,} points drawn to {points:,}, 2.5 cm"
    report(label, f"training ({scan})", dm.train_set, dm.train_dataloader().collate_fn, 4, repeats)
    report(label, f"evaluation ({scan})", dm.val_set, dm.val_dataloader().collate_fn, 4, repeats)


def cap3d(root: Path, repeats: int) -> None:
    generate_cap3d(root / "cap3d", num_objects=24, views=8, image_size=CAP3D_VIEW, points=CAP3D_POINTS)
    dm = Cap3DDataModule(str(root / "cap3d"), num_points=8192, image_size=(224, 224), num_workers=0,
                         cache_dir=str(root / "cap3d_cache"), normalize=True, batch_size=4)
    dm.setup("fit")
    what = f"{CAP3D_POINTS:,} points to 8,192 by FPS, a {CAP3D_VIEW}×{CAP3D_VIEW} view to 224×224"
    collate = dm.train_dataloader().collate_fn
    report("Cap3D objects", f"first epoch ({what}; FPS computed and cached)", dm.datasets["train"], collate, 4, 1)
    report("Cap3D objects", f"later epochs ({what}; FPS read from the cache)", dm.datasets["train"], collate, 4,
           repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = ("s3dis", "scannet_det", "sunrgbd", "cap3d")
    parser.add_argument("--only", nargs="*", choices=choices, default=choices)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.only:
            if name == "s3dis":
                s3dis(root, args.repeats)
            elif name == "cap3d":
                cap3d(root, args.repeats)
            else:
                detection(root, args.repeats, name)


if __name__ == "__main__":
    main()
