"""The official ``openai`` package's realtime client holds a spoken conversation with seetalk
on the real default models over /v1/realtime: audio in, transcript and audio out, and a
barge-in with truncate. The client is bench/realtime_ws.py's paced-microphone driver; the
engine is the session-wide ``engine`` fixture (tests/conftest.py, engine fixtures)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "realtime_ws.py"
    spec = importlib.util.spec_from_file_location("seetalk_bench_realtime_ws", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_openai_client_spoken_conversation_and_barge_in(
    realtime_server, engine, bench, espeak, normalize_words
):
    from openai import AsyncOpenAI

    srv = await realtime_server(engine)
    client = AsyncOpenAI(api_key="x", websocket_base_url=srv.ws)
    async with client.realtime.connect(model="seetalk") as conn, bench.Driver(conn) as d:
        _, created = await d.wait_for("session.created", 10)
        assert created.session.audio.input.format.type == "audio/pcm"
        # This client plays nothing (no loudspeaker, no echo): it says so, as such a client
        # should (docs/echo.md); with "auto", speech during the first reply's playback waits
        # until the canceller knows whether an echo comes back.
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Answer in one short sentence.",
                "seetalk": {"echo": "off"},
            }
        )
        await d.wait_for("session.updated", 10)

        # a spoken turn: pcm16 24 kHz appends in, transcript and audio deltas out
        turn = await bench.voice_turn(d, bench.espeak_pcm16("What is the capital of France?"))
        assert turn["status"] == "completed", turn
        assert {"capital", "france"} <= set(normalize_words(turn["transcript"] or "")), turn
        assert turn["audio_ms"] > 300 and turn["voice_to_voice_ms"] is not None
        assert d.of("input_audio_buffer.speech_started")
        assert d.of("input_audio_buffer.speech_stopped")
        assert d.of("input_audio_buffer.committed")
        assert "".join(e.delta for _, e in d.of("response.output_audio_transcript.delta")).strip()
        assert d.of("response.output_audio.done")
        print(f"voice-to-voice {turn['voice_to_voice_ms']:.0f} ms")

        # barge-in: speech while the reply streams stops it; truncate cuts it to what was heard
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Answer with a long story of at least five sentences.",
            }
        )
        await d.wait_for("session.updated", 10)
        story = bench.espeak_pcm16("Tell me a long story about a dog.")
        stop = bench.espeak_pcm16("Stop, that is enough.")
        b = await bench.barge_in(d, story, stop)
        assert b["interrupted"] and b["status"] == "cancelled", b
        assert b["heard_ms"] < b["received_ms"] + 1
        print(
            f"barge-in: last delta {b['stop_last_delta_ms']:.0f} ms and speech_started "
            f"{b['stop_speech_started_ms']:.0f} ms after the onset; heard {b['heard_ms']} ms"
        )
        full = [
            e
            for _, e in d.of("response.output_audio_transcript.delta")
            if e.item_id == b["item_id"]
        ]
        said = "".join(e.delta for e in full)
        assert len(b["truncated_transcript"] or "") <= len(said)

        # bad input over the same socket: error events with the event_id; the session goes on
        # (first let the interrupting utterance end, so the buffer really is empty)
        await d.wait_for("input_audio_buffer.committed", 60, since=b["t_started"])
        await conn.send({"type": "input_audio_buffer.commit", "event_id": "evt_empty"})
        _, err = await d.wait_for("error", 10, where=lambda e: e.error.event_id == "evt_empty")
        assert err.error.code == "input_audio_buffer_commit_empty"
        await conn.send(
            {
                "type": "conversation.item.truncate",
                "item_id": "item_nope",
                "content_index": 0,
                "audio_end_ms": 5,
                "event_id": "evt_trunc",
            }
        )
        _, err = await d.wait_for("error", 10, where=lambda e: e.error.event_id == "evt_trunc")
        assert err.error.code == "item_not_found"
    for _ in range(100):
        if not srv.state.peers:
            break
        await asyncio.sleep(0.05)
    assert not srv.state.peers
