"""Speech is never lost, replies never hang, and a session's memory is bounded."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from conversation import session as session_mod
from conversation import turns as tt
from conversation.history import Conversation, Item
from conversation.session import Session
from llm.backend import ChatMessage, GenerationSettings
from seetalk.config import SessionSettings, TurnSettings

pytestmark = pytest.mark.models
RATE = 16_000
STEP = 320


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def drain(session: Session) -> list[dict]:
    out = []
    while (e := session.events.get_nowait()) is not None:
        out.append(e)
    return out


async def feed(session: Session, audio: np.ndarray) -> None:
    for i in range(0, audio.size, STEP):
        await session.feed_audio(audio[i : i + STEP], RATE)


class SlowFirstFinal:
    """The real recognizer, but its first final pass waits until the test releases it
    (a machine busy elsewhere)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.release = threading.Event()
        self.calls = 0

    def transcribe(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        self.calls += 1
        if self.calls == 1:
            assert self.release.wait(120), "the test never released the final pass"
        return self.inner.transcribe(audio16k, prompt=prompt)

    def transcribe_partial(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        return self.inner.transcribe_partial(audio16k, prompt=prompt)


async def test_speech_during_a_slow_final_pass_becomes_its_own_turn(engine, timeline):
    slow = SlowFirstFinal(engine.transcriber)
    session = Session(dataclasses.replace(engine, transcriber=slow), SessionSettings())
    events: list[dict] = []
    try:
        first = timeline([(0.3, "What is the weather like today?")], 3.2)
        await feed(session, first)  # the endpoint comes; its final pass hangs
        events += drain(session)
        assert [e["type"] for e in events].count("input_audio_buffer.speech_stopped") == 1
        await feed(session, timeline([(0.2, "Wait, stop please.")], 2.5))
        events += drain(session)
        started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
        assert len(started) == 2  # heard at once, while the first final still runs
        slow.release.set()

        def completed() -> list[dict]:
            kind = "conversation.item.input_audio_transcription.completed"
            return [e for e in events if e["type"] == kind]

        async with asyncio.timeout(120):
            while len(completed()) < 2:  # silence: the second endpoint follows the first final
                await feed(session, np.zeros(STEP * 10, np.float32))
                await session.wait_idle()
                events += drain(session)
        done = completed()
        assert len(done) == 2
        assert done[0]["item_id"] == started[0]["item_id"]
        assert done[1]["item_id"] == started[1]["item_id"]
        assert "weather" in words(done[0]["transcript"])
        assert {"stop", "wait"} & set(words(done[1]["transcript"]))
        # The first turn was not answered over the person's second one: one reply, after it.
        created = [e for e in events if e["type"] == "response.created"]
        assert len(created) <= 1
    finally:
        slow.release.set()
        await session.aclose()


class Failing:
    """A language model that says a few words, then breaks."""

    name = "failing"
    supports_images = False

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncIterator[str]:
        yield "Hello there, "
        raise RuntimeError("the model crashed")

    async def aclose(self) -> None:
        pass


class BrokenVoice:
    sample_rate = 22_050

    def synthesize_timed(self, text: str):  # type: ignore[no-untyped-def]
        return 1 / 0


@pytest.mark.parametrize("broken", ["backend", "synthesizer"])
async def test_a_reply_that_fails_ends_with_response_done_failed(engine, broken):
    part = {"backend": Failing()} if broken == "backend" else {"synthesizer": BrokenVoice()}
    session = Session(dataclasses.replace(engine, **part), SessionSettings(), playout="push")
    await session.start()
    try:
        session.conversation.add(Item("item_q", "user", "Hello?", source="text"))
        session._respond()
        events: list[dict] = []
        async with asyncio.timeout(60):
            while not any(e["type"] == "response.done" for e in events):
                events += drain(session)
                if session.audio_out.buffered_samples:
                    await session.audio_out.read()
                await asyncio.sleep(0.01)
        kinds = [e["type"] for e in events]
        assert kinds.index("response.created") < kinds.index("response.done")
        errors = [e["error"] for e in events if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["reply_failed"]
        done = next(e for e in events if e["type"] == "response.done")["response"]
        assert done["status"] == "failed"
        assert session._reply is None and session.turns._reply is None
        # ... and the session goes on: the next reply starts
        session._respond()
        assert session._reply is not None
    finally:
        await session.aclose()
    assert session.task_count == 0


def test_history_keeps_at_most_its_image_budget_dropping_the_oldest_images_first():
    history = Conversation(max_image_bytes=10_000)
    for i in range(6):
        history.add(Item(f"i{i}", "user", f"look {i}", images=(b"x" * 3000,)))
    assert history.image_bytes <= 10_000
    assert [bool(i.images) for i in history.items] == [False, False, False, True, True, True]
    assert [i.text for i in history.items] == [f"look {i}" for i in range(6)]  # text kept
    assert history.images_dropped == 3
    assert Conversation().max_image_bytes == 32 * 1024 * 1024


class Recording:
    """A recognizer model that hears nothing and records how much audio it was given."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def transcribe(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        self.sizes.append(audio16k.size)
        return ""

    def transcribe_partial(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        return ""


async def test_manual_turns_refuse_audio_past_the_longest_utterance(engine, monkeypatch):
    monkeypatch.setattr(tt, "MAX_UTTERANCE_S", 2.0)
    rec = Recording()
    eng = dataclasses.replace(engine, transcriber=rec, partial_transcriber=rec)
    session = Session(eng, SessionSettings(turn=TurnSettings(mode="none")))
    try:
        noise = np.random.default_rng(0).normal(0, 0.05, 3 * RATE).astype(np.float32)
        await feed(session, noise)
        errors = [e["error"] for e in drain(session) if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["input_audio_buffer_full"]
        await session.commit_input()
        await session.wait_idle()
        assert rec.sizes and max(rec.sizes) <= 2 * RATE
        # the next utterance starts afresh, with its own budget
        await feed(session, noise[:RATE])
        assert not [e for e in drain(session) if e["type"] == "error"]
    finally:
        await session.aclose()


async def test_input_the_session_cannot_keep_is_reported(engine, monkeypatch):
    monkeypatch.setattr(session_mod, "INPUT_QUEUE_S", 0.5)
    session = Session(engine, SessionSettings())  # not started: nothing drains the queue
    for _ in range(50):  # one second of 20 ms frames
        session.push_audio(np.zeros(960, np.int16), 48_000)
    errors = [e["error"] for e in drain(session) if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["input_audio_dropped"]  # once per overflow
    assert session.input_dropped > 0
    assert session._input_samples <= 0.5 * RATE
    await session.aclose()
