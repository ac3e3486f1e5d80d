"""Echo of the assistant's own voice: the reply is the reference.

A loudspeaker next to the microphone sends every reply back into the input, some
50-500 ms later, quieter and with the room's reverberation. The session knows each sample it
played and when, so it removes that echo before recognition, and tells voice activity that
the reply explains (:mod:`voice.echo_gate`) from a person talking:

- :class:`FarEnd` holds the played samples (16 kHz) on the *microphone* timeline, a bounded
  ring: a sample played when the microphone had delivered ``n`` samples sits at index ``n``.
- :func:`estimate_path` finds the echo path (delay, gain, correlation) by normalized
  cross-correlation of the microphone with the played signal (pure, numpy).
- :class:`EchoCanceller` tracks that path and runs WebRTC's AEC3 (``pywebrtc-audio``) on
  10 ms blocks, with the played signal shifted by the tracked delay when the delay is longer
  than AEC3's own search covers. For every block it reports the share of the microphone's
  energy that the reply does not explain (:attr:`EchoBlock.residual`): near 0 for pure echo,
  near 1 for a person speaking (or when nothing is playing).

Nothing here reads a clock or awaits: time is the count of microphone samples. The
canceller is not thread-safe except :meth:`EchoCanceller.play`/:meth:`~EchoCanceller.stop`,
which may run on another thread than :meth:`~EchoCanceller.process` (one lock).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from voice.audio import StreamResampler

RATE = 16_000
BLOCK = 160  # 10 ms: AEC3's frame
MAX_DELAY_S = 0.6  # the longest echo delay searched (the range is 50-500 ms)
WINDOW_S = 1.0  # microphone audio correlated per estimate
ESTIMATE_EVERY_S = 0.25
HISTORY_S = MAX_DELAY_S + WINDOW_S + 0.2  # played audio kept behind the microphone
AHEAD_S = 30.0  # played audio accepted ahead of the microphone (push transports); more is dropped
AEC3_REACH_S = 0.45  # residual delay AEC3 finds by itself (measured: up to ~0.5 s)
MIN_RHO = 0.25  # correlation that counts as an echo path
HEARD_SHARE = 0.01  # a microphone 20 dB below the reply heard nothing of it
MIN_PLAYED_BLOCKS = 40  # an estimate needs 400 ms of the reply in its window
ECHO_FREE_AFTER = 4  # windows of the reply playing, the microphone silent: no echo (1 s)
FORGET_AFTER = 12  # windows in a row without the echo found: forget the path (3 s)
QUIET = 1e-7  # block energy (mean square) below which a block is silence (-70 dBFS)
SLACK = 4000  # paced playout within 250 ms of where the played stream ends continues it
TAIL = 4000  # samples of reverberation counted after the direct path (250 ms)
EXPLAIN_MARGIN = 1.5  # energy the reply may explain: 1.5 times the expected echo


@dataclass(frozen=True)
class EchoPath:
    """The echo path found in one window: ``delay`` samples, amplitude ``gain`` of the direct
    path (least squares), and ``rho``, the normalized correlation at that delay (0..1)."""

    delay: int
    gain: float
    rho: float

    @property
    def delay_ms(self) -> float:
        return self.delay * 1000 / RATE


@dataclass(frozen=True)
class EchoBlock:
    """One 10 ms block of microphone audio. ``start``: its first sample on the microphone
    timeline. ``residual``: the share of the block's energy that the reply does not explain,
    0..1: the microphone's energy less twice the echo energy the played signal predicts
    through the tracked path (and less the noise floor), over the microphone's energy (0 for
    pure echo or silence during a reply; 1 when nothing was playing). ``playing``: played
    audio could reach the microphone in this block."""

    start: int
    residual: float
    playing: bool


def _prewhiten(x: np.ndarray) -> np.ndarray:
    """First-order pre-emphasis: flattens the speech spectrum, so correlation peaks are sharp."""
    y = np.empty_like(x)
    y[0] = x[0]
    y[1:] = x[1:] - 0.95 * x[:-1]
    return y


def estimate_path(
    far: np.ndarray, mic: np.ndarray, *, min_delay: int = 0, max_delay: int | None = None
) -> EchoPath | None:
    """The echo path between ``far`` (played) and ``mic`` (heard), where ``far`` ends where
    ``mic`` ends and starts ``max_delay`` samples earlier (``far.size == mic.size +
    max_delay``). Returns ``None`` when either is silent. Pure."""
    mic = np.asarray(mic, dtype=np.float64)
    far = np.asarray(far, dtype=np.float64)
    max_delay = far.size - mic.size if max_delay is None else max_delay
    if far.size != mic.size + max_delay or mic.size < BLOCK or max_delay < min_delay:
        raise ValueError("far must be max_delay samples longer than mic")
    if float(np.mean(mic**2)) < QUIET or float(np.mean(far**2)) < QUIET:
        return None
    # at 8 kHz (pre-whitened, pairs averaged): a quarter of the work, 0.125 ms resolution
    m, f = _halve(_prewhiten(mic)), _halve(_prewhiten(far[far.size % 2 :]))
    top, lo = (far.size - mic.size) // 2, min_delay // 2
    n = f.size  # t + j < f.size for every lag searched: the circular correlation is exact
    # corr[j] = sum_t m[t] * f[t + j]; the mic at t against far played (top - j) earlier
    corr = np.fft.irfft(np.fft.rfft(f, n) * np.conj(np.fft.rfft(m, n)), n)
    span = slice(max(0, top - max_delay // 2), top - lo + 1)
    energy = np.concatenate([[0.0], np.cumsum(f**2)])
    j = np.arange(span.start, span.stop)
    ef = energy[j + m.size] - energy[j]
    rho = corr[span] / np.sqrt(np.maximum(ef * float(np.sum(m**2)), 1e-18))
    k = int(np.argmax(rho))
    delay = min(max(2 * (top - int(j[k])), min_delay), max_delay)
    seg = far[far.size - mic.size - delay : far.size - delay]
    gain = float(np.sum(mic * seg)) / max(float(np.sum(seg * seg)), 1e-18)  # no BLAS threads
    return EchoPath(delay, max(gain, 0.0), float(max(rho[k], 0.0)))


def _halve(x: np.ndarray) -> np.ndarray:
    n = x.size // 2 * 2
    return 0.5 * (x[:n:2] + x[1:n:2])


class FarEnd:
    """The played signal at 16 kHz on the microphone timeline: a bounded ring.

    Overflow policy: samples more than ``ahead`` samples ahead of the microphone are dropped
    (counted in :attr:`dropped`); samples older than ``history`` behind it are forgotten."""

    def __init__(self, history: int, ahead: int) -> None:
        self.size = history + ahead
        self.history = history
        self.ahead = ahead
        self._buf = np.zeros(self.size, dtype=np.float32)
        self._valid_until = 0  # samples before this index were written (or are silence)
        self.dropped = 0

    @property
    def end(self) -> int:
        """One past the last sample written."""
        return self._valid_until

    def write(self, samples: np.ndarray, at: int, now: int) -> None:
        """Samples played from microphone index ``at`` on; ``now`` is the microphone's index."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        lo = max(at, now - self.history)
        hi = min(at + x.size, now + self.ahead)
        self.dropped += max(0, at + x.size - hi)
        if hi <= lo:
            return
        if lo > self._valid_until:  # a gap: silence was played
            self._put(
                self._valid_until, np.zeros(min(lo - self._valid_until, self.size), np.float32)
            )
        self._put(lo, x[lo - at : hi - at])
        self._valid_until = max(self._valid_until, hi)

    def truncate(self, at: int) -> None:
        """Nothing plays from ``at`` on (a cleared output)."""
        if at < self._valid_until:
            start = max(at, self._valid_until - self.size)
            self._put(start, np.zeros(self._valid_until - start, np.float32))
            self._valid_until = max(at, start)

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples ``start..start+n``; silence where nothing was played (or was forgotten)."""
        out = np.zeros(n, dtype=np.float32)
        lo, hi = max(start, self._valid_until - self.size, 0), min(start + n, self._valid_until)
        if hi > lo:
            idx = np.arange(lo, hi) % self.size
            out[lo - start : hi - start] = self._buf[idx]
        return out

    def _put(self, start: int, x: np.ndarray) -> None:
        if x.size > self.size:
            start, x = start + x.size - self.size, x[-self.size :]
        idx = np.arange(start, start + x.size) % self.size
        self._buf[idx] = x

    def reset(self) -> None:
        self._buf[:] = 0
        self._valid_until = 0
        self.dropped = 0


class PathTracker:
    """Follows the echo path from successive :class:`EchoPath` estimates (pure).

    A first path is taken when two estimates in a row agree (within 5 ms) with a correlation
    of at least ``min_rho``; later ones move the delay when two in a row agree, so one odd
    window (double talk) does not move it, and slow drift is followed. The gain is smoothed.
    Windows in which the reply played and the microphone stayed nearly silent count towards
    :attr:`echo_free`; :data:`FORGET_AFTER` windows in a row without the echo forget the
    path (a headset plugged in, a speaker muted)."""

    def __init__(self, min_rho: float = MIN_RHO) -> None:
        self.min_rho = min_rho
        self.path: EchoPath | None = None
        self._candidate: EchoPath | None = None
        self.misses = 0  # estimates in a row, with the reply playing, that found no path
        self.silent = 0  # ... in which the microphone was nearly silent too

    def update(self, est: EchoPath | None, *, heard: bool = True) -> EchoPath | None:
        """The next window's estimate (``None``: nothing played in it). ``heard``: the
        microphone held more than a trace of the reply's energy."""
        if est is None:
            return self.path
        if est.rho < self.min_rho:
            self.misses += 1
            self.silent += 0 if heard else 1
            if self.misses >= FORGET_AFTER:
                self.path = self._candidate = None
            return self.path
        self.misses = self.silent = 0
        tol = RATE * 5 // 1000
        cur = self.path
        if cur is None and (
            self._candidate is None or abs(est.delay - self._candidate.delay) > tol
        ):
            self._candidate = est  # a first path needs two windows that agree
            return None
        if cur is None or abs(est.delay - cur.delay) <= tol:
            self._candidate = None
            gain = est.gain if cur is None else 0.7 * cur.gain + 0.3 * est.gain
            rho = est.rho if cur is None else 0.7 * cur.rho + 0.3 * est.rho
            self.path = EchoPath(est.delay, gain, rho)
        elif self._candidate is not None and abs(est.delay - self._candidate.delay) <= tol:
            self.path, self._candidate = est, None
        else:
            self._candidate = est
        return self.path

    @property
    def echo_free(self) -> bool:
        """The reply has played for a while, the microphone stayed nearly silent and no
        echo was found."""
        return self.path is None and self.silent >= ECHO_FREE_AFTER

    def reset(self) -> None:
        self.path = self._candidate = None
        self.misses = self.silent = 0


def _aec3(rate: int) -> Any:
    from pywebrtc_audio import EchoCanceller as Aec3  # WebRTC AEC3

    return Aec3(rate, 1, stream_delay_ms=0)


class EchoCanceller:
    """Per-session echo cancellation with the reply as the reference (16 kHz mono float32).

    :meth:`play` records what the session played, stamped with the microphone index at
    that moment; :meth:`process` takes microphone audio in order and returns it with the
    echo removed, plus one :class:`EchoBlock` per 10 ms. Bounded: the played ring
    (:data:`HISTORY_S` behind, :data:`AHEAD_S` ahead), one 10 ms remainder, AEC3's fixed
    state and the last ``WINDOW_S`` of microphone audio. :meth:`reset` forgets all of it.
    """

    def __init__(self, *, max_delay_s: float = MAX_DELAY_S, backend: Any = None) -> None:
        self.max_delay = int(max_delay_s * RATE)
        self.window = int(WINDOW_S * RATE)
        self._lock = threading.Lock()
        history = max(int(HISTORY_S * RATE), self.max_delay + self.window + TAIL)
        self.far = FarEnd(history, int(AHEAD_S * RATE))
        self.tracker = PathTracker()
        self._make_backend = backend if backend is not None else _aec3
        self._aec = self._make_backend(RATE)
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending = np.zeros(0, dtype=np.float32)
        self._mic: deque[np.ndarray] = deque()  # the last window of microphone blocks
        self._mic_n = 0
        self.pos = 0  # microphone samples processed (the timeline)
        self.align = 0  # the played signal handed to AEC3 is shifted by this many samples
        self._next_estimate = 0
        self._far_end = 0  # where queued (push) playout ends
        self.noise = QUIET  # the microphone's noise floor (block energy), tracked

    # --- the played side (any thread) ------------------------------------------------------

    def play(self, samples: np.ndarray, rate: int, now: int, *, queued: bool = False) -> None:
        """``samples`` (int16 or float, mono, at ``rate``) leave for the loudspeaker when the
        microphone has delivered ``now`` samples. Paced playout is one stream: a chunk that
        comes within :data:`SLACK` of where the last one ended continues it (resampling
        makes chunk sizes jitter). ``queued``: a push transport, whose client plays its
        chunks back to back, so they start where the previous ones end, or now."""
        x = np.asarray(samples)
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        with self._lock:
            if rate != RATE:
                rs = self._resamplers.get(rate)
                if rs is None:
                    rs = self._resamplers[rate] = StreamResampler(rate, RATE)
                x = rs.process(x)
            if queued:
                at = max(now, self._far_end)
            elif abs(now - self._far_end) <= SLACK:
                at = self._far_end  # a continuous stream: chunk sizes jitter, the audio not
            else:
                at = now
            self.far.write(x, at, self.pos)
            self._far_end = at + x.size

    def stop(self, now: int) -> None:
        """Playout was cleared when the microphone had delivered ``now`` samples."""
        with self._lock:
            self.far.truncate(now)
            self._far_end = now

    # --- the microphone side ----------------------------------------------------------------

    @property
    def path(self) -> EchoPath | None:
        """The tracked echo path, once found."""
        return self.tracker.path

    def process(self, mic: np.ndarray) -> tuple[np.ndarray, list[EchoBlock]]:
        """Microphone audio in order -> (the same number of samples with the echo removed,
        one block report per completed 10 ms). The output lags by under 10 ms: samples wait
        for a whole block (the first call returns fewer samples, never more in total)."""
        x = np.asarray(mic, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n = buf.size // BLOCK
        out: list[np.ndarray] = []
        blocks: list[EchoBlock] = []
        for k in range(n):
            block = buf[k * BLOCK : (k + 1) * BLOCK]
            clean, report = self._block(block)
            out.append(clean)
            blocks.append(report)
        self._pending = buf[n * BLOCK :].copy()
        return (np.concatenate(out) if out else np.zeros(0, np.float32)), blocks

    def _block(self, mic: np.ndarray) -> tuple[np.ndarray, EchoBlock]:
        start = self.pos
        span = self.max_delay + TAIL + BLOCK  # lags TAIL + max_delay .. 0, block by block
        with self._lock:
            far = self.far.read(start - self.align, BLOCK)
            reach = self.far.read(start + BLOCK - span, span)
        # far-end energy of each 10 ms block, indexed by lag in blocks (0: this block)
        e_far = np.mean(reach.reshape(-1, BLOCK).astype(np.float64) ** 2, axis=1)[::-1]
        playing = float(np.max(e_far[: (self.max_delay + TAIL) // BLOCK])) >= QUIET
        clean = np.asarray(self._aec.process(mic.copy(), far), dtype=np.float32).reshape(-1)
        if self.tracker.echo_free:
            clean = mic  # no echo to remove: AEC3's suppressor would only mute the person
        self.pos += BLOCK
        self._remember(mic)
        if self.pos >= self._next_estimate:
            self._next_estimate = self.pos + int(ESTIMATE_EVERY_S * RATE)
            self._estimate()
        e_mic = float(np.mean(mic.astype(np.float64) ** 2))
        # minimum statistics: down at once, up by about 1 dB/s
        self.noise = max(QUIET, e_mic if e_mic < self.noise else self.noise * 1.0025)
        residual = 1.0
        if playing:
            echo = EXPLAIN_MARGIN * self._expected_echo(e_far) + 2.0 * self.noise
            residual = max(0.0, e_mic - echo) / e_mic if e_mic > 0 else 0.0
        return clean, EchoBlock(start, residual, playing)

    def _expected_echo(self, e_far: np.ndarray) -> float:
        """The echo energy the played signal can put in this block (mean square): through
        the tracked path (gain squared, the direct path and a reverberant tail); before a
        path is known, at most the loudest played block within reach (gain up to 1); none
        once the reply has played for a second without an echo."""
        path = self.tracker.path
        if path is None:
            return 0.0 if self.tracker.echo_free else 1.5 * float(np.max(e_far))
        d = path.delay // BLOCK
        direct = float(np.max(e_far[max(0, d - 1) : d + 2]))
        tail = float(np.mean(e_far[d + 2 : d + 2 + TAIL // BLOCK]))
        return path.gain**2 * (direct + 0.3 * tail)

    def _remember(self, mic: np.ndarray) -> None:
        self._mic.append(mic.copy())
        self._mic_n += mic.size
        while self._mic_n - self._mic[0].size >= self.window:
            self._mic_n -= self._mic.popleft().size

    def _estimate(self) -> None:
        if self._mic_n < self.window // 2:
            return
        mic = np.concatenate(list(self._mic))
        with self._lock:
            far = self.far.read(self.pos - mic.size - self.max_delay, mic.size + self.max_delay)
        blocks = far[: far.size // BLOCK * BLOCK].reshape(-1, BLOCK)
        if int(np.sum(np.mean(blocks**2, axis=1) >= QUIET)) < MIN_PLAYED_BLOCKS:
            return  # too little of the reply in the window to find its echo
        est = estimate_path(far, mic, max_delay=self.max_delay)
        e_far = float(np.mean(far**2))
        if est is None and e_far >= QUIET:
            est = EchoPath(0, 0.0, 0.0)  # the reply played and the microphone heard nothing
        heard = float(np.mean(mic**2)) > HEARD_SHARE * e_far
        path = self.tracker.update(est, heard=heard)
        if path is None:
            return
        # AEC3 searches about half a second itself: shift only when the echo is beyond its
        # reach, with hysteresis so small drift never moves the shift.
        residual = path.delay - self.align
        if residual < 0 or residual > int(AEC3_REACH_S * RATE):
            self.align = max(0, path.delay - RATE // 20)
            self._aec = self._make_backend(RATE)  # re-converge on the new alignment

    def reset(self) -> None:
        """Forget everything: a new session, or echo handling switched on again."""
        with self._lock:
            self.far.reset()
            self._resamplers.clear()
            self._far_end = 0
        self._aec = self._make_backend(RATE)
        self.tracker.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._mic.clear()
        self._mic_n = 0
        self.pos = 0
        self.align = 0
        self._next_estimate = 0
        self.noise = QUIET

    @property
    def state_samples(self) -> int:
        """Samples of audio the canceller holds (bounded: the ring, the window, a block)."""
        return self.far.size + self._mic_n + self._pending.size
