"""Helpers shared by the real-browser tests."""

from __future__ import annotations

import time


async def poll(page, js: str, limit_s: float = 15.0, step: float = 0.05):
    """Evaluate ``js`` until it is truthy; on time-out fail with the page's event log."""
    deadline = time.monotonic() + limit_s
    while True:
        value = await page.evaluate(js)
        if value:
            return value
        if time.monotonic() > deadline:
            events = await page.evaluate(
                "(window.seetalk?.events || []).map(e => e.type + (e.metrics ? "
                "JSON.stringify(e.metrics) : '') + (e.response?.status_details ? "
                "JSON.stringify(e.response.status_details) : '') + ' @' + Math.round(e._t))"
                ".join('\\n')"
            )
            raise AssertionError(f"timed out waiting for: {js}\nevents: {events}")
        await page.wait_for_timeout(step * 1000)
