"""The rest of the Realtime protocol (issue 12): the parser's new fields, the pure pieces
(context budget, idle timer), and the official ``openai`` client against the real default
models: every client event answered, text-only replies, no reply until ``response.create``,
out-of-band responses, the idle timeout, transcription-only sessions."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conversation.budget import Truncation, estimate, fit
from conversation.protocol import ResponseCreate, SessionUpdate, parse_client_object
from conversation.responses import IdleTimer, spec_for
from conversation.settings import settings_for
from llm.backend import ChatMessage
from seetalk.config import SessionSettings
from seetalk.errors import InvalidEvent

# --- the parser ---------------------------------------------------------------------------


def _update(session: dict[str, Any]) -> SessionUpdate:
    event = parse_client_object({"type": "session.update", "session": session})
    assert isinstance(event, SessionUpdate)
    return event


def test_session_update_rest_of_protocol_becomes_settings():
    up = _update(
        {
            "type": "realtime",
            "output_modalities": ["text"],
            "truncation": {"type": "retention_ratio", "retention_ratio": 0.5},
            "audio": {
                "input": {
                    "transcription": {"model": "whisper-1", "language": "fr", "prompt": "Paris"},
                    "turn_detection": {
                        "type": "server_vad",
                        "create_response": False,
                        "interrupt_response": False,
                        "idle_timeout_ms": 6000,
                    },
                },
                "output": {"speed": 1.25},
            },
        }
    )
    s = settings_for(SessionSettings(), up)
    assert s.output_modalities == "text"
    assert (s.truncation, s.retention_ratio) == ("retention_ratio", 0.5)
    assert (s.transcription_language, s.transcription_prompt) == ("fr", "Paris")
    assert s.turn.create_response is False and s.turn.interrupt is False
    assert s.turn.idle_timeout_ms == 6000 and s.speed == 1.25
    again = parse_client_object(up.to_dict())
    assert again == up
    t = settings_for(SessionSettings(), _update({"type": "transcription"}))
    assert t.kind == "transcription"


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"output_modalities": ["video"]}, "session.output_modalities"),
        ({"audio": {"output": {"speed": 2.0}}}, "session.audio.output.speed"),
        ({"truncation": "sometimes"}, "session.truncation"),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 10}}}},
            "session.audio.input.turn_detection.idle_timeout_ms",
        ),
        (
            {"audio": {"input": {"transcription": {"language": "French"}}}},
            "session.audio.input.transcription.language",
        ),
    ],
)
def test_session_update_bad_values_are_refused_with_the_param(session, param):
    with pytest.raises(InvalidEvent) as err:
        _update(session)
    assert err.value.param == param
    assert err.value.code == "invalid_value"


def test_response_create_options():
    event = parse_client_object(
        {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "output_modalities": ["text"],
                "metadata": {"topic": "summary"},
                "instructions": "Summarize.",
                "max_output_tokens": 30,
                "input": [{"type": "item_reference", "id": "item_1"}],
            },
        }
    )
    assert isinstance(event, ResponseCreate)
    spec = spec_for(SessionSettings(), event)
    assert spec.out_of_band and spec.text_only and spec.max_output_tokens == 30
    assert spec.metadata == {"topic": "summary"} and spec.input == ("item_1",)
    with pytest.raises(InvalidEvent):
        parse_client_object({"type": "response.create", "response": {"conversation": "other"}})


# --- pure pieces ------------------------------------------------------------------------------


def _chat(n: int) -> list[ChatMessage]:
    out = [ChatMessage("system", "instructions " * 10)]
    for i in range(n):
        out.append(ChatMessage("user", f"question {i} " * 20))
        out.append(ChatMessage("assistant", f"answer {i} " * 20))
    out.append(ChatMessage("user", "the newest question"))
    return out


def test_fit_keeps_instructions_and_newest_and_drops_the_oldest_first():
    chat = _chat(50)
    fitted = fit(chat, 600, estimate)
    assert fitted.tokens <= 600 and fitted.dropped > 0
    assert fitted.messages[0] == chat[0] and fitted.messages[-1] == chat[-1]
    assert fitted.messages[1].role == "user"  # never an orphaned assistant reply first
    assert fitted.messages[1:] == chat[len(chat) - len(fitted.messages) + 1 :]  # a suffix
    assert fit(chat, 600, estimate, Truncation("disabled")).dropped == 0
    ratio = fit(chat, 600, estimate, Truncation("retention_ratio", 0.5))
    assert ratio.tokens <= 300 < fitted.tokens
    small = fit(_chat(1), 10_000, estimate)
    assert small.dropped == 0


def test_idle_timer_fires_once_after_the_timeout_and_speech_disarms_it():
    timer = IdleTimer()
    assert timer.due(100.0, 5000) is None  # not armed
    timer.arm(10.0)
    assert timer.due(14.9, 5000) is None
    assert timer.due(15.0, 5000) == 10.0
    assert timer.due(30.0, 5000) is None  # once
    timer.arm(20.0)
    timer.disarm()
    assert timer.due(40.0, 5000) is None
    timer.arm(20.0)
    assert timer.due(40.0, 0) is None  # off


# --- the official client on the real models ----------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "realtime_ws.py"
    spec = importlib.util.spec_from_file_location("seetalk_bench_realtime_ws_rest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Events:
    """Every server event of a connection, in order, read in the background."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.all: list[Any] = []
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.conn:
            self.all.append(event)
            self._new.set()

    async def wait(self, type_: str, *, since: int = 0, where=lambda e: True, limit=120) -> int:
        """The index of the first ``type_`` event at or after ``since``."""

        async def find() -> int:
            while True:
                for i in range(since, len(self.all)):
                    if self.all[i].type == type_ and where(self.all[i]):
                        return i
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(find(), limit)

    def types(self, since: int = 0, until: int | None = None) -> list[str]:
        return [e.type for e in self.all[since:until]]

    async def aclose(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the socket closed
            pass


def _b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")


async def _connect(srv):
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key="x", websocket_base_url=srv.ws).realtime.connect(model="seetalk")


pytestmark = pytest.mark.models


async def test_every_client_event_is_answered(realtime_server, engine):
    srv = await realtime_server(engine)
    async with await _connect(srv) as conn:
        ev = Events(conn)
        try:
            await ev.wait("rate_limits.updated")
            assert ev.types()[:3] == [
                "session.created",
                "conversation.created",
                "rate_limits.updated",
            ]
            # clear on an empty buffer: still cleared
            await conn.send({"type": "input_audio_buffer.clear"})
            await ev.wait("input_audio_buffer.cleared")
            # a manual commit of silence: committed, with an empty transcript
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await ev.wait("session.updated")
            await conn.input_audio_buffer.append(audio=_b64(np.zeros(24_000, np.int16)))
            mark = len(ev.all)
            await conn.send({"type": "input_audio_buffer.commit"})
            i = await ev.wait("input_audio_buffer.committed", since=mark)
            item_id = ev.all[i].item_id
            done = await ev.wait(
                "conversation.item.input_audio_transcription.completed",
                since=mark,
                where=lambda e: e.item_id == item_id,
            )
            assert ev.all[done].transcript == ""
        finally:
            await ev.aclose()


async def test_text_only_replies_and_an_out_of_band_response(realtime_server, engine):
    srv = await realtime_server(engine)
    async with await _connect(srv) as conn:
        ev = Events(conn)
        try:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            i = await ev.wait("session.updated")
            assert ev.all[i].session.output_modalities == ["text"]
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What is the capital of France?"}],
                }
            )
            mark = len(ev.all)
            await conn.response.create()
            d = await ev.wait("response.done", since=mark)
            resp = ev.all[d].response
            assert resp.status == "completed" and resp.output_modalities == ["text"]
            types = ev.types(mark, d)
            assert "response.output_text.delta" in types and "response.output_text.done" in types
            assert not any(t.startswith("response.output_audio") for t in types)
            assert resp.usage is not None and resp.usage.input_tokens > 0
            reply_item = resp.output[0].id

            # out of band, audio this time, with metadata: never in the conversation
            mark = len(ev.all)
            await conn.response.create(
                response={
                    "conversation": "none",
                    "output_modalities": ["audio"],
                    "metadata": {"purpose": "title"},
                    "instructions": "Give this conversation a three word title.",
                }
            )
            d = await ev.wait("response.done", since=mark)
            oob = ev.all[d].response
            assert oob.conversation_id is None and oob.metadata == {"purpose": "title"}
            assert any(t == "response.output_audio.delta" for t in ev.types(mark, d))
            assert oob.usage.input_tokens > 0
            assert getattr(oob.usage, "seetalk_audio_seconds", 0) > 0  # what was synthesized
            oob_item = oob.output[0].id
            mark = len(ev.all)
            await conn.conversation.item.retrieve(item_id=oob_item)
            e = await ev.wait("error", since=mark)
            assert ev.all[e].error.code == "item_not_found"
            await conn.conversation.item.retrieve(item_id=reply_item)
            await ev.wait("conversation.item.retrieved", since=mark)
        finally:
            await ev.aclose()


async def test_no_reply_until_response_create_then_the_idle_timeout(
    realtime_server, engine, bench, espeak
):
    srv = await realtime_server(engine)
    async with await _connect(srv) as conn:
        ev = Events(conn)
        try:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "turn_detection": {
                                "type": "server_vad",
                                "create_response": False,
                                "idle_timeout_ms": 5000,
                            }
                        }
                    },
                }
            )
            i = await ev.wait("session.updated")
            assert ev.all[i].session.audio.input.turn_detection.create_response is False
            speech = bench.espeak_pcm16("What is the capital of France?")
            silence = np.zeros(24_000, np.int16)
            mark = len(ev.all)
            for chunk in np.array_split(np.concatenate([speech, silence]), 20):
                await conn.input_audio_buffer.append(audio=_b64(chunk))
            done = await ev.wait(
                "conversation.item.input_audio_transcription.completed", since=mark
            )
            assert "france" in ev.all[done].transcript.lower()
            # a barrier: every event the turn caused came before its answer
            await conn.conversation.item.retrieve(item_id=ev.all[done].item_id)
            r = await ev.wait("conversation.item.retrieved", since=done)
            assert "response.created" not in ev.types(mark, r)
            await conn.response.create()
            d = await ev.wait("response.done", since=r)
            assert ev.all[d].response.status == "completed"
            # after the reply: 6 s of silence on the input timeline -> timeout_triggered
            for _ in range(6):
                await conn.input_audio_buffer.append(audio=_b64(silence))
            t = await ev.wait("input_audio_buffer.timeout_triggered", since=d)
            trig = ev.all[t]
            assert trig.audio_end_ms - trig.audio_start_ms >= 5000
            await ev.wait("input_audio_buffer.committed", since=t)
            # create_response is off: the timeout commits, it does not answer
        finally:
            await ev.aclose()


async def test_transcription_only_session(realtime_server, engine, bench, espeak):
    srv = await realtime_server(engine)
    async with await _connect(srv) as conn:
        ev = Events(conn)
        try:
            await conn.session.update(session={"type": "transcription"})
            i = await ev.wait("session.updated")
            assert ev.all[i].session.type == "transcription"
            speech = bench.espeak_pcm16("Good morning, this is a caption test.")
            mark = len(ev.all)
            for chunk in np.array_split(np.concatenate([speech, np.zeros(24_000, np.int16)]), 10):
                await conn.input_audio_buffer.append(audio=_b64(chunk))
            done = await ev.wait(
                "conversation.item.input_audio_transcription.completed", since=mark
            )
            assert "morning" in ev.all[done].transcript.lower()
            await conn.response.create()
            e = await ev.wait("error", since=done)
            assert ev.all[e].error.code == "unsupported"
            assert "response.created" not in ev.types(mark)
        finally:
            await ev.aclose()


def _espeak_french(text: str) -> np.ndarray:
    import subprocess
    import tempfile

    from voice.audio import float_to_s16, load_audio_file, resample

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fr.wav"
        subprocess.run(["espeak-ng", "-v", "fr", "-w", str(path), text], check=True)
        samples, rate = load_audio_file(path)
    return float_to_s16(resample(samples, rate, 24_000))


async def test_a_french_question_is_transcribed_in_french(realtime_server, engine, espeak):
    srv = await realtime_server(engine)
    async with await _connect(srv) as conn:
        ev = Events(conn)
        try:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"language": "fr", "prompt": "Paris"}}},
                }
            )
            i = await ev.wait("session.updated")
            assert ev.all[i].session.audio.input.transcription.language == "fr"
            speech = _espeak_french("Quelle est la capitale de la France ?")
            mark = len(ev.all)
            for chunk in np.array_split(np.concatenate([speech, np.zeros(24_000, np.int16)]), 10):
                await conn.input_audio_buffer.append(audio=_b64(chunk))
            done = await ev.wait(
                "conversation.item.input_audio_transcription.completed", since=mark
            )
            words = ev.all[done].transcript.lower()
            # French words (forced to English, whisper says "capital", not "capitale")
            assert "capitale" in words and {"la", "de"} <= set(words.split()), words
        finally:
            await ev.aclose()


@pytest.mark.parametrize("speed", [0.5, 1.0, 1.5])
def test_heard_text_lands_on_the_word_at_any_speed(engine, speed):
    from conversation.reply import Reply
    from conversation.speaker import _synthesize_clause

    words = "one two three four five six".split()
    audio, ends = _synthesize_clause(engine.synthesizer, " ".join(words), 24_000, speed)
    assert ends is not None and len(ends) == len(words)
    reply = Reply(rate=24_000, speed=speed)
    reply.add_segment(" ".join(words), audio, ends)
    for k in range(1, len(words)):
        at = int(ends[k - 1] * len(audio)) + 1  # just past the end of word k
        assert reply.heard_text(at).split() == words[:k]


def test_speed_changes_the_rate_of_the_voice(engine):
    from conversation.speaker import _synthesize_clause

    text = "The quick brown fox jumps over the lazy dog."
    slow, _ = _synthesize_clause(engine.synthesizer, text, 24_000, 0.5)
    fast, _ = _synthesize_clause(engine.synthesizer, text, 24_000, 1.5)
    assert len(slow) > 2.2 * len(fast)  # 3x in length scale; pauses scale less


async def test_openai_client_speed_reaches_the_voice(realtime_server, engine):
    srv = await realtime_server(engine)
    async with await _connect(srv) as conn:
        ev = Events(conn)
        try:
            per_char = {}
            for speed in (0.5, 1.5):
                await conn.session.update(
                    session={
                        "type": "realtime",
                        "instructions": "Say exactly: the sky is blue.",
                        "audio": {"output": {"speed": speed}},
                    }
                )
                i = await ev.wait("session.updated", since=len(ev.all))
                assert ev.all[i].session.audio.output.speed == speed
                mark = len(ev.all)
                await conn.response.create()
                d = await ev.wait("response.done", since=mark)
                rid = ev.all[d].response.id
                pcm = b"".join(
                    base64.b64decode(e.delta)
                    for e in ev.all[mark:d]
                    if e.type == "response.output_audio.delta" and e.response_id == rid
                )
                said = ev.all[d].response.output[0].content[0].transcript
                per_char[speed] = len(pcm) / max(1, len(said))
            assert per_char[0.5] > 2 * per_char[1.5]
        finally:
            await ev.aclose()


def test_turns_are_not_answered_without_create_response():
    import dataclasses

    from conversation import turns as tt
    from conversation.responses import SessionRest

    class Host:
        settings = SessionSettings()

    rest = SessionRest(Host())  # type: ignore[arg-type]  # filter reads settings only
    actions = [tt.UtteranceStarted(0.0), tt.StartPreemptive("hi"), tt.Respond("hi")]
    assert rest.filter(actions) == actions
    turn = dataclasses.replace(Host.settings.turn, create_response=False)
    Host.settings = dataclasses.replace(Host.settings, turn=turn)
    kept = rest.filter(actions + [tt.AdoptPreemptive("hi"), tt.NotUnderstood()])
    assert kept == [tt.UtteranceStarted(0.0), tt.CancelPreemptive()]
    Host.settings = dataclasses.replace(SessionSettings(), kind="transcription")
    assert rest.filter([tt.Respond("hi")]) == []
