"""Outgoing audio: a short buffer between synthesis and the transport.

Paced transports (WebRTC, file sessions) pull exact frames with :meth:`AudioOutput.pull`;
push transports (the WebSocket API) take chunks as soon as they exist with
:meth:`AudioOutput.read`. Either way the reply's playout position advances as audio leaves.

Overflow policy: *backpressure*. Synthesis runs faster than real time; a writer waits while
more than ``high_water_s`` of audio is buffered, so barge-in has at most that much to drop,
and :meth:`clear` drops it all at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from conversation.reply import Reply


@dataclass
class OutputChunk:
    reply_id: str
    item_id: str
    samples: np.ndarray  # int16 mono
    start: int  # position of the first sample in the reply's audio
    rate: int = 48_000  # of ``samples``: the reply's rate


PlayoutCallback = Callable[[Reply, str], None]  # (reply, "started" | "finished")


class AudioOutput:
    def __init__(
        self, rate: int, *, high_water_s: float = 0.6, on_playout: PlayoutCallback | None = None
    ) -> None:
        self.rate = rate
        self.high_water_s = high_water_s
        self.high_water = int(rate * high_water_s)
        self._queue: deque[tuple[Reply, np.ndarray]] = deque()
        self._buffered = 0
        self._space = asyncio.Event()
        self._space.set()
        self._data = asyncio.Event()
        self._on_playout = on_playout
        self._current: Reply | None = None
        # listeners (the session's echo canceller): every sample that leaves, and a clear
        self.on_audio: Callable[[np.ndarray, int], None] | None = None
        self.on_clear: Callable[[], None] | None = None

    @property
    def buffered_samples(self) -> int:
        return self._buffered

    @property
    def idle(self) -> bool:
        """Nothing queued and no reply playing."""
        return not self._queue and self._current is None

    def set_rate(self, rate: int) -> None:
        """The rate of the next replies (the session checks that its playout can follow).
        Audio already queued keeps its own reply's rate."""
        if rate <= 0:
            raise ValueError("the output rate must be positive")
        self.rate = rate
        self.high_water = int(rate * self.high_water_s)

    @property
    def current(self) -> Reply | None:
        """The reply whose audio is playing, if any."""
        return self._current

    async def write(self, reply: Reply, samples: np.ndarray) -> None:
        """Queue ``samples`` of ``reply``; waits while the buffer is above its high water.

        Cancelling it is safe: nothing is queued then.
        """
        while self._buffered >= self.high_water:
            self._space.clear()
            await self._space.wait()
        if len(samples) and reply.status == "in_progress":
            self._queue.append((reply, samples))
            self._buffered += len(samples)
            self._data.set()

    def pull(self, n: int) -> np.ndarray:
        """The next ``n`` samples (int16), silence where nothing is queued."""
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._queue:
            reply, samples = self._queue[0]
            take = min(n - filled, len(samples))
            out[filled : filled + take] = samples[:take]
            filled += take
            self._advance(reply, take)
            if take == len(samples):
                self._queue.popleft()
            else:
                self._queue[0] = (reply, samples[take:])
        self._after_take()
        if self.on_audio is not None:
            self.on_audio(out, self.rate)
        return out

    async def read(self) -> OutputChunk:
        """The next queued chunk, whole, as soon as there is one (push transports).

        Cancelling it is safe.
        """
        while not self._queue:
            self._data.clear()
            await self._data.wait()
        reply, samples = self._queue.popleft()
        start = reply.played
        self._advance(reply, len(samples))
        self._after_take()
        if self.on_audio is not None:
            self.on_audio(samples, reply.rate)
        return OutputChunk(reply.id, reply.item_id, samples, start, reply.rate)

    def _advance(self, reply: Reply, n: int) -> None:
        if self._current is not reply:
            self._finish_current()
            self._current = reply
        reply.played += n
        self._buffered -= n
        if not reply.started_audio:
            reply.started_audio = True
            if self._on_playout is not None:
                self._on_playout(reply, "started")

    def _after_take(self) -> None:
        if self._buffered < self.high_water:
            self._space.set()
        if not self._queue:
            current = self._current
            if current is not None and current.finished_playing:
                self._finish_current()

    def _finish_current(self) -> None:
        reply, self._current = self._current, None
        if reply is not None and self._on_playout is not None and reply.status == "in_progress":
            self._on_playout(reply, "finished")

    def check_finished(self) -> None:
        """Call when a reply's synthesis ends: reports it finished if all of it has played."""
        self._after_take()

    def clear(self) -> Reply | None:
        """Drop every unplayed sample at once. Returns the reply that was playing, if any."""
        reply = self._current
        self._queue.clear()
        self._buffered = 0
        self._current = None
        self._space.set()
        if self.on_clear is not None:
            self.on_clear()
        return reply
