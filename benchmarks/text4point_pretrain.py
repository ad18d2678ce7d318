"""Throughput of Text4Point pre-training: the data pipeline (2D-3D frames per second, in one process and through
DataLoaders with N worker processes) against the model (optimisation steps per second), on fixed synthetic scans,
and the loader workers the model needs.

    python benchmarks/text4point_pretrain.py [--workers 0 1 2] [--profile] [--data DIR] [--no-model]

Defaults: ScanNet's own frame sizes (colour 1296×968 JPEG, depth 640×480), 240×320 images, 2.5 cm voxels.
``--profile`` adds a cProfile breakdown of one process's time per frame by stage (decode, resize, back-projection,
voxelisation, projection, pairing, collate). ``--data DIR`` reuses (or first writes) the synthetic scans in DIR.

Prints figures only; nothing is asserted. Runs the model on CUDA when available, else on the CPU.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader

from datamodules import ScanNetPairsDataModule
from datamodules.scannet.meta import CLASS_LABELS
from datamodules.synthetic.scannet import generate_scannet
from lang3d.data.collate import collate_point_samples
from lang3d.training.timing import record, timed
from text4point import Text4PointPretraining

STAGES = {  # stage -> (function name, caller name or None for any caller); cumulative time of those calls
    "decode": [("load", None)],                      # PIL ImageFile.load: JPEG colour and PNG depth decoding
    "resize": [("resize", None)],                    # PIL Image.resize
    "back-projection": [("backproject_depth", None)],
    "voxelisation": [("voxelize", None), ("voxel_mean", "build_frame_pair")],  # coordinates, mean colours
    "projection": [("project_points", "build_frame_pair"), ("render_depth", None)],  # colours, depth target
    "pairing": [("correspondences", None)],
    "collate": [("collate_point_samples", None)],
}


def stage_breakdown(profile: cProfile.Profile, frames: int) -> dict[str, float]:
    """Milliseconds per frame of each of ``STAGES`` (and "other") in a profile of ``frames`` frames."""
    profile_stats = pstats.Stats(profile)
    stats, total = profile_stats.stats, profile_stats.total_tt
    out = {}
    for stage, calls in STAGES.items():
        seconds = 0.0
        for function, caller in calls:
            for (_, _, name), (_, _, _, ct, callers) in stats.items():
                if name != function:
                    continue
                seconds += ct if caller is None else sum(c[3] for (_, _, n), c in callers.items() if n == caller)
        out[stage] = 1000 * seconds / frames
    out["other"] = 1000 * total / frames - sum(out.values())
    return out


def one_process(dataset, batch_size: int, repeats: int, profile: bool):
    """(median seconds per pass over ``dataset`` building every frame and collating them in batches, the samples,
    the stage breakdown of one profiled pass or None)."""
    def run():
        samples = [dataset[i] for i in range(len(dataset))]
        for start in range(0, len(samples), batch_size):
            collate_point_samples(samples[start:start + batch_size])
        return samples

    times, samples = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        samples = run()
        times.append(time.perf_counter() - start)
    breakdown = None
    if profile:
        profiler = cProfile.Profile(time.process_time)
        with profiler:
            run()
        breakdown = stage_breakdown(profiler, len(dataset))
    return statistics.median(times), samples, breakdown


def loader_frames_per_second(dataset, batch_size: int, workers: int, min_frames: int) -> float:
    """Frames/s a DataLoader with ``workers`` worker processes delivers in steady state: the frames of the batches
    after the first over the time they took (worker start-up excluded), over >= ``min_frames`` frames."""
    copies = max(1, -(-min_frames // len(dataset)))
    loader = DataLoader(ConcatDataset([dataset] * copies), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_point_samples)
    frames, start = 0, None
    for batch in loader:
        if start is None:
            start = time.perf_counter()
            continue
        frames += len(batch["names"]) + sum(batch["skipped"].values())
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--color-size", type=int, nargs=2, default=(1296, 968), metavar=("W", "H"))
    parser.add_argument("--depth-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--frames", type=int, default=12, help="frames per synthetic scan (two scans)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the frames in one process (median)")
    parser.add_argument("--workers", type=int, nargs="*", default=(0, 1, 2), help="loader worker counts to time")
    parser.add_argument("--loader-frames", type=int, default=48, help="frames per loader timing")
    parser.add_argument("--profile", action="store_true", help="print a cProfile breakdown by stage")
    parser.add_argument("--data", default=None, help="folder of the synthetic scans (written when absent)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-model", action="store_true", help="time the data pipeline only")
    parser.add_argument("--clip-model", default="RN50", help="architecture only: weights are random")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() if args.data is None else nullcontext(args.data) as root:
        if not (Path(root) / "scannetv2_train.txt").is_file():
            generate_scannet(root, num_scenes=2, frames_per_scene=args.frames, color_size=tuple(args.color_size),
                             depth_size=tuple(args.depth_size), val_fraction=0.5)
        dm = ScanNetPairsDataModule(root, frame_skip=1, batch_size=args.batch_size, num_workers=0)
        dm.setup("fit")
        dataset = dm.train_set
        pass_s, samples, breakdown = one_process(dataset, args.batch_size, args.repeats, args.profile)
        kept = [s for s in samples if "skipped" not in s]
        pairs = sum(len(s["pairs"]) for s in kept)
        voxels = sum(len(s["coord"]) for s in kept) / max(len(kept), 1)
        frames_s = len(samples) / pass_s
        print(f"data: {len(samples)} frames (depth {args.depth_size[0]}x{args.depth_size[1]}, colour "
              f"{args.color_size[0]}x{args.color_size[1]} JPEG), {voxels:.0f} voxels/frame, "
              f"{pairs / len(kept):.0f} pairs/frame")
        print(f"data, one process (median of {args.repeats} passes, collate included): {frames_s:.2f} frames/s, "
              f"{pairs / pass_s:.0f} pairs/s")
        record("text4point_pretrain", "2D-3D pair pipeline (one process)", frames_s, "frames/s")
        if breakdown is not None:
            print("data, one process, ms per frame by stage (cProfile): "
                  + ", ".join(f"{stage} {ms:.1f}" for stage, ms in breakdown.items()))
        loader_fps = {}
        for workers in args.workers:
            loader_fps[workers] = loader_frames_per_second(dataset, args.batch_size, workers, args.loader_frames)
            print(f"data loader, {workers} worker(s): {loader_fps[workers]:.2f} frames/s")
            record("text4point_pretrain", f"2D-3D pair loader, {workers} workers", loader_fps[workers], "frames/s")
        if args.no_model:
            return

        model = Text4PointPretraining(class_names=list(CLASS_LABELS), clip_model=args.clip_model,
                                      clip_pretrained=None, image_log_interval=0).to(device)
        optimizer = model.configure_optimizers()["optimizer"]
        batch = model.transfer_batch_to_device(next(iter(dm.train_dataloader())), device, 0)

        def train_step():
            loss = model._losses(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        timed(train_step, device)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step_s = statistics.median(timed(train_step, device) for _ in range(args.steps))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            print(f"model: peak GPU memory {peak:.2f} GiB (torch's allocator, batch {args.batch_size})")
            record("text4point_pretrain", f"pre-training step, batch {args.batch_size}: peak GPU memory", peak, "GiB")
        model_fps = args.batch_size / step_s
        print(f"model ({device.type}, {args.clip_model} + SR-UNet34, batch {args.batch_size}): {1 / step_s:.3f} "
              f"steps/s = {model_fps:.2f} frames/s")
        record("text4point_pretrain", f"pre-training step, batch {args.batch_size} ({device.type})", step_s, "s/step")
        print(f"loader worker processes to keep this model busy: {model_fps / frames_s:.2f} at one process's "
              f"{frames_s:.2f} frames/s (cores of this machine permitting: see the N-worker figures above)")


if __name__ == "__main__":
    main()
