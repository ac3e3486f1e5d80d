"""Audio utilities: conversion, resampling, decoding files, WAV."""

from __future__ import annotations

import shutil
import subprocess
import wave

import numpy as np
import pytest

from seetalk.errors import BadAudio
from voice.audio import (
    StreamResampler,
    float_to_s16,
    load_audio_file,
    resample,
    s16_interleaved_to_mono_float,
    write_wav,
)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spectrum)])


def stereo_s16_sine(hz: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * hz * t)
    right = 0.3 * np.sin(2 * np.pi * hz * t)
    return float_to_s16(np.stack([left, right], axis=1)).reshape(-1)  # interleaved L R L R


def test_interleaved_stereo_to_mono_averages_channels():
    samples = np.array([16384, 0, -16384, -16384, 32767, 32767], dtype=np.int16)
    mono = s16_interleaved_to_mono_float(samples, 2)
    assert mono.dtype == np.float32
    np.testing.assert_allclose(mono, [0.25, -0.5, 32767 / 32768], atol=1e-6)


def test_interleaved_rejects_wrong_input():
    with pytest.raises(BadAudio):
        s16_interleaved_to_mono_float(np.zeros(3, dtype=np.int16), 2)
    with pytest.raises(BadAudio):
        s16_interleaved_to_mono_float(np.zeros(4, dtype=np.float32), 2)


def test_float_to_s16_clips_instead_of_wrapping():
    out = float_to_s16(np.array([0.0, 0.5, 1.5, -2.0, -1.0], dtype=np.float32))
    assert out.dtype == np.int16
    assert out.tolist() == [0, 16384, 32767, -32767, -32767]


def test_48k_stereo_to_16k_mono_keeps_frequency():
    interleaved = stereo_s16_sine(440.0, 48_000, 1.0)
    mono = s16_interleaved_to_mono_float(interleaved, 2)
    out = resample(mono, 48_000, 16_000)
    assert out.dtype == np.float32 and abs(out.size - 16_000) <= 1
    assert abs(dominant_hz(out, 16_000) - 440.0) < 3.0
    assert 0.35 < np.abs(out[1000:-1000]).max() < 0.45  # (0.5 + 0.3) / 2


def test_stream_resampler_matches_one_shot_and_keeps_frequency():
    interleaved = stereo_s16_sine(1000.0, 48_000, 1.0)
    mono = s16_interleaved_to_mono_float(interleaved, 2)
    rs = StreamResampler(48_000, 16_000)
    parts = [rs.process(mono[i : i + 960]) for i in range(0, mono.size, 960)]  # 20 ms frames
    parts.append(rs.flush())
    out = np.concatenate(parts)
    assert abs(out.size - 16_000) <= 2
    assert abs(dominant_hz(out, 16_000) - 1000.0) < 3.0
    one_shot = resample(mono, 48_000, 16_000)
    n = min(out.size, one_shot.size)
    assert np.abs(out[:n] - one_shot[:n])[200:-200].max() < 1e-3


def test_stream_resampler_same_rate_is_identity():
    rs = StreamResampler(16_000, 16_000)
    x = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    np.testing.assert_array_equal(rs.process(x), x)
    assert rs.flush().size == 0


def test_write_wav_then_load(tmp_path):
    t = np.arange(22_050) / 22_050
    x = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    write_wav(path, x, 22_050)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22_050)
    y, rate = load_audio_file(path)
    assert rate == 22_050 and y.size == x.size
    assert np.abs(y - x).max() < 1e-3


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
@pytest.mark.parametrize("ext", ["wav", "mp3", "ogg", "flac"])
def test_load_any_container_at_44k1_stereo(tmp_path, ext):
    rate = 44_100
    interleaved = stereo_s16_sine(440.0, rate, 1.0)
    src = tmp_path / "src.wav"
    write_wav(src, interleaved.reshape(-1, 2), rate)
    path = tmp_path / f"tone.{ext}"
    if ext != "wav":
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(src), str(path)], check=True)
    else:
        path = src
    x, got_rate = load_audio_file(path)
    assert got_rate == rate
    assert x.ndim == 1 and x.dtype == np.float32
    assert abs(x.size - rate) < 0.1 * rate  # encoders pad a little
    assert abs(dominant_hz(x, rate) - 440.0) < 3.0
    assert 0.3 < np.abs(x).max() < 0.5


def test_load_missing_file(tmp_path):
    with pytest.raises(BadAudio, match="not found"):
        load_audio_file(tmp_path / "nope.wav")


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(BadAudio, match="empty"):
        load_audio_file(path)


@pytest.mark.parametrize("content", [b"hello, this is text\n" * 20, bytes(range(256)) * 8])
def test_load_not_audio(tmp_path, content):
    path = tmp_path / "thing.wav"
    path.write_bytes(content)
    with pytest.raises(BadAudio, match="not a readable audio file|no audio stream"):
        load_audio_file(path)


def test_load_wav_with_zero_samples(tmp_path):
    path = tmp_path / "zero.wav"
    write_wav(path, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(BadAudio, match="no samples"):
        load_audio_file(path)
