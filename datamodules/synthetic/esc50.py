"""Synthetic ESC-50 in its real layout: ``audio/{fold}-{src_file}-{take}-{target}.wav`` and ``meta/esc50.csv``.

Each class sounds different: a tone at 110·2^(target/8) Hz (110 Hz to 7.7 kHz) with its second harmonic,
amplitude-modulated at (1 + target mod 7) Hz, plus white noise; each clip draws its own phase, loudness and noise.
Clips are 16-bit PCM mono, 44.1 kHz and 5 s by default, as ESC-50's; clip i of a class lies in fold (i mod 5) + 1.

    python -m datamodules.synthetic.esc50 --out DIR --clips-per-class 5 --categories airplane car_horn dog
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile

from datamodules.esc50.meta import AUDIO_DIR, COLUMNS, ESC50_CATEGORIES, FOLDS, META_FILE
from lang3d.training.atomic import atomic_write

ESC10 = {"dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "clock_tick", "sneezing",
         "helicopter", "chainsaw"}


def class_sound(target: int, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of class ``target``: float32 [samples] in (-1, 1) (see the module)."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    frequency, modulation = 110.0 * 2 ** (target / 8), 1.0 + target % 7
    phase = rng.uniform(0, 2 * np.pi)
    tone = np.sin(2 * np.pi * frequency * t + phase) + 0.3 * np.sin(4 * np.pi * frequency * t + phase)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * modulation * t)
    sound = rng.uniform(0.3, 0.6) * envelope * tone / 1.3 + rng.uniform(0.005, 0.03) * rng.standard_normal(len(t))
    return np.clip(sound, -0.99, 0.99).astype(np.float32)


def generate_esc50(root: str | Path, categories=ESC50_CATEGORIES, clips_per_class: int = 5, seconds: float = 5.0,
                   sample_rate: int = 44100, seed: int = 0) -> list[dict]:
    """Write ``root/audio/*.wav`` and ``root/meta/esc50.csv``; returns the CSV's rows."""
    unknown = [c for c in categories if c not in ESC50_CATEGORIES]
    if unknown:
        raise ValueError(f"not ESC-50 categories: {unknown}")
    root = Path(root)
    (root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for category in categories:
        target = ESC50_CATEGORIES.index(category)
        for i in range(clips_per_class):
            fold, src_file = FOLDS[i % len(FOLDS)], 100000 + 100 * target + i
            filename = f"{fold}-{src_file}-A-{target}.wav"
            with atomic_write(root / AUDIO_DIR / filename, "wb") as f:
                soundfile.write(f, class_sound(target, seconds, sample_rate, rng), sample_rate, subtype="PCM_16",
                                format="WAV")
            rows.append({"filename": filename, "fold": fold, "target": target, "category": category,
                         "esc10": category in ESC10, "src_file": src_file, "take": "A"})
    with atomic_write(root / META_FILE, "w") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the ESC-50 root to write (audio/, meta/esc50.csv)")
    parser.add_argument("--categories", nargs="+", default=list(ESC50_CATEGORIES), choices=ESC50_CATEGORIES)
    parser.add_argument("--clips-per-class", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = generate_esc50(args.out, args.categories, args.clips_per_class, args.seconds, args.sample_rate, args.seed)
    print(f"wrote {len(rows)} clips of {len(args.categories)} classes under {args.out}")


if __name__ == "__main__":
    main()
