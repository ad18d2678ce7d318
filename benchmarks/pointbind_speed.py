"""Point-Bind speed: encoder forward throughput (clouds/s at 8192 points) for both encoders at the paper's sizes,
and the time of a zero-shot evaluation of the ModelNet40 test set (2,468 shapes), measured on a subset and
extrapolated.

    python benchmarks/pointbind_speed.py [--batch-size 2] [--iterations 2] [--clip-model ViT-L-14]

Weights are random (speed does not depend on them). Zero-shot time = data (read + FPS to 8192 of 10,000 points,
first epoch, no FPS cache) + encoder + projection for every shape, + the one-off class text embeddings
(40 classes x 64 templates through the CLIP text tower; the embedding cache keeps them afterwards). Each part
is timed on a few items and scaled to the full count; the lines say so. Prints figures only; nothing is
asserted. Runs on CUDA when available, else on the CPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from datamodules.modelnet40 import ModelNet40DataModule, prompt_names, templates
from datamodules.synthetic.modelnet40 import generate_modelnet40
from lang3d.models.clip import CLIPTextEncoder, load_clip
from lang3d.training.timing import record, timed
from pointbind.encoders import build_encoder
from pointbind.head import ProjectionHead

TEST_SHAPES = 2468
NUM_POINTS = 8192


@torch.no_grad()
def encoder_throughput(name: str, batch: int, iterations: int, device: torch.device, joint_dim: int) -> float:
    """Clouds/s of encoder + projection head on [batch, 8192, 3] unit-sphere clouds (one warm-up call)."""
    torch.manual_seed(0)
    encoder = build_encoder(name).to(device).eval()
    head = ProjectionHead(encoder.out_dim, joint_dim).to(device).eval()
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    points = torch.nn.functional.normalize(torch.randn(batch, NUM_POINTS, 3, device=device), dim=-1)
    points = points * torch.rand(batch, NUM_POINTS, 1, device=device)
    timed(lambda: head(encoder(points)), device)
    seconds = sum(timed(lambda: head(encoder(points)), device) for _ in range(iterations)) / iterations
    print(f"encoder {name:9s} ({params:.1f} M params): {batch / seconds:7.2f} clouds/s "
          f"(batch {batch}, {NUM_POINTS} points, mean of {iterations} calls)")
    record("pointbind_speed", f"{name} encoder, {NUM_POINTS} points ({device.type})", batch / seconds, "clouds/s")
    return batch / seconds


def data_seconds_per_shape(shapes: int) -> float:
    """Seconds to serve one synthetic ModelNet40 test shape (10,000-point txt -> FPS 8192), mean over ``shapes``."""
    with tempfile.TemporaryDirectory() as root:
        generate_modelnet40(root, ("bowl", "table"), train_per_class=0, test_per_class=(shapes + 1) // 2,
                            points=10000, formats=("resampled",))
        dm = ModelNet40DataModule(root, num_points=NUM_POINTS, fps_cache=False, num_workers=0)
        dataset = dm.dataset("test")
        count = min(shapes, len(dataset))
        start = time.perf_counter()
        for i in range(count):
            dataset[i]
        return (time.perf_counter() - start) / count


@torch.no_grad()
def text_seconds_per_prompt(clip_model: str, prompts: int, device: torch.device) -> tuple[float, int]:
    """Seconds per prompt through the CLIP text tower (random weights), over ``prompts`` prompts; embed width."""
    model, tokenizer = load_clip(clip_model)
    text = CLIPTextEncoder(model.to(device), tokenizer)
    batch = [t.format(n) for n in prompt_names() for t in templates()][:prompts]
    text(batch[:2])
    return timed(lambda: text(batch), device) / len(batch), text.embed_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--data-shapes", type=int, default=4, help="shapes read to time the data pipeline")
    parser.add_argument("--text-prompts", type=int, default=16, help="prompts encoded to time the text tower")
    parser.add_argument("--clip-model", default="ViT-L-14", help="architecture only: weights are random")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads")

    text_s, joint_dim = text_seconds_per_prompt(args.clip_model, args.text_prompts, device)
    rates = {name: encoder_throughput(name, args.batch_size, args.iterations, device, joint_dim)
             for name in ("i2pmae", "pointbert")}
    data_s = data_seconds_per_shape(args.data_shapes)
    prompts = len(prompt_names()) * len(templates())
    print(f"data: {data_s:.3f} s/shape (txt read + FPS {NUM_POINTS}, no cache; mean of {args.data_shapes} shapes, "
          f"one process)")
    print(f"text: {text_s * 1000:.1f} ms/prompt ({args.clip_model}, mean of {args.text_prompts} prompts)")
    print(f"zero-shot ModelNet40 test set, EXTRAPOLATED to {TEST_SHAPES} shapes and {prompts} prompts:")
    for name, rate in rates.items():
        encode, data, text = TEST_SHAPES / rate, TEST_SHAPES * data_s, prompts * text_s
        print(f"  {name:9s}: {encode + data + text:8.1f} s = encoder {encode:.1f} s + data {data:.1f} s "
              f"(one process; divide by num_workers) + class texts {text:.1f} s (one-off, then cached)")
        record("pointbind_speed", f"{name} zero-shot ModelNet40 test set (extrapolated)", encode + data + text, "s")


if __name__ == "__main__":
    main()
