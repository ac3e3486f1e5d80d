"""Giving freed memory back to the system between sessions.

A session allocates and frees tens of megabytes natively (models' per-call buffers, the
echo canceller, codecs). glibc keeps what was freed in its heaps for reuse, so over session
churn a server's RSS creeps up although the memory in use stays flat (bench/soak.py measures
both). :class:`HeapTrimmer` calls glibc's ``malloc_trim`` after sessions end, at most once
per ``interval_s``, in a worker thread; elsewhere (not glibc) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


class HeapTrimmer:
    """``request(now)`` after a session ends: trims the heap unless it was trimmed in the
    last ``interval_s`` (or a trim is running). Call from the event loop."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.trims = 0
        self._last: float | None = None
        self._running = False
        self._trim = _malloc_trim()

    def due(self, now: float) -> bool:
        return (
            self._trim is not None
            and not self._running
            and (self._last is None or now - self._last >= self.interval_s)
        )

    def request(self, now: float) -> None:
        if not self.due(now):
            return
        self._last, self._running = now, True
        future = asyncio.get_running_loop().run_in_executor(None, self._run)
        future.add_done_callback(self._done)

    def _run(self) -> None:
        assert self._trim is not None
        self._trim(0)

    def _done(self, future: asyncio.Future[None]) -> None:
        self._running = False
        self.trims += 1
        if not future.cancelled() and future.exception() is not None:
            log.warning("malloc_trim failed", exc_info=future.exception())
