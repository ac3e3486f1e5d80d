"""End of turn by model: Smart Turn v3.2 (ONNX, Whisper-tiny encoder, 8.7 MB), CPU.

Given the last up to 8 s of a person's speech at 16 kHz, it says whether they finished
their turn ("complete") or paused mid-thought. The turn-taker uses the verdict to end a
complete turn after a short silence and to wait longer for an incomplete one
(``TurnSettings.eot``; see :mod:`conversation.turns`).

Input features are Whisper's log-mel spectrogram of exactly 8 s (audio left-padded with
zeros), computed here with numpy: waveform normalized to zero mean and unit variance; a
400-point periodic-Hann STFT with a 160-sample hop on the reflect-padded signal; power
spectrum projected onto 80 Slaney-normalized mel bands (0-8 kHz); ``log10`` floored at
1e-10; the last frame dropped (800 frames); values clamped to 8 below the maximum and
scaled as ``(x + 4) / 4``. The model returns a probability (a sigmoid already applied).

:class:`SmartTurn` is synchronous and thread-safe (onnxruntime sessions are): run it in an
executor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16_000
WINDOW_S = 8
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = WINDOW_S * RATE // HOP  # 800


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = RATE) -> np.ndarray:
    """Triangular filters of unit area per band (Slaney), shape ``(n_mels, n_fft//2+1)``."""
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(rate / 2)), n_mels + 2)
    )
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lo) / (mid - lo)
    falling = (hi - bins[None, :]) / (hi - mid)
    tri = np.clip(np.minimum(rising, falling), 0.0, None)
    return tri * (2.0 / (hi - lo))


_FILTERS = mel_filters()
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann


def last_window(audio16k: np.ndarray) -> np.ndarray:
    """The last 8 s of ``audio16k``, left-padded with zeros to exactly 8 s."""
    a = np.asarray(audio16k, dtype=np.float32).reshape(-1)[-WINDOW_S * RATE :]
    return np.pad(a, (WINDOW_S * RATE - a.size, 0))


def log_mel(audio16k: np.ndarray) -> np.ndarray:
    """Whisper-style log-mel features of the last 8 s: float32 ``(80, 800)``."""
    x = last_window(audio16k)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    starts = np.arange(FRAMES + 1) * HOP
    frames = padded[starts[:, None] + np.arange(N_FFT)[None, :]]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(_FILTERS @ power.T, 1e-10))[:, :FRAMES]
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


@dataclass(frozen=True)
class Verdict:
    complete: bool
    probability: float


class SmartTurn:
    """The Smart Turn model; loads lazily on first use (or :meth:`load`)."""

    def __init__(self, model_path: str | Path, *, threshold: float = 0.5, threads: int = 1):
        self.model_path = Path(model_path)
        self.threshold = threshold
        self.threads = threads
        self._session: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                self._session = ort.InferenceSession(
                    str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
                )
            return self._session

    def predict(self, audio16k: np.ndarray) -> Verdict:
        """Whether the speech in ``audio16k`` (mono float32 16 kHz, ending where the person
        stopped) is a finished turn. Blocking: run it in an executor."""
        features = log_mel(audio16k)[None]
        (out,) = self.load().run(None, {"input_features": features})
        p = float(np.asarray(out).reshape(-1)[0])
        return Verdict(p > self.threshold, p)
