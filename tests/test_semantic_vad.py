"""``semantic_vad`` on the end-of-turn model (conversation/settings.py, conversation/turns.py).

The eagerness chooses how long a turn the model calls incomplete may wait (8 s / 4 s / 2 s
for low / medium / high, auto = medium, as OpenAI documents its max timeouts) and the short
silence after a complete verdict; a server without the model ends turns on a silence the
eagerness chose. The turn-taker runs on a fake clock; then the official ``openai`` client
asks a spoken question of a ``semantic_vad`` session on the real models.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from conversation import turns as tt
from conversation.protocol import SessionUpdate, parse_client_event
from conversation.settings import describe_session, settings_for
from seetalk.config import SessionSettings

WAITS = {  # eagerness: (complete verdict, incomplete or no verdict, without the model), ms
    "low": (500, 8000, 1000),
    "medium": (300, 4000, 600),
    "auto": (300, 4000, 600),
    "high": (200, 2000, 350),
}


def semantic(eagerness: str | None, current: SessionSettings | None = None) -> SessionSettings:
    td: dict[str, object] = {"type": "semantic_vad"}
    if eagerness is not None:
        td["eagerness"] = eagerness
    event = parse_client_event(
        json.dumps(
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": td}}}}
        ),
        max_bytes=1 << 20,
    )
    assert isinstance(event, SessionUpdate)
    return settings_for(current or SessionSettings(), event)


def endpoint_after(taker: tt.TurnTaker, verdict: bool | None, limit_s: float = 10.0) -> float:
    """Speech 1.0-2.0 s, then silence in 10 ms ticks: the silence (s) at the endpoint."""
    taker.speech_started(1.0)
    actions = taker.speech_stopped(2.0)
    if taker.settings.eot == "smart_turn":
        assert tt.CheckEndOfTurn(2.0) in actions
        if verdict is not None:
            taker.end_of_turn_verdict(2.0, verdict)
    else:
        assert not any(isinstance(a, tt.CheckEndOfTurn) for a in actions)
    for ms in range(10, int(limit_s * 1000) + 1, 10):
        if any(isinstance(a, tt.EndOfTurn) for a in taker.tick(2.0 + ms / 1000 + 1e-9)):
            return ms / 1000
    raise AssertionError("the turn never ended")


@pytest.mark.parametrize("eagerness", sorted(WAITS))
def test_eagerness_chooses_the_waits_of_the_end_of_turn_model(eagerness: str) -> None:
    complete, incomplete, silence = WAITS[eagerness]
    turn = semantic(eagerness).turn
    assert (turn.mode, turn.eot, turn.eagerness) == ("server_vad", "smart_turn", eagerness)
    with_model = tt.for_model(turn, has_eot_model=True)
    assert endpoint_after(tt.TurnTaker(with_model), True) == complete / 1000
    assert endpoint_after(tt.TurnTaker(with_model), False) == incomplete / 1000
    assert endpoint_after(tt.TurnTaker(with_model), None) == incomplete / 1000  # no verdict yet
    without = tt.for_model(turn, has_eot_model=False)
    assert endpoint_after(tt.TurnTaker(without), None) == silence / 1000


def test_no_eagerness_is_auto_and_the_session_reports_what_was_asked() -> None:
    settings = semantic(None)
    assert settings.turn.eagerness == "auto"
    detection = describe_session("sess_x", settings)["audio"]["input"]["turn_detection"]
    assert detection["type"] == "semantic_vad" and detection["eagerness"] == "auto"
    assert detection["create_response"] is True and detection["interrupt_response"] is True
    assert "silence_duration_ms" not in detection  # nothing semantic_vad does not have


def test_server_vad_after_semantic_vad_is_silence_again() -> None:
    event = parse_client_event(
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}},
            }
        ),
        max_bytes=1 << 20,
    )
    assert isinstance(event, SessionUpdate)
    turn = settings_for(semantic("high"), event).turn
    assert (turn.eot, turn.eagerness) == ("silence", "")
    detection = describe_session("s", settings_for(semantic("high"), event))["audio"]["input"]
    assert detection["turn_detection"]["type"] == "server_vad"
    assert endpoint_after(tt.TurnTaker(tt.for_model(turn, True)), None) == 0.35  # its silence


def test_a_bad_eagerness_is_a_clear_error() -> None:
    from seetalk.errors import InvalidEvent

    with pytest.raises(InvalidEvent) as err:
        semantic("eager")
    assert "eagerness" in str(err.value.param)


# --- the official client, the real models ------------------------------------------------


def _pcm24(audio16k: np.ndarray) -> np.ndarray:
    from voice.audio import resample

    return (resample(audio16k, 16_000, 24_000) * 32767).clip(-32768, 32767).astype(np.int16)


@pytest.mark.models
async def test_a_semantic_vad_session_answers_when_the_model_hears_a_finished_question(
    realtime_server, engine, espeak
):
    from openai import AsyncOpenAI

    if engine.eot is None:
        pytest.skip("Smart Turn is not installed")
    srv = await realtime_server(engine)
    client = AsyncOpenAI(api_key="x", websocket_base_url=srv.ws)
    events: list = []

    async def until(kind: str, limit: float = 120.0):
        async with asyncio.timeout(limit):
            async for event in conn:
                events.append(event)
                if event.type == "error":
                    raise AssertionError(event)
                if event.type == kind:
                    return event
        raise AssertionError(f"no {kind}")

    async with client.realtime.connect(model="seetalk") as conn:
        await until("session.created")
        await conn.session.update(
            session={
                "type": "realtime",
                "max_output_tokens": 24,
                "audio": {
                    "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}
                },
            }
        )
        updated = await until("session.updated")
        detection = updated.session.audio.input.turn_detection
        assert (detection.type, detection.eagerness) == ("semantic_vad", "low")
        speech = _pcm24(espeak("What is the capital of France?"))
        # then 3 s of silence, streamed in real time as a microphone would (the verdict
        # acts on the input timeline): less than low's 8 s wait for an unfinished turn, so
        # only a complete verdict can end this turn
        for chunk in (
            np.zeros(12_000, np.int16),
            speech,
            *np.split(np.zeros(72_000, np.int16), 30),
        ):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(chunk.astype("<i2").tobytes()).decode()
            )
            await asyncio.sleep(0.1)
        metrics = await until("seetalk.turn.metrics")
        done = await until("response.done")
    assert done.response.status == "completed"
    values = metrics.model_extra["metrics"] if metrics.model_extra else {}
    assert values.get("eot_complete") == 1.0, values  # the model's verdict ended the turn
    assert engine.eot_executor.stats()["done"] >= 1
