"""The aiortc example client holds a conversation with the real server on its default models."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def engine():
    from models.engine import Engine

    return Engine.load()


def speech(espeak, webrtc_client_module, text: str) -> np.ndarray:
    return webrtc_client_module.load_audio(str(espeak(text, wav=True)))


async def test_aiortc_client_holds_a_conversation(
    seetalk_server, engine, espeak, webrtc_client_module, normalize_words
):
    srv = await seetalk_server(engine)
    async with webrtc_client_module.Client(srv.url, video=True) as client:
        await client.wait_for("session.created", 10)
        client.mic.say(np.zeros(24_000, np.int16))
        client.mic.say(speech(espeak, webrtc_client_module, "What is the capital of France?"))
        done = await client.wait_for("conversation.item.input_audio_transcription.completed", 30)
        assert {"capital", "france"} <= set(normalize_words(done["transcript"]))
        first = await client.wait_for("output_audio_buffer.started", 60)
        resp = await client.wait_for("response.done", 60)
        assert resp["response"]["status"] == "completed"
        assert client.mic.speech_ended_at is not None
        heard = client.recorder.first_loud_after(client.mic.speech_ended_at)
        assert heard is not None, "no reply audio reached the client"
        v2v = heard - client.mic.speech_ended_at
        print(
            f"voice-to-voice as heard: {v2v * 1000:.0f} ms; started event at "
            f"{(first['_t'] - client.mic.speech_ended_at) * 1000:.0f} ms"
        )
        words = client.of_type("response.output_audio_transcript.delta")
        assert "".join(e["delta"] for e in words).strip()
        await client.wait_for("seetalk.turn.metrics", 10)
        # a second turn, typed
        t = time.monotonic()
        client.say_text("Say hello.")
        resp2 = await client.wait_for("response.done", 60, since=t)
        assert resp2["response"]["status"] == "completed"
    for _ in range(100):
        if not srv.state.peers:
            break
        await asyncio.sleep(0.05)
    assert not srv.state.peers
    text = srv.state.metrics.render()
    assert "seetalk_turns_total 2" in text or "seetalk_turns_total 3" in text


async def test_aiortc_barge_in_with_real_models(
    seetalk_server, engine, espeak, webrtc_client_module
):
    srv = await seetalk_server(engine)
    async with webrtc_client_module.Client(srv.url) as client:
        client.send(
            {
                "type": "session.update",
                "session": {"instructions": "Answer with a long story of at least five sentences."},
            }
        )
        client.mic.say(np.zeros(24_000, np.int16))
        client.mic.say(speech(espeak, webrtc_client_module, "Tell me a story about a dog."))
        await client.wait_for("output_audio_buffer.started", 60)
        for _ in range(250):  # up to 5 s for the reply to become audible
            if client.recorder.level_now() >= 300:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        client.mic.say(speech(espeak, webrtc_client_module, "Stop, that is enough."))
        done = await client.wait_for(
            "response.done", 20, where=lambda e: e["response"]["status"] == "cancelled"
        )
        truncated = await client.wait_for("conversation.item.truncated", 10)
        onset = client.mic.speech_started_at
        assert onset is not None
        quiet = client.recorder.silent_from(onset)
        assert quiet is not None
        print(
            f"barge-in stop as heard: {(quiet - onset) * 1000:.0f} ms; heard "
            f"{truncated['audio_end_ms']} ms: {truncated['transcript']!r}"
        )
        assert truncated["transcript"].strip()
        assert done["response"]["status"] == "cancelled"
        assert (quiet - onset) < 1.5
