"""A loudspeaker next to the microphone: whole sessions on the default models, the reply fed
back into the input (``run_session(echo=...)``) at 150 ms and half amplitude, with a
little reverberation."""

from __future__ import annotations

import numpy as np
import pytest

from conversation import events as ev
from conversation.filesession import run_session
from conversation.protocol import parse_client_object
from conversation.session import Session
from seetalk.config import SessionSettings
from seetalk.errors import SeetalkError
from voice.loudspeaker import EchoSpec, Loudspeaker

pytestmark = pytest.mark.models

SPEAKERPHONE = EchoSpec(150, 0.5)
QUESTION = "Tell me a long story about a brave dragon."


def onset_of(audio: np.ndarray, after_s: float, rate: int = 16_000) -> float:
    """Where sound starts in ``audio`` after ``after_s`` (truth for a phrase's onset)."""
    frame = rate // 100
    i = int(after_s * rate)
    while np.abs(audio[i : i + frame]).mean() <= 0.01:
        i += frame
    return i / rate


async def test_a_reply_heard_through_the_loudspeaker_plays_whole_and_is_no_turn(engine, timeline):
    audio = timeline([(0.5, QUESTION)], 4.0)
    run = await run_session(engine, audio, 16_000, fast=True, echo=SPEAKERPHONE)
    assert run.leaked_tasks == 0
    assert [(h["role"], h["interrupted"]) for h in run.history] == [
        ("user", False),
        ("assistant", False),
    ]
    assert "dragon" in run.history[0]["text"].lower()
    assert len(run.history[1]["text"].split()) >= 15  # a reply long enough to hear itself
    assert not run.of_type("seetalk.barge_in")
    assert not run.of_type("seetalk.reply.paused")
    assert not run.of_type("output_audio_buffer.cleared")
    assert len(run.of_type("input_audio_buffer.speech_started")) == 1  # the question only
    assert [e["response"]["status"] for e in run.of_type("response.done")] == ["completed"]


async def test_without_echo_handling_the_same_reply_interrupts_itself(engine, timeline):
    """The failure the canceller prevents (so the test above can fail)."""
    audio = timeline([(0.5, QUESTION)], 4.0)
    settings = SessionSettings(echo="off")
    run = await run_session(
        engine, audio, 16_000, fast=True, settings=settings, echo=SPEAKERPHONE, max_tail_s=10
    )
    assert run.of_type("seetalk.barge_in")


async def test_a_person_talking_over_the_echo_stops_the_reply_as_fast_as_without(engine, timeline):
    audio = timeline([(0.5, QUESTION), (6.5, "Stop. What is two plus two?")], 14.0)
    onset = onset_of(audio, 6.0)
    # a reply still playing at 6.5 s: the model's story was once over by then (it samples)
    long_story = SessionSettings(
        instructions="Always answer with a long story of at least twelve sentences.",
        max_output_tokens=400,
    )
    stops = {}
    for name, spec in (("echo", SPEAKERPHONE), ("free", None)):
        run = await run_session(engine, audio, 16_000, fast=True, echo=spec, settings=long_story)
        roles = [(h["role"], h["interrupted"]) for h in run.history]
        assert roles[:3] == [("user", False), ("assistant", True), ("user", False)], name
        text = run.history[2]["text"].lower()
        assert "two" in text or "2" in text, (name, text)
        barge = run.of_type("seetalk.barge_in")
        assert barge and abs(barge[0]["onset_ms"] / 1000 - onset) < 0.2, name
        stops[name] = barge[0]["stopped_ms"] / 1000
        # the reply's audio really is silent from there on
        out = run.audio
        stop = int(stops[name] * 48_000)
        assert not np.any(out[stop + 40 * 48 : stop + 400 * 48]), name
    assert stops["echo"] - onset < 0.35
    # at most one 100 ms input step apart (rounded: the times are sums of float steps)
    assert round(abs(stops["echo"] - stops["free"]), 3) <= 0.1


async def send(session: Session, obj: object) -> None:
    try:
        event = parse_client_object(obj)
    except SeetalkError as exc:
        session.emit(ev.error(exc.to_event_error()))
        return
    await session.handle_client_event(event)


def updated_echo(session: Session) -> str | None:
    found = None
    while (event := session.events.get_nowait()) is not None:
        if event["type"] == "session.updated":
            found = event["session"]["seetalk"]["echo"]
    return found


async def test_the_echo_setting_is_reported_and_reaches_the_canceller(engine):
    session = Session(engine, SessionSettings())
    try:
        assert session.describe()["seetalk"]["echo"] == "auto" and session.echo.active
        await send(session, {"type": "session.update", "session": {"seetalk": {"echo": "off"}}})
        assert updated_echo(session) == "off" and not session.echo.active
        far_field = {"audio": {"input": {"noise_reduction": {"type": "far_field"}}}}
        await send(session, {"type": "session.update", "session": far_field})
        assert updated_echo(session) == "on" and session.echo.active
    finally:
        await session.aclose()


def test_each_session_has_its_own_canceller_and_it_starts_clean(engine):
    rng = np.random.default_rng(0)
    reply = (rng.standard_normal(2 * 16_000) * 0.1).astype(np.float32)
    one, two = Session(engine, SessionSettings()), Session(engine, SessionSettings())
    speaker = Loudspeaker(SPEAKERPHONE, 16_000)
    for i in range(0, reply.size, 320):  # one session plays and hears itself
        mic = speaker.hear(320)
        one.echo.cancel(mic)
        one._samples += 320
        chunk = (reply[i : i + 320] * 32767).astype(np.int16)
        one.echo.played(chunk, 16_000)
        speaker.play(chunk, 16_000)
    assert one.echo.path is not None and abs(one.echo.path.delay_ms - 150) <= 25
    assert two.echo.path is None and two.echo.canceller is not one.echo.canceller
    one.apply_settings(SessionSettings(echo="off"))
    one.apply_settings(SessionSettings(echo="on"))
    assert one.echo.path is None and one.echo.canceller is not None
    assert one.echo.canceller.pos == 0
