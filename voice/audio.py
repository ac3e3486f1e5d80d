"""Audio sample utilities: format conversion, resampling (soxr), file decoding (PyAV), WAV.

Samples inside seetalk are mono ``float32`` in ``[-1, 1]``; the network and files carry
interleaved ``int16``. Nothing here needs torch. All functions are synchronous and cheap
except :func:`load_audio_file`, which decodes a whole file (run it in an executor).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

from seetalk.errors import BadAudio

_S16_SCALE = 32768.0


def s16_interleaved_to_mono_float(samples: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved ``int16`` (any shape, flattened) to mono ``float32``, averaging channels."""
    if channels < 1:
        raise BadAudio(f"channel count must be at least 1, got {channels}")
    flat = np.asarray(samples).reshape(-1)
    if flat.dtype != np.int16:
        raise BadAudio(f"expected int16 samples, got {flat.dtype}")
    if flat.size % channels:
        raise BadAudio(f"{flat.size} samples do not divide into {channels} channels")
    x = flat.astype(np.float32) / _S16_SCALE
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return x


def float_to_s16(x: np.ndarray) -> np.ndarray:
    """Float samples in ``[-1, 1]`` to ``int16``, clipped (never wraps around)."""
    y = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(y).astype(np.int16)


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """One-shot resampling of a whole mono ``float32`` signal."""
    x = np.asarray(x, dtype=np.float32)
    if in_rate == out_rate or x.size == 0:
        return x.copy()
    return np.asarray(soxr.resample(x, in_rate, out_rate, quality="HQ"), dtype=np.float32)


class StreamResampler:
    """Streaming resampler of mono ``float32``: feed chunks in order, then :meth:`flush`.

    The filter delay means early calls return a little less than ``len * out/in`` samples;
    :meth:`flush` returns the rest. The total matches a one-shot resample.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._stream is None:
            return x.copy()
        return np.asarray(self._stream.resample_chunk(x, last=False), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """The samples held back by the filter; the stream is then ready for a new signal."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out = np.asarray(
            self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True),
            dtype=np.float32,
        )
        self._stream.clear()
        return out


def load_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode any audio file PyAV (FFmpeg) can read: ``(mono float32, native sample rate)``.

    Raises :class:`BadAudio` for a missing file, an empty file, a file without an audio
    stream or that does not decode, and a file with zero samples.
    """
    import av  # imported here: PyAV is a heavy import, only file sessions need it

    p = Path(path)
    if not p.is_file():
        raise BadAudio(f"audio file not found: {p}")
    if p.stat().st_size == 0:
        raise BadAudio(f"audio file is empty: {p}")
    parts: list[np.ndarray] = []
    rate = 0
    try:
        with av.open(str(p), mode="r") as container:
            if not container.streams.audio:
                raise BadAudio(f"no audio stream in {p}")
            stream = container.streams.audio[0]
            converter = av.AudioResampler(format="fltp")  # same layout and rate, float planar
            for frame in container.decode(stream):
                rate = rate or frame.sample_rate
                for out in converter.resample(frame):
                    parts.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
            for out in converter.resample(None):
                parts.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
    except BadAudio:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise BadAudio(f"not a readable audio file: {p} ({exc})") from exc
    samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if samples.size == 0 or rate <= 0:
        raise BadAudio(f"audio file has no samples: {p}")
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False), rate


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """Write mono (1-D) or ``(frames, channels)`` samples, float or int16, as 16-bit WAV."""
    a = np.asarray(samples)
    s16 = a if a.dtype == np.int16 else float_to_s16(a)
    channels = 1 if s16.ndim == 1 else s16.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(np.ascontiguousarray(s16).astype("<i2").tobytes())
