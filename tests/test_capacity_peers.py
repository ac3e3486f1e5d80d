"""Several people at once: three real aiortc peers on the real server and models, each asking
a spoken question two seconds after the previous one, all get a transcript and a spoken
answer (the scheduler shares the models between them; nobody is left waiting)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models

QUESTIONS = (  # with words whisper base hears reliably in espeak's voice
    ("What is the capital of France?", {"capital", "france"}),
    ("What color is the sky on a clear day?", {"sky", "clear", "color"}),
    ("Which planet is closest to the sun?", {"closest", "sun", "planet"}),
)
LIMIT_S = 120.0  # generous: three turns share two cores, and CI machines are slow


async def test_three_peers_speaking_two_seconds_apart_all_get_their_answers(
    seetalk_server, engine, espeak, webrtc_client_module, normalize_words
):
    srv = await seetalk_server(engine)
    speeches = [
        webrtc_client_module.load_audio(str(espeak(text, wav=True))) for text, _ in QUESTIONS
    ]
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(webrtc_client_module.Client(srv.url)) for _ in QUESTIONS
        ]
        for c in clients:
            await c.wait_for("session.created", 10)

        async def ask(i: int) -> dict[str, Any]:
            c = clients[i]
            await asyncio.sleep(2.0 * i)
            c.mic.say(np.zeros(12_000, np.int16))
            c.mic.say(speeches[i])
            heard = await c.wait_for(
                "conversation.item.input_audio_transcription.completed", LIMIT_S
            )
            done = await c.wait_for("response.done", LIMIT_S)
            await c.wait_for("output_audio_buffer.started", LIMIT_S)
            return {"transcript": heard["transcript"], "response": done["response"]}

        answers = await asyncio.gather(*(ask(i) for i in range(len(QUESTIONS))))
        for (text, key_words), answer, c in zip(QUESTIONS, answers, clients, strict=True):
            # its own question (the sets share no word), whatever whisper makes of the rest
            assert key_words & set(normalize_words(answer["transcript"])), (text, answer)
            assert answer["response"]["status"] == "completed", answer["response"]
            spoken = "".join(
                e["delta"] for e in c.of_type("response.output_audio_transcript.delta")
            )
            assert spoken.strip(), "the answer has no words"
            assert c.mic.speech_ended_at is not None
            for _ in range(250):  # its audio reaches the peer (up to 5 s after it starts)
                if c.recorder.first_loud_after(c.mic.speech_ended_at) is not None:
                    break
                await asyncio.sleep(0.02)
            assert c.recorder.first_loud_after(c.mic.speech_ended_at) is not None
        # every peer was served by its own session, and each session answered one turn
        assert len({c.session_id for c in clients}) == len(QUESTIONS)
        # /metrics counts the whisper decodes behind those finals, by encoder window
        text = await asyncio.to_thread(_get, f"{srv.url}/metrics")
        decodes = {
            m.group(1): int(m.group(2))
            for m in re.finditer(
                r'seetalk_asr_decodes_total\{role="asr",window="(\w+)"\} (\d+)', text
            )
        }
        assert sum(decodes.values()) >= len(QUESTIONS), text


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())
