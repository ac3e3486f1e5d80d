"""A simulated loudspeaker next to the microphone: what was played comes back as echo.

Used by ``seetalk run-file --echo DELAY_MS,GAIN``, ``bench/echo.py`` and the tests. The echo
is the played signal convolved with a short room response (a direct path of amplitude
``gain`` and an exponentially decaying diffuse tail: a little reverberation), ``delay_ms``
later on the microphone's timeline. Pure and deterministic (a seeded tail); no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voice.audio import StreamResampler


@dataclass(frozen=True)
class EchoSpec:
    """``delay_ms`` from playing to hearing, ``gain`` of the direct path, reverberation time
    ``rt60_s`` and tail level ``tail_db`` (relative to the direct path)."""

    delay_ms: float
    gain: float
    rt60_s: float = 0.25
    tail_db: float = -10.0

    @classmethod
    def parse(cls, text: str) -> EchoSpec:
        """``"DELAY_MS,GAIN"``, e.g. ``"150,0.5"``."""
        try:
            delay, gain = (float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--echo takes DELAY_MS,GAIN (e.g. 150,0.5), got {text!r}") from None
        if not 20 <= delay <= 2000 or not 0 <= gain <= 4:
            raise ValueError("--echo: the delay is 20-2000 ms and the gain 0-4")
        return cls(delay, gain)


def room_response(
    spec: EchoSpec, rate: int, *, seed: int = 0, length_s: float = 0.12
) -> np.ndarray:
    """The echo path's impulse response (without the delay): direct path, a weak early
    reflection, then a decaying noise tail from 2.5 ms on."""
    rng = np.random.default_rng(seed)
    n = max(1, int(length_s * rate))
    t = np.arange(n) / rate
    scale = 10 ** (spec.tail_db / 20) / np.sqrt(rate * 0.01)
    h = rng.standard_normal(n) * np.exp(-6.9 * t / spec.rt60_s) * scale
    h[: max(1, int(0.0025 * rate))] = 0.0
    h[0] = 1.0
    if n > 3:
        h[3] = 0.3
    return (spec.gain * h).astype(np.float32)


class Loudspeaker:
    """Streams echo: :meth:`play` what left the session (any rate), :meth:`hear` the next
    microphone samples' echo (at ``rate``). Played and heard samples share one timeline:
    the ``k``-th sample played (after resampling) is heard from microphone sample
    ``k + delay`` on. Audio not yet played when it is due is silence, so the delay must be
    at least the step between a microphone chunk and the next pull. Bounded: it keeps the
    delay plus the room response of played audio."""

    def __init__(self, spec: EchoSpec, rate: int, *, seed: int = 0) -> None:
        self.spec = spec
        self.rate = rate
        self.h = room_response(spec, rate, seed=seed)
        self.delay = int(round(spec.delay_ms * rate / 1000))
        self._x = np.zeros(0, np.float32)  # played samples from index self._x0 on
        self._x0 = 0
        self._played = 0
        self._heard = 0
        self._resampler: StreamResampler | None = None

    def play(self, samples: np.ndarray, rate: int) -> None:
        x = np.asarray(samples)
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        if rate != self.rate:
            if self._resampler is None or self._resampler.in_rate != rate:
                self._resampler = StreamResampler(rate, self.rate)
            x = self._resampler.process(x)
        self._x = np.concatenate([self._x, x])
        self._played += x.size

    def hear(self, n: int) -> np.ndarray:
        """The echo in the next ``n`` microphone samples."""
        a = self._heard - self.delay - (self.h.size - 1)  # first played sample needed
        b = self._heard + n - self.delay  # one past the last
        seg = np.zeros(b - a, np.float32)
        lo, hi = max(a, self._x0), min(b, self._x0 + self._x.size)
        if hi > lo:
            seg[lo - a : hi - a] = self._x[lo - self._x0 : hi - self._x0]
        self._heard += n
        keep_from = self._heard - self.delay - self.h.size  # older samples are never needed
        if keep_from > self._x0:
            drop = min(keep_from - self._x0, self._x.size)
            self._x, self._x0 = self._x[drop:], self._x0 + drop
        return np.convolve(seg, self.h, mode="valid").astype(np.float32)
