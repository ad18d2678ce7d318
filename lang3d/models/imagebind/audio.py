"""Audio as ImageBind reads it (``imagebind/data.py: load_and_transform_audio_data``): a sound -> 3 clips of
2 s -> normalised log-mel spectrograms [3,1,128,204], the audio tower's input.

1. Resample to 16 kHz (``torchaudio.functional.resample``, its default windowed-sinc filter).
2. Cut 3 clips of 2 s with pytorchvideo's ``ConstantClipsPerVideoSampler`` (the commit ImageBind pins): clip i
   starts at i·(D − 2)/2 s for a sound of D s (exact fractions of the float duration, as the sampler computes
   them), and covers samples [int(start·16000), int((start + 2)·16000)).
3. Per clip, in order: subtract the clip's mean from the waveform in place (the official code does it on a view of
   the sound, so a clip overlapping an earlier one starts from samples that already lost that clip's mean; kept,
   as it changes the spectrograms by up to ~1e-2), then Kaldi filterbanks (``torchaudio.compliance.kaldi.fbank``:
   25 ms Hanning windows every 10 ms, 128 mel bins, no dither, no energy, HTK-compatible), transposed to
   [128, frames] and zero-padded or cut to 204 frames.
4. Normalise with ImageBind's mean −4.268 and standard deviation 9.138.

Stereo and other channel counts: as the official loader, the mean over all channels is subtracted and the first
(left) channel is used (``kaldi.fbank`` reads channel 0); channels are not mixed down. Any sample rate is
resampled to 16 kHz. A sound shorter than one clip (2 s) is refused (``ShortAudioError``), where the official code
zero-pads its spectrogram.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torchaudio

from lang3d.data.audio_files import ShortAudioError, SilentAudioError, read_audio
from lang3d.models.imagebind.preprocessors import AUDIO_FRAMES, MEL_BINS

SAMPLE_RATE = 16000
CLIP_SECONDS = 2
CLIPS = 3
FRAME_LENGTH_MS, FRAME_SHIFT_MS = 25, 10
MEAN, STD = -4.268, 9.138


def clip_ranges(num_samples: int, sample_rate: int = SAMPLE_RATE, clip_seconds: int = CLIP_SECONDS,
                clips: int = CLIPS) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of the clips of a waveform of ``num_samples`` at ``sample_rate``, as ImageBind's
    clip sampler gives them (see the module's step 2). Fewer than ``clips`` only where the sampler stops early,
    which it does not for ``clips`` >= 2."""
    duration = num_samples / sample_rate
    last_start = Fraction(max(duration - clip_seconds, 0))
    step = Fraction(last_start, max(clips - 1, 1))
    ranges = []
    for index in range(clips):
        start = step * index
        ranges.append((int(start * sample_rate), int((start + clip_seconds) * sample_rate)))
        if step * (index + 1) > last_start:
            break
    return ranges


def clip_spectrogram(clip: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """One clip [channels, samples], its mean already subtracted -> its log-mel spectrogram [1,128,204] (step 3,
    not yet normalised)."""
    fbank = torchaudio.compliance.kaldi.fbank(
        clip, htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
        num_mel_bins=MEL_BINS, dither=0.0, frame_length=FRAME_LENGTH_MS, frame_shift=FRAME_SHIFT_MS).T
    frames = fbank.shape[1]
    fbank = torch.nn.functional.pad(fbank, (0, AUDIO_FRAMES - frames)) if frames < AUDIO_FRAMES \
        else fbank[:, :AUDIO_FRAMES]
    return fbank[None]


def audio_clips(waveform: torch.Tensor | np.ndarray, sample_rate: int, source: str = "waveform") -> torch.Tensor:
    """A waveform [channels, samples] (float, any rate) -> the audio tower's input [3,1,128,204] (steps 1-4).
    ``source`` names the sound in errors: ``ShortAudioError`` when it is shorter than one clip after resampling,
    ``SilentAudioError`` when it holds no samples or only zeros."""
    waveform = torch.as_tensor(waveform, dtype=torch.float32).clone()   # step 3 writes into it
    if waveform.ndim != 2:
        raise ValueError(f"{source}: waveform must be [channels, samples], got {tuple(waveform.shape)}")
    if waveform.shape[1] == 0 or not waveform.any():
        raise SilentAudioError(f"{source} is {'empty' if waveform.shape[1] == 0 else 'silent (all zeros)'}")
    if sample_rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sample_rate, new_freq=SAMPLE_RATE)
    samples = waveform.shape[1]
    if samples < CLIP_SECONDS * SAMPLE_RATE:
        raise ShortAudioError(f"{source} lasts {samples / SAMPLE_RATE:.3f} s, shorter than one {CLIP_SECONDS} s clip "
                              f"of ImageBind's audio input")
    spectrograms = []
    for start, end in clip_ranges(samples):
        waveform[:, start:end] -= waveform[:, start:end].mean()     # in place: later overlapping clips see it
        spectrograms.append(clip_spectrogram(waveform[:, start:end]))
    return (torch.stack(spectrograms) - MEAN) / STD


def load_audio_clips(path: str | Path) -> torch.Tensor:
    """An audio file -> the audio tower's input [3,1,128,204] (``read_audio``, then ``audio_clips``); errors name
    the file."""
    waveform, rate = read_audio(path)
    return audio_clips(waveform, rate, source=f"audio file {path}")
