"""Golden fixtures of tests/test_imagebind.py and tests/test_audio.py, made by running the official ImageBind code.

The official code is not part of this project; check it out yourself at these commits:
    facebookresearch/ImageBind     53680b02d7e37b19b124fa37bae4b6c98c38f5be
    facebookresearch/pytorchvideo  6cdc929315aab1b5674b6dcf73b16ec99147735f  (the commit ImageBind's requirements pin)
and run (CPU only; besides the project's .venv, with soundfile, it needs einops, iopath and av, e.g.
``pip install --target SITE einops iopath av``, and pytorchvideo's ``pytorchvideo/`` folder copied into SITE)
    PYTHONPATH=IMAGEBIND:SITE python tests/data/imagebind_official/make_fixtures.py --imagebind IMAGEBIND

What it writes (next to this script):
- ``imagebind_tiny.pth``: the official ``ImageBindModel`` at tiny sizes (``TINY``) with random weights, saved as
  ``imagebind_huge.pth`` is (``model.state_dict()``). Vision, text and audio tensors hold random values (norm
  parameters included); the text logit scale is ln 150, so that ImageBind's clip at 100 matters. The text token
  embedding [49408, 32] is stored as a strided view of 49,439 random values (row i = values i..i+31: every row
  differs, the file stays small); depth, thermal and IMU tensors are zero-stride stand-ins (real names and shapes).
- ``golden.pt``: the official outputs: ``tokens`` (``load_and_transform_text`` of ``TEXTS``) and ``text``
  (the model's text embeddings of them); ``vision`` (of ``pixels()``, a fixed input) and ``vision_image`` (of
  ``load_and_transform_vision_data`` of ``car_image.jpg``); ``audio_input`` (``load_and_transform_audio_data`` of
  ``AUDIO_FILES``: [N,3,1,128,204]) and ``audio`` (the model's audio embeddings of it); ``clip_slices``: for each
  waveform length in ``SAMPLER_LENGTHS`` (samples at 16 kHz), the sample ranges [start, end) of the clips that
  ``get_clip_timepoints`` with pytorchvideo's ``ConstantClipsPerVideoSampler(2, 3)`` gives, as ImageBind cuts them.
- ``keys_imagebind_huge.json``: every tensor name, shape and dtype of ``imagebind_huge()`` (built on the meta
  device), the layout of ``imagebind_huge.pth``.
- The inputs, cut from the official repository's ``.assets`` with their samples unchanged: ``car_image.jpg``
  (640x360, whole); ``car_audio_2.3s.wav`` (mono, 44.1 kHz, the first 2.3 s) and ``bird_audio_2.1s.wav`` (stereo,
  44.1 kHz, the first 2.1 s).

How the official code is run here: torchaudio 2.9+ decodes files through torchcodec (FFmpeg), which this machine
does not have, so ``torchaudio.load`` is replaced by what torchaudio's own soundfile backend (torchaudio <= 2.8,
``_backend/soundfile_backend.load``) did: ``soundfile.read(path, dtype="float32", always_2d=True)``, transposed to
[channels, samples]. For 16-bit PCM WAV files every torchaudio backend returned the same samples (int16 / 32768).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
COMMITS = {"facebookresearch/ImageBind": "53680b02d7e37b19b124fa37bae4b6c98c38f5be",
           "facebookresearch/pytorchvideo": "6cdc929315aab1b5674b6dcf73b16ec99147735f"}
TINY = dict(out_embed_dim=16, vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=2, text_embed_dim=32,
            text_num_blocks=2, text_num_heads=2, audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=2,
            depth_embed_dim=32, depth_num_blocks=1, depth_num_heads=2, thermal_embed_dim=32, thermal_num_blocks=1,
            thermal_num_heads=2, imu_embed_dim=32, imu_num_blocks=1, imu_num_heads=2)
# the same sizes as a lang3d ImageBind architecture (lang3d/models/imagebind/configs/*.json)
TINY_ARCHITECTURE = {"embed_dim": 16, "vision": {"width": 32, "layers": 2, "heads": 2},
                     "text": {"width": 32, "layers": 2, "heads": 2}, "audio": {"width": 32, "layers": 2, "heads": 2}}
TEXTS = ["a dog.", "A car  by the SEA", "café & crème brûlée, 東京 &amp; 2024!",
         " ".join(["a very long caption that goes on"] * 14)]                       # the last one is cut at 77 tokens
AUDIO_CUTS = {"car_audio_2.3s.wav": ("car_audio.wav", 2.3), "bird_audio_2.1s.wav": ("bird_audio.wav", 2.1)}
AUDIO_FILES = list(AUDIO_CUTS)
SAMPLER_LENGTHS = [32000, 32001, 32160, 33600, 36800, 40000, 41601, 48000, 79999, 80000, 80001, 160007, 176400]
TEXT_LOG_SCALE = math.log(150.0)


def pixels(batch: int = 2) -> torch.Tensor:
    """A fixed vision input [batch,3,224,224] (a deterministic pattern in about [-2, 2], no random generator)."""
    n = torch.arange(batch * 3 * 224 * 224, dtype=torch.float64)
    return (2.0 * torch.sin(0.0137 * n + 0.3) * torch.cos(0.00071 * n)).float().reshape(batch, 3, 224, 224)


class MetaTensors(torch.overrides.TorchFunctionMode):
    """Tensor factories called without a device make meta tensors; ``linspace`` stays real, so the constructors'
    ``.item()`` on drop-path rates works."""

    FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.randn, torch.rand, torch.full, torch.tensor}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def standin(t: torch.Tensor) -> torch.Tensor:
    """A zero-stride tensor of ``t``'s shape and dtype: real layout, one stored element."""
    return torch.zeros((), dtype=t.dtype).expand(t.shape)


@torch.no_grad()
def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Random values in every tensor of ``module``: norms near 1 / 0, weights ~ N(0, 1/fan_in), the rest N(0, 0.5²)."""
    done = set()
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        elif isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(m.weight[0].numel()))
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        elif isinstance(m, nn.MultiheadAttention):
            m.in_proj_weight.copy_(torch.randn(m.in_proj_weight.shape, generator=gen) / math.sqrt(m.embed_dim))
            m.in_proj_bias.copy_(0.1 * torch.randn(m.in_proj_bias.shape, generator=gen))
            for t in (m.bias_k, m.bias_v):
                if t is not None:
                    t.copy_(0.5 * torch.randn(t.shape, generator=gen))
            done.update(id(t) for t in (m.in_proj_weight, m.in_proj_bias, m.bias_k, m.bias_v))
            continue
        else:
            continue
        done.update(id(t) for t in m.state_dict(keep_vars=True).values())
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) not in done and name.split(".")[-1] not in ("log_logit_scale", "mask"):
            t.copy_(0.5 * torch.randn(t.shape, generator=gen))


def key_list(state: dict) -> dict:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in state.items()}


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")


def read_like_torchaudio(path, *args, **kwargs):
    """torchaudio's soundfile backend (torchaudio <= 2.8): float32 samples [channels, samples], sample rate."""
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data).t(), rate


def cut_inputs(assets: Path, out: Path) -> None:
    shutil.copyfile(assets / "car_image.jpg", out / "car_image.jpg")
    for name, (source, seconds) in AUDIO_CUTS.items():
        info = soundfile.info(str(assets / source))
        data, rate = soundfile.read(str(assets / source), dtype="int16", frames=int(seconds * info.samplerate),
                                    always_2d=True)
        soundfile.write(str(out / name), data, rate, subtype=info.subtype)


def run_official(repo: Path, out: Path) -> None:
    sys.path.insert(0, str(repo))
    import torchaudio
    torchaudio.load = read_like_torchaudio
    from imagebind import data
    from imagebind.models import imagebind_model
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

    with MetaTensors():
        huge = imagebind_model.imagebind_huge()
    write_json(out / "keys_imagebind_huge.json", key_list(huge.state_dict()))

    torch.manual_seed(0)
    model = imagebind_model.ImageBindModel(**TINY).eval()
    gen = torch.Generator().manual_seed(22)
    for part in ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors"):
        for modality in ("vision", "text", "audio"):
            randomise(getattr(model, part)[modality], gen)
    text = model.modality_preprocessors["text"].token_embedding.weight
    values = 0.02 * torch.randn(text.shape[0] + text.shape[1] - 1, generator=gen)
    hankel = values.as_strided(text.shape, (1, 1))                                  # row i: values[i:i+width]
    with torch.no_grad():
        text.copy_(hankel)
        model.modality_postprocessors["text"][1].log_logit_scale.fill_(TEXT_LOG_SCALE)
    kept = tuple(f"modality_{part}.{m}." for part in ("preprocessors", "trunks", "heads", "postprocessors")
                 for m in ("vision", "text", "audio"))
    state = {k: (v if k.startswith(kept) else standin(v)) for k, v in model.state_dict().items()}
    state["modality_preprocessors.text.token_embedding.weight"] = hankel
    torch.save(state, out / "imagebind_tiny.pth")

    golden = {}
    with torch.no_grad():
        golden["tokens"] = data.load_and_transform_text(TEXTS, "cpu")
        golden["text"] = model({"text": golden["tokens"]})["text"]
        golden["vision"] = model({"vision": pixels()})["vision"]
        image = data.load_and_transform_vision_data([str(out / "car_image.jpg")], "cpu")
        golden["vision_image"] = model({"vision": image})["vision"]
        golden["audio_input"] = data.load_and_transform_audio_data([str(out / f) for f in AUDIO_FILES], "cpu")
        golden["audio"] = model({"audio": golden["audio_input"]})["audio"]
    rate = 16000
    slices = []
    for length in SAMPLER_LENGTHS:
        sampler = ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
        times = data.get_clip_timepoints(sampler, length / rate)
        slices.append([[int(start * rate), int(end * rate)] for start, end in times])
    golden["clip_slices"] = torch.tensor(slices)
    golden["options"] = {"architecture": json.dumps(TINY_ARCHITECTURE), "texts": json.dumps(TEXTS),
                         "audio_files": json.dumps(AUDIO_FILES), "sampler_lengths": json.dumps(SAMPLER_LENGTHS)}
    torch.save(golden, out / "golden.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imagebind", type=Path, required=True, help="checkout of facebookresearch/ImageBind")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--official", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.official:   # in a subprocess: the official code's imports stay out of this one
        run_official(args.imagebind.resolve(), args.out.resolve())
        return
    args.out.mkdir(parents=True, exist_ok=True)
    cut_inputs(args.imagebind / ".assets", args.out)
    subprocess.run([sys.executable, __file__, "--official", "--imagebind", str(args.imagebind), "--out",
                    str(args.out)], check=True)
    write_json(args.out / "SOURCES.json", {"repositories": COMMITS, "script": Path(__file__).name,
                                           "torch": torch.__version__, "torchaudio": _version("torchaudio"),
                                           "soundfile": soundfile.__version__, "numpy": np.__version__})


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


if __name__ == "__main__":
    main()
