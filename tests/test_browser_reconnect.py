"""The page reconnects by itself (web/app.js, docs/webrtc.md): headless Chromium, the real
server, the replay engine.

The server loses the page's connection (``Peer.lost``: the path ICE failure and the media
timeout take); the page says "Reconnecting…", offers again with the resume token of
``session.created`` and is back in the same session, transcript kept, saying so. When the
resume window has passed, the page says the session has ended.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from browser_util import poll

from conversation.replay import ReplayEngine

pytestmark = pytest.mark.browser
RATE = 48_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def mic_wav(path: Path) -> Path:
    """1.5 s of silence, a loud burst (the replayer's 'speech'), then silence."""
    rng = np.random.default_rng(0)
    audio = np.concatenate(
        [
            np.zeros(int(1.5 * RATE), np.int16),
            (rng.standard_normal(int(0.8 * RATE)) * 6000).astype(np.int16),
            np.zeros(40 * RATE, np.int16),
        ]
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(audio.tobytes())
    return path


async def _answered(page) -> None:
    await page.click("#connect")
    await poll(page, "window.seetalk.connected")
    await poll(
        page,
        "window.seetalk.events.some(e => e.type === 'response.done' && "
        "e.response.status === 'completed')",
        20,
    )


async def test_the_page_reconnects_to_the_same_session(
    seetalk_server, chromium, camera_y4m, tmp_path
):
    engine = ReplayEngine(reply_text="a recorded reply")
    srv = await seetalk_server(engine)
    page = await chromium(srv.url, wav=mic_wav(tmp_path / "mic.wav"), y4m=camera_y4m)
    await _answered(page)
    sid = await page.evaluate("window.seetalk.sessionId")
    lines = await page.evaluate("window.seetalk.transcript.map(t => t.role + ':' + t.text)")
    assert "assistant:a recorded reply" in lines

    srv.state.peers[sid].lost("test_drop")  # the network went away
    await poll(page, "window.seetalk.state === 'reconnecting'", 10)
    await poll(page, "window.seetalk.reconnects === 1 && window.seetalk.connected", 20)
    assert await page.evaluate("window.seetalk.sessionId") == sid
    assert len(engine.sessions) == 1 and not engine.sessions[0].closed
    assert srv.state.peers[sid].stats()["resumed"] == 1
    kept = await page.evaluate("window.seetalk.transcript.map(t => t.role + ':' + t.text)")
    assert kept[: len(lines)] == lines  # the transcript is kept
    shown = await page.inner_text("#transcript")
    assert "Reconnecting…" in shown and "Reconnected" in shown
    # the same session goes on over the new connection
    await page.fill("#message", "hello again")
    await page.click("#send")
    await poll(
        page,
        "window.seetalk.events.filter(e => e.type === 'response.done' && "
        "e.response.status === 'completed').length >= 2",
        10,
    )
    await poll(page, "window.seetalk.state === 'listening'", 10)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_reconnected.png"))
    await page.click("#connect")  # Disconnect: a hang-up, the session ends at once
    await poll(page, "window.seetalk.state === 'disconnected'", 5)
    for _ in range(100):
        if not srv.state.peers:
            break
        await page.wait_for_timeout(50)
    assert not srv.state.peers and engine.closed_sessions == 1


async def test_the_page_says_when_the_session_has_ended(
    seetalk_server, chromium, camera_y4m, tmp_path
):
    engine = ReplayEngine(reply_text="a recorded reply")
    srv = await seetalk_server(engine, resume_window_s=0.05)  # gone before the first retry
    page = await chromium(srv.url, wav=mic_wav(tmp_path / "mic.wav"), y4m=camera_y4m)
    await _answered(page)
    sid = await page.evaluate("window.seetalk.sessionId")
    srv.state.peers[sid].lost("test_drop")
    await poll(page, "window.seetalk.state === 'error'", 20)
    assert "session has ended" in await page.inner_text("#error")
    assert await page.evaluate("window.seetalk.reconnects") == 0
    assert "a recorded reply" in await page.inner_text("#transcript")  # still shown
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_session_ended.png"))
