"""Media plumbing between aiortc tracks and a session.

- :class:`PacedAudioTrack`: the one outgoing audio track. Every ``recv()`` returns exactly
  20 ms (960 samples at 48 kHz), s16 mono, pulled from ``session.audio_out.pull``; frames are
  released on an absolute schedule (start + n * 20 ms) so the clock never drifts, and after a
  stall longer than ``max_lag_s`` the schedule restarts instead of bursting to catch up.
- :class:`LatestFrame`: a latest-wins slot for camera frames (capacity one; overflow policy:
  replace), so a slow consumer never builds up delay.
- :func:`fit_size`: the size a camera frame is scaled to before conversion.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Awaitable, Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

FRAME_MS = 20


class PacedAudioTrack(MediaStreamTrack):
    """An audio track that paces ``pull(n)`` into exact 20 ms frames.

    ``pull`` must return ``n`` int16 samples (mono) and never block: the session's paced
    playout returns silence when nothing plays. ``clock`` and ``sleep`` are injectable so a
    test can run the track on virtual time.
    """

    kind = "audio"

    def __init__(
        self,
        pull: Callable[[int], np.ndarray],
        rate: int = 48_000,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_lag_s: float = 0.2,
    ) -> None:
        super().__init__()
        self._pull = pull
        self.rate = rate
        self.samples = rate * FRAME_MS // 1000
        self._time_base = fractions.Fraction(1, rate)
        self._clock = clock
        self._sleep = sleep
        self._max_lag_s = max_lag_s
        self._start: float | None = None
        self._sent = 0  # samples released since ``_start``
        self._pts = 0  # monotonic RTP-side timestamp, never reset
        self.frames = 0
        self.resyncs = 0

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, at its due time. Safe to cancel (no state changes before
        the sleep completes)."""
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self._sent / self.rate
            if now - due > self._max_lag_s:  # the loop stalled: restart the schedule
                self._start, self._sent = now, 0
                self.resyncs += 1
            elif due > now:
                await self._sleep(due - now)
        pcm = np.asarray(self._pull(self.samples), dtype=np.int16).reshape(-1)
        if pcm.shape[0] != self.samples:  # be strict about frame size whatever pull does
            fixed = np.zeros(self.samples, dtype=np.int16)
            fixed[: min(self.samples, pcm.shape[0])] = pcm[: self.samples]
            pcm = fixed
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._sent += self.samples
        self._pts += self.samples
        self.frames += 1
        return frame


class LatestFrame:
    """A one-slot mailbox: ``put`` replaces, ``get`` waits for a frame newer than the last.

    ``dropped`` counts frames replaced before anyone took them.
    """

    def __init__(self) -> None:
        self._item: Any = None
        self._event = asyncio.Event()
        self.dropped = 0
        self.received = 0

    def put(self, item: Any) -> None:
        if self._item is not None:
            self.dropped += 1
        self._item = item
        self.received += 1
        self._event.set()

    async def get(self) -> Any:
        """Wait for and take the newest item. Safe to cancel."""
        while self._item is None:
            self._event.clear()
            await self._event.wait()
        item, self._item = self._item, None
        return item


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(w, h)`` scaled down to fit ``max_side`` keeping the aspect ratio; even numbers,
    at least 2, so any odd or absurd camera size converts cheaply."""
    width, height = max(1, width), max(1, height)
    scale = min(1.0, max_side / max(width, height))
    w = max(2, int(width * scale) // 2 * 2)
    h = max(2, int(height * scale) // 2 * 2)
    return w, h


def frame_to_bgr(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    """Convert (and scale) a decoded frame to a BGR array; runs in a worker thread."""
    w, h = fit_size(frame.width, frame.height, max_side)
    return frame.to_ndarray(width=w, height=h, format="bgr24")
