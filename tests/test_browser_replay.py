"""The web page in headless Chromium against the real server, with the replay engine.

The fake microphone plays a WAV once: 1.5 s of silence, a loud burst (the replayer's
"speech"), silence while the recorded reply plays, then a second burst that interrupts it.
"""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np
import pytest
from browser_util import poll

from conversation.replay import ReplayEngine, tone

pytestmark = pytest.mark.browser
RATE = 48_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def write_wav(path: Path, parts: list[tuple[float, bool]]) -> Path:
    rng = np.random.default_rng(0)
    chunks = []
    for seconds, loud in parts:
        n = int(seconds * RATE)
        chunks.append(
            (rng.standard_normal(n) * 6000).astype(np.int16) if loud else np.zeros(n, np.int16)
        )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(chunks).tobytes())
    return path


async def test_page_talks_and_is_interrupted(seetalk_server, chromium, camera_y4m, tmp_path):
    engine = ReplayEngine(tone(5.0), reply_text="a recorded reply that plays for five seconds")
    srv = await seetalk_server(engine)
    wav = write_wav(
        tmp_path / "mic.wav", [(1.5, False), (0.8, True), (2.5, False), (0.8, True), (8.0, False)]
    )
    page = await chromium(srv.url, wav=wav, y4m=camera_y4m)
    await page.click("#connect")
    await poll(page, "window.seetalk.connected")
    # the first burst is heard and answered; the reply is audible in the page
    await poll(page, "window.seetalk.events.some(e => e.type === 'response.created')")
    await poll(page, "window.seetalk.level > 0.02", 5)
    assert await page.evaluate("window.seetalk.state") == "speaking"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_replay_speaking.png"))
    # the second burst interrupts: the page hears silence, events say cancelled + truncated
    await poll(
        page,
        "window.seetalk.events.some(e => e.type === 'response.done' && "
        "e.response.status === 'cancelled')",
        10,
    )
    await poll(page, "window.seetalk.level < 0.005", 10)
    truncated = await page.evaluate(
        "window.seetalk.events.find(e => e.type === 'conversation.item.truncated')"
    )
    assert truncated and 0 < truncated["audio_end_ms"] < 5000
    entry = await page.evaluate(
        "window.seetalk.transcript.filter(t => t.interrupted).map(t => t.text)"
    )
    assert entry == [truncated["transcript"]]
    # the camera reached the session
    assert engine.sessions[0].video_frames > 0
    # typed message and the stop button
    await page.fill("#message", "hello")
    await page.click("#send")
    await poll(page, "window.seetalk.level > 0.02", 5)
    n_done = await page.evaluate(
        "window.seetalk.events.filter(e => e.type==='response.done').length"
    )
    await page.click("#stop")
    await poll(
        page, f"window.seetalk.events.filter(e => e.type==='response.done').length > {n_done}"
    )
    await poll(page, "window.seetalk.level < 0.005", 10)
    # disconnect frees the session on the server
    await page.click("#connect")
    deadline = time.monotonic() + 10
    while srv.state.peers and time.monotonic() < deadline:
        await page.wait_for_timeout(100)
    assert not srv.state.peers
    assert await page.evaluate("window.seetalk.state") == "disconnected"


async def test_page_reports_unreachable_server_and_refusals(seetalk_server, chromium):
    from seetalk.config import ServerConfig

    engine = ReplayEngine()
    srv = await seetalk_server(engine, ServerConfig(api_key="k"))
    page = await chromium(srv.url)
    assert await page.is_visible("#key-row")
    await page.click("#connect")
    await poll(page, "window.seetalk.errors.length > 0")
    assert "access key" in (await page.text_content("#error"))
    await page.fill("#key", "wrong")
    await page.click("#connect")
    await poll(page, "window.seetalk.errors.length > 1")
    assert "wrong API key" in (await page.text_content("#error"))
    await page.fill("#key", "k")
    await page.click("#connect")
    await poll(page, "window.seetalk.connected")
    # the server goes away mid-session: the page says the connection was lost
    await srv.state.close_all()
    await poll(page, "window.seetalk.state === 'error'", 15)
    assert "lost" in (await page.text_content("#error")) or "closed" in (
        await page.text_content("#error")
    )
