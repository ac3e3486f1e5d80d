"""``Session.apply_settings``: each setting changed mid-session reaches the stage it governs.

The VAD stage gets a loudness stand-in for Silero (probability = the signal's amplitude), so
"a quiet signal" is exact; the recognizer a stand-in that hears nothing (these tests are
about the VAD and the endpoint, not words). Frame intake, the reply's rate and truncation
run on the real code and the real voice.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from conversation import events as ev
from conversation.protocol import parse_client_object
from conversation.session import Session
from llm.backend import ChatMessage, GenerationSettings
from seetalk.config import SessionSettings
from seetalk.errors import ConfigError, SeetalkError
from voice.vad import FRAME, SileroVad, VoiceActivity

pytestmark = pytest.mark.models
RATE = 16_000
STEP = 320  # 20 ms


class LoudnessVad(SileroVad):
    """Speech probability = peak amplitude of the frame (no model)."""

    def __init__(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def prob(self, chunk: np.ndarray) -> float:
        assert chunk.size == FRAME
        return float(np.abs(chunk).max())


class Deaf:
    """A recognizer model that hears nothing."""

    def transcribe(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        return ""

    def transcribe_partial(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        return ""


class Scripted:
    """A language model that always says the same sentence (no assertions on a model)."""

    name = "scripted"
    supports_images = False

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncIterator[str]:
        for word in self.text.split(" "):
            yield word + " "

    async def aclose(self) -> None:
        pass


async def send(session: Session, obj: object) -> None:
    """Parse with the one parser (a bad message becomes an ``error``) and hand it over."""
    try:
        event = parse_client_object(obj)
    except SeetalkError as exc:
        session.emit(ev.error(exc.to_event_error()))
        return
    await session.handle_client_event(event)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def tone(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def vad_session(engine) -> Session:  # type: ignore[no-untyped-def]
    deaf = dataclasses.replace(engine, transcriber=Deaf(), partial_transcriber=Deaf())
    session = Session(deaf, SessionSettings())
    session._vad = VoiceActivity(LoudnessVad(), session.settings.turn)
    return session


async def feed(session: Session, audio: np.ndarray) -> list[tuple[float, dict]]:
    """Feed ``audio`` in 20 ms steps; the events with the input time they appeared at."""
    out: list[tuple[float, dict]] = []
    for i in range(0, audio.size, STEP):
        await session.feed_audio(audio[i : i + STEP], RATE)
        while (e := session.events.get_nowait()) is not None:
            out.append((session.input_time, e))
    await session.wait_idle()
    while (e := session.events.get_nowait()) is not None:
        out.append((session.input_time, e))
    return out


def of_type(events: list[tuple[float, dict]], kind: str) -> list[tuple[float, dict]]:
    return [(t, e) for t, e in events if e["type"] == kind]


def with_turn(settings: SessionSettings, **turn: object) -> SessionSettings:
    return dataclasses.replace(settings, turn=dataclasses.replace(settings.turn, **turn))


async def test_vad_threshold_reaches_the_vad(engine):
    session = await vad_session(engine)
    try:
        quiet = np.concatenate([tone(0.6, 0.35), np.zeros(RATE, np.float32)])
        assert not of_type(await feed(session, quiet), "input_audio_buffer.speech_started")
        session.apply_settings(with_turn(session.settings, vad_threshold=0.25))
        started = of_type(await feed(session, quiet), "input_audio_buffer.speech_started")
        assert len(started) == 1
    finally:
        await session.aclose()


async def test_silence_reaches_the_endpoint(engine):
    session = await vad_session(engine)
    try:

        async def endpoint_after_silence() -> float:
            start = session.input_time
            events = await feed(session, np.concatenate([tone(0.5, 0.9), np.zeros(2 * RATE)]))
            ((t, _),) = of_type(events, "input_audio_buffer.speech_stopped")
            return t - start - 0.5  # seconds of silence before the endpoint

        first = await endpoint_after_silence()
        session.apply_settings(with_turn(session.settings, silence_ms=1200))
        second = await endpoint_after_silence()
        assert 0.5 <= first < 0.9
        assert 1.2 <= second < 1.6
        # min_silence_ms reaches the VAD gate too
        session.apply_settings(with_turn(session.settings, min_silence_ms=600))
        assert session._vad.gate.min_silence_frames == 3  # 96 ms: applied at the next feed
        await feed(session, np.zeros(STEP, np.float32))
        assert session._vad.gate.min_silence_frames == 19
    finally:
        await session.aclose()


async def test_camera_size_reaches_frame_intake(engine):
    session = Session(engine, SessionSettings())
    frame = np.random.default_rng(1).integers(0, 255, (960, 1280, 3), dtype=np.uint8)
    try:
        session.push_video(frame)
        assert max(session.frames.history[-1].frame.shape[:2]) == 1024
        session.apply_settings(
            dataclasses.replace(session.settings, camera_max_side=320, jpeg_quality=40)
        )
        await session.feed_audio(np.zeros(RATE // 2, np.float32), RATE)
        session.push_video(frame)
        assert max(session.frames.history[-1].frame.shape[:2]) == 320
        selection = await asyncio.to_thread(session.frames.select, 0.0, session.input_time)
        assert selection.frames
        assert all(max(f.width, f.height) <= 320 for f in selection.frames)
    finally:
        await session.aclose()


async def test_output_rate_reaches_the_reply_and_truncation_lands_on_the_word(engine):
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    # The engine's voice without random variation: a segment synthesized again is as long.
    synth = copy.copy(engine.synthesizer)
    synth.variation = False
    scripted = dataclasses.replace(engine, backend=Scripted(text), synthesizer=synth)
    session = Session(scripted, SessionSettings(output_rate=24_000), playout="push")
    await session.start()
    try:
        session.apply_settings(dataclasses.replace(session.settings, output_rate=16_000))
        assert session.describe()["seetalk"]["output_rate"] == 16_000
        await send(
            session,
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Say it."}],
                },
            },
        )
        await send(session, {"type": "response.create"})
        chunks = []
        async with asyncio.timeout(120):
            while session._reply is not None or not session._finished:
                try:
                    async with asyncio.timeout(0.05):
                        chunks.append(await session.audio_out.read())
                except TimeoutError:
                    pass
        reply = session._finished[-1]
        assert reply.rate == 16_000 and {c.rate for c in chunks} == {16_000}
        # Synthesized at 16 kHz: as long in seconds as the voice says it at its own rate.
        native = sum(
            synth.synthesize_timed(s.text)[0].size / synth.sample_rate for s in reply.segments
        )
        assert abs(reply.total_samples / 16_000 - native) < 0.05 * native
        # Where each word ends, in ms at the reply's rate; truncate between two of them.
        ends: list[tuple[float, str]] = []
        for seg in reply.segments:
            assert seg.ends is not None
            spoken = words(seg.text)
            assert len(spoken) == len(seg.ends)
            ends += [
                ((seg.start + f * len(seg.audio)) * 1000 / 16_000, w)
                for w, f in zip(spoken, seg.ends, strict=True)
            ]
        k = len(ends) // 2
        cut = int((ends[k - 1][0] + ends[k][0]) / 2)
        await send(
            session,
            {
                "type": "conversation.item.truncate",
                "item_id": reply.item_id,
                "content_index": 0,
                "audio_end_ms": cut,
            },
        )
        item = session.conversation.get(reply.item_id)
        assert item is not None and item.interrupted
        assert words(item.text) == [w for _, w in ends[:k]]
    finally:
        await session.aclose()


async def test_what_cannot_change_is_refused_and_nothing_changes(engine):
    session = Session(engine, SessionSettings())  # paced: a track pulls at 48 kHz
    try:
        before = session.settings
        wanted = dataclasses.replace(
            with_turn(before, vad_threshold=0.2, silence_ms=900), output_rate=16_000
        )
        with pytest.raises(ConfigError, match="output_rate"):
            session.apply_settings(wanted)
        assert session.settings is before
        assert session.turns.settings is before.turn and session.audio_out.rate == 48_000
        await session.feed_audio(np.zeros(STEP, np.float32), RATE)
        assert session._vad.gate.threshold == before.turn.vad_threshold
        # turn mode while an utterance is open
        session.turns.speech_started(0.0)
        with pytest.raises(ConfigError, match="utterance"):
            session.apply_settings(with_turn(before, mode="none"))
        assert session.settings.turn.mode == "server_vad"
    finally:
        await session.aclose()
