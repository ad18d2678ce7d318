"""Reading audio files (soundfile / libsndfile: WAV, FLAC, OGG, ...) as float32 waveforms, with named errors.

libsndfile reads a WAV file whose data ends early without complaint (it counts the frames that are there), so a
RIFF file's declared data size is compared with the bytes it holds; for other formats the frames read are compared
with the frames the stream declares.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile


class AudioFileError(ValueError):
    """An audio input that cannot be used; the message names the file and what is wrong."""


class UnreadableAudioError(AudioFileError):
    """A missing, unreadable or truncated audio file."""


class SilentAudioError(AudioFileError):
    """An audio file without samples, or whose samples are all zero (or not finite)."""


class ShortAudioError(AudioFileError):
    """A sound shorter than the clip length its reader takes."""


def _riff_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(declared, present) bytes of a RIFF/WAVE file's ``data`` chunk when the file holds fewer than its header
    declares; None when it holds them all or is not a RIFF/WAVE file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF" or f.read(4) == b"" or f.read(4) != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - offset - 8
                return (length, present) if present < length else None
            offset += 8 + length + (length & 1)      # chunks are padded to an even length
    return None


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """An audio file -> (samples [channels, frames] float32 in [-1, 1] as libsndfile scales them (16-bit PCM:
    int / 32768), sample rate in Hz). Raises ``UnreadableAudioError`` (missing, unreadable or truncated file) or
    ``SilentAudioError`` (no samples, all zero, or not finite), naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableAudioError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, EOFError) as err:
        raise UnreadableAudioError(f"audio file {path} is not readable ({err})") from None
    shortfall = _riff_data_shortfall(path)
    if shortfall is not None:
        raise UnreadableAudioError(f"audio file {path} is truncated: its header declares {shortfall[0]} bytes of "
                                   f"samples, the file holds {shortfall[1]}")
    if info.frames > 0 and len(data) < info.frames:
        raise UnreadableAudioError(f"audio file {path} is truncated: {len(data)} of the {info.frames} frames its "
                                   "header declares could be read")
    if len(data) == 0:
        raise SilentAudioError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():
        raise SilentAudioError(f"audio file {path} holds samples that are not finite (NaN or inf)")
    if not data.any():
        raise SilentAudioError(f"audio file {path} is silent: all {len(data)} frames are zero")
    return np.ascontiguousarray(data.T), int(rate)
