"""The web page in headless Chromium against the real server on its default models.

Fake microphone (played once): 1.5 s of silence, a spoken question (espeak-ng), silence while
the answer starts, then a spoken interruption. Fake camera: a y4m test pattern.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from browser_util import poll

pytestmark = [pytest.mark.browser, pytest.mark.models]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="module")
def engine():
    from models.engine import Engine

    return Engine.load()


def mic_wav(espeak, tmp_path: Path, question: str, gap_s: float, interruption: str) -> Path:
    q = espeak(question, wav=True)
    i = espeak(interruption, wav=True)
    out = tmp_path / "mic.wav"
    # sox: silence, question, gap, interruption, tail; 48 kHz mono like a microphone
    subprocess.run(
        ["sox", "-n", "-r", "22050", "-c", "1", str(tmp_path / "s1.wav"), "trim", "0", "1.5"],
        check=True,
    )
    subprocess.run(
        ["sox", "-n", "-r", "22050", "-c", "1", str(tmp_path / "gap.wav"), "trim", "0", str(gap_s)],
        check=True,
    )
    subprocess.run(
        ["sox", "-n", "-r", "22050", "-c", "1", str(tmp_path / "tail.wav"), "trim", "0", "8"],
        check=True,
    )
    subprocess.run(
        [
            "sox",
            str(tmp_path / "s1.wav"),
            str(q),
            str(tmp_path / "gap.wav"),
            str(i),
            str(tmp_path / "tail.wav"),
            "-r",
            "48000",
            str(out),
        ],
        check=True,
    )
    return out


async def test_browser_conversation_with_barge_in(
    seetalk_server, chromium, engine, espeak, camera_y4m, tmp_path, normalize_words
):
    srv = await seetalk_server(engine)
    wav = mic_wav(
        espeak,
        tmp_path,
        "Tell me a long story about a dog.",
        12.0,
        "Stop. That is enough, thank you.",
    )
    page = await chromium(srv.url, wav=wav, y4m=camera_y4m)
    await page.click("#connect")
    await poll(page, "window.seetalk.connected", 10)
    # a long answer, so the interruption (about 16 s into the file, 12 s after the question)
    # lands inside it on a slow machine (first audio up to ~15 s) and on a fast one alike,
    # whose reply can be over by 25 s (first audio at 7 s, 18 s of story)
    await page.evaluate(
        "window.seetalk.send({type: 'session.update', session: {max_output_tokens:"
        " 400, instructions: 'Always answer with a long story of at least "
        "twelve sentences, in plain spoken words.'}})"
    )
    # the question's transcript arrives on the data channel and shows on the page
    final = await poll(
        page,
        "window.seetalk.events.find(e => e.type === "
        "'conversation.item.input_audio_transcription.completed')",
        20,
    )
    # the question's words, whatever whisper makes of one of them ("a dog" came back as "Zod")
    assert {"story", "dog"} & set(normalize_words(final["transcript"])), final["transcript"]
    # the reply is audible in the browser (AnalyserNode on the remote track)
    await poll(page, "window.seetalk.level > 0.02", 40)
    await page.wait_for_timeout(700)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_conversation.png"))
    # the interruption stops it: quiet in the browser, cancelled + truncated in the events
    started = await page.evaluate(
        "window.seetalk.events.find(e => e.type === 'output_audio_buffer.started').response_id"
    )
    cancelled = await poll(
        page,
        "window.seetalk.events.find(e => e.type === 'response.done' "
        f"&& e.response.status === 'cancelled' && e.response.id === "
        f"'{started}')",
        40,
    )
    t_cancel = cancelled["_t"]
    await poll(page, "window.seetalk.level < 0.005", 3)
    quiet_ms = await page.evaluate(f"performance.now() - {t_cancel}")
    truncated = await page.evaluate(
        "window.seetalk.events.find(e => e.type === 'conversation.item.truncated')"
    )
    if truncated is None:
        log = await page.evaluate(
            "window.seetalk.events.map(e => e.type + ' ' + "
            "JSON.stringify(e.response?.status_details || e.transcript || "
            "e.delta || '')).join('\\n')"
        )
        raise AssertionError("no conversation.item.truncated; events:\n" + log)
    assert truncated["transcript"].strip()
    assert truncated["audio_end_ms"] > 0
    shown = await page.evaluate(
        "window.seetalk.transcript.filter(t => t.interrupted).map(t => t.text)"
    )
    assert shown == [truncated["transcript"]]
    print(
        f"heard before the stop: {truncated['transcript']!r}; page quiet {quiet_ms:.0f} ms "
        "after response.done"
    )
    await page.screenshot(path=str(ARTIFACTS / "page_after_barge_in.png"))
    assert srv.state.peers  # still connected, the conversation goes on
    await page.click("#connect")
