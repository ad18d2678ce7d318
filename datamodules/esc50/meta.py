"""ESC-50's metadata (``meta/esc50.csv``; karolpiczak/ESC-50): 2,000 clips of 5 s, 44.1 kHz mono, 50 classes of 40
clips, 5 folds of 400 (clips cut from one recording share a fold).

Columns: ``filename`` (``{fold}-{src_file}-{take}-{target}.wav`` in ``audio/``), ``fold`` (1-5), ``target``
(0-49), ``category`` (the class name, e.g. ``door_wood_knock``), ``esc10`` (True for the ESC-10 subset),
``src_file`` (the freesound.org recording), ``take`` (A, B, ...).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# ESC-50's classes in target order (the dataset's own numbering, 10 per major category: animals, natural
# soundscapes, human non-speech, interior / domestic, exterior / urban)
ESC50_CATEGORIES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water",
    "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing_teeth",
    "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening", "washing_machine",
    "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane", "fireworks",
    "hand_saw")
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
META_FILE = Path("meta") / "esc50.csv"
AUDIO_DIR = "audio"
FOLDS = (1, 2, 3, 4, 5)


class ESC50FormatError(ValueError):
    """ESC-50's files are not in its layout; the message names the file (and row) and what is wrong."""


@dataclass(frozen=True)
class ESC50Clip:
    path: Path
    fold: int
    target: int
    category: str


def read_meta(root: str | Path) -> list[ESC50Clip]:
    """``root/meta/esc50.csv`` -> its clips (paths under ``root/audio/``), in file order. Errors name the file and
    row: a missing file or column, a fold outside 1-5, a target that is not an integer, a target given two
    categories, an empty table."""
    root = Path(root)
    path = root / META_FILE
    if not path.is_file():
        raise ESC50FormatError(f"ESC-50 metadata {path} does not exist (data.root must hold meta/esc50.csv and "
                               "audio/)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ESC50FormatError(f"{path} lacks the columns {missing} (has {reader.fieldnames})")
        clips, categories = [], {}
        for row_number, row in enumerate(reader, start=2):
            try:
                fold, target = int(row["fold"]), int(row["target"])
            except ValueError:
                raise ESC50FormatError(f"{path} row {row_number}: fold {row['fold']!r} or target {row['target']!r} "
                                       "is not an integer") from None
            if fold not in FOLDS:
                raise ESC50FormatError(f"{path} row {row_number}: fold {fold} is not one of {FOLDS}")
            if categories.setdefault(target, row["category"]) != row["category"]:
                raise ESC50FormatError(f"{path} row {row_number}: target {target} is '{row['category']}' here and "
                                       f"'{categories[target]}' before")
            clips.append(ESC50Clip(root / AUDIO_DIR / row["filename"], fold, target, row["category"]))
    if not clips:
        raise ESC50FormatError(f"{path} lists no clips")
    return clips
