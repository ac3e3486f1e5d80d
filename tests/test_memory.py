"""Freed memory goes back to the system as sessions end, at most once per interval."""

from __future__ import annotations

import asyncio

from seetalk.memory import HeapTrimmer


async def test_trims_at_most_once_per_interval():
    trimmer = HeapTrimmer(interval_s=5.0)
    if trimmer._trim is None:  # not glibc: nothing to do, and it says so
        assert not trimmer.due(0.0)
        return
    calls: list[int] = []
    trimmer._trim = calls.append  # type: ignore[assignment]
    trimmer.request(100.0)
    trimmer.request(101.0)  # a trim is running or was just done: skipped
    for _ in range(100):
        if trimmer.trims:
            break
        await asyncio.sleep(0.01)
    assert calls == [0] and trimmer.trims == 1
    trimmer.request(104.9)  # within the interval
    assert not trimmer.due(104.9) and trimmer.due(105.0)
    trimmer.request(105.0)
    for _ in range(100):
        if trimmer.trims == 2:
            break
        await asyncio.sleep(0.01)
    assert calls == [0, 0]
