"""Audio as ImageBind reads it: the official load_and_transform_audio_data's spectrograms, its clip sampler, and
named errors for audio that cannot be used.

Golden outputs: tests/data/imagebind_official/golden.pt (make_fixtures.py there; the official code on the official
example .wav files, cut: a mono and a stereo one at 44.1 kHz).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from lang3d.data.audio_files import ShortAudioError, SilentAudioError, UnreadableAudioError, read_audio
from lang3d.models.imagebind.audio import audio_clips, clip_ranges, load_audio_clips

DATA = Path(__file__).parent / "data" / "imagebind_official"
GOLDEN = torch.load(DATA / "golden.pt", weights_only=True)
FILES = json.loads(GOLDEN["options"]["audio_files"])


@pytest.mark.parametrize("index, name", list(enumerate(FILES)))
def test_spectrograms_equal_the_official_loader(index, name):
    """Resampled 44.1 -> 16 kHz, 3 clips of 2 s, Kaldi fbank, normalised: as the official code, including its
    in-place mean subtraction on overlapping clips (these files are 2.1 / 2.3 s long, so the clips overlap)."""
    clips = load_audio_clips(DATA / name)
    assert clips.shape == (3, 1, 128, 204) and clips.dtype == torch.float32
    torch.testing.assert_close(clips, GOLDEN["audio_input"][index], atol=1e-5, rtol=1e-5)


def test_clip_ranges_equal_the_official_sampler():
    lengths = json.loads(GOLDEN["options"]["sampler_lengths"])
    for length, expected in zip(lengths, GOLDEN["clip_slices"].tolist()):
        ranges = clip_ranges(length)
        assert [list(r) for r in ranges] == expected, length
        assert ranges[0][0] == 0 and ranges[-1][1] <= length and all(end - start == 32000 for start, end in ranges)


def test_stereo_uses_the_left_channel_and_other_rates_are_resampled():
    """The stereo fixture (bird, 44.1 kHz) gives what its left channel alone gives, up to the mean over both
    channels that the official loader subtracts (a constant per clip, which the spectrogram removes frame by frame
    except where clips overlap); the mixdown or the right channel differ by far more. A 16 kHz copy of the
    resampled left channel gives the same spectrograms."""
    samples, rate = read_audio(DATA / "bird_audio_2.1s.wav")
    assert samples.shape[0] == 2 and rate == 44100
    stereo = audio_clips(samples, rate)
    left, right, mix = (audio_clips(x, rate) for x in (samples[:1], samples[1:], samples.mean(0, keepdims=True)))
    assert (stereo - left).abs().max() < 5e-3
    assert (stereo - right).abs().max() > 0.5 and (stereo - mix).abs().max() > 0.25
    resampled = torchaudio.functional.resample(torch.from_numpy(samples[:1]), orig_freq=rate, new_freq=16000)
    torch.testing.assert_close(audio_clips(resampled, 16000), left)


def test_the_waveform_given_is_left_unchanged():
    samples, rate = read_audio(DATA / "car_audio_2.3s.wav")
    before = samples.copy()
    audio_clips(samples, 44100)
    assert np.array_equal(samples, before)


def _write(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


def test_unusable_audio_gets_a_named_error(tmp_path):
    with pytest.raises(UnreadableAudioError, match=r"missing\.wav does not exist"):
        load_audio_clips(tmp_path / "missing.wav")
    (tmp_path / "noise.wav").write_bytes(b"not a sound file" * 8)
    with pytest.raises(UnreadableAudioError, match=r"noise\.wav is not readable"):
        load_audio_clips(tmp_path / "noise.wav")
    whole = (DATA / "car_audio_2.3s.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[:len(whole) // 2])         # libsndfile alone would read half
    with pytest.raises(UnreadableAudioError, match=r"cut\.wav is truncated: its header declares 202858 bytes"):
        load_audio_clips(tmp_path / "cut.wav")
    tone = (0.3 * np.sin(np.arange(3 * 44100) * 0.05)).astype(np.float32)
    _write(tmp_path / "tone.flac", tone, 44100)
    whole = (tmp_path / "tone.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UnreadableAudioError, match=r"cut\.flac"):
        load_audio_clips(tmp_path / "cut.flac")
    with pytest.raises(SilentAudioError, match=r"empty\.wav holds no samples"):
        load_audio_clips(_write(tmp_path / "empty.wav", np.zeros((0, 1), np.int16)))
    with pytest.raises(SilentAudioError, match=r"zeros\.wav is silent: all 48000 frames are zero"):
        load_audio_clips(_write(tmp_path / "zeros.wav", np.zeros(48000, np.int16)))
    nan = tone.copy()
    nan[100] = np.nan
    with pytest.raises(SilentAudioError, match=r"nan\.wav holds samples that are not finite"):
        load_audio_clips(_write(tmp_path / "nan.wav", nan, 44100, "FLOAT"))
    with pytest.raises(ShortAudioError, match=r"short\.wav lasts 1\.500 s, shorter than one 2 s clip"):
        load_audio_clips(_write(tmp_path / "short.wav", tone[:66150], 44100))
    assert load_audio_clips(_write(tmp_path / "two_seconds.wav", tone[:32000], 16000)).shape == (3, 1, 128, 204)
    with pytest.raises(SilentAudioError, match="silent"):
        audio_clips(np.zeros((1, 40000), np.float32), 16000)
