"""Whole conversations on the embedded default models, driven from audio timelines."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest

from conversation import events as ev
from conversation.filesession import run_session
from conversation.protocol import parse_client_object
from conversation.session import Session
from conversation.speaker import APOLOGY
from llm.openai_compat import OpenAIChatBackend
from seetalk.config import SessionSettings
from seetalk.errors import SeetalkError
from voice.audio import resample

pytestmark = pytest.mark.models


async def send(session: Session, obj: object) -> None:
    """What a transport does with a client message: parse it with the one parser (a bad one
    becomes an ``error`` event), hand the typed event to the session."""
    try:
        event = parse_client_object(obj)
    except SeetalkError as exc:
        session.emit(ev.error(exc.to_event_error()))
        return
    await session.handle_client_event(event)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def speech_onsets(audio: np.ndarray, rate: int = 16_000) -> list[float]:
    """Times where sound starts after silence (truth for where a phrase begins)."""
    frame = rate // 100
    energy = np.array(
        [np.abs(audio[i : i + frame]).mean() for i in range(0, audio.size - frame, frame)]
    )
    loud = energy > 0.01
    return [i / 100 for i in range(1, loud.size) if loud[i] and not loud[max(0, i - 30) : i].any()]


async def test_conversation_with_a_barge_in_keeps_only_what_was_heard(
    engine, timeline, whisper_base
):
    audio = timeline(
        [(1.0, "Tell me a long story about a brave dragon."), (6.5, "Stop. What is two plus two?")],
        14.0,
    )
    run = await run_session(engine, audio, 16_000, fast=True)
    assert run.leaked_tasks == 0
    roles = [(h["role"], h["interrupted"]) for h in run.history]
    assert roles == [("user", False), ("assistant", True), ("user", False), ("assistant", False)]
    assert "dragon" in words(run.history[0]["text"])
    assert "two" in words(run.history[2]["text"]) or "2" in words(run.history[2]["text"])

    # The interrupted reply: cancelled, truncated to what was heard.
    done = [e for e in run.of_type("response.done") if e["response"]["status"] == "cancelled"]
    assert len(done) == 1 and done[0]["response"]["status_details"]["reason"] == "turn_detected"
    truncated = run.of_type("conversation.item.truncated")
    assert len(truncated) == 1
    heard = truncated[0]["transcript"]
    assert heard == run.history[1]["text"]
    spoken = "".join(
        e["delta"]
        for e in run.of_type("response.output_audio_transcript.delta")
        if e["response_id"] == done[0]["response"]["id"]
    )
    assert len(words(heard)) < len(words(spoken))  # it was cut

    # What the person heard: transcribe the output audio of that reply back.
    start_ms = next(e["t_ms"] for e in run.of_type("output_audio_buffer.started"))
    barge = run.of_type("seetalk.barge_in")[0]
    out = run.audio.astype(np.float32) / 32768
    piece = out[int((start_ms - 20) * 48) : int((barge["stopped_ms"] + 20) * 48)]
    assert (
        np.abs(
            out[int((barge["stopped_ms"] + 40) * 48) : int((barge["stopped_ms"] + 400) * 48)]
        ).max()
        == 0
    )
    played = words(whisper_base.transcribe(resample(piece, 48_000, 16_000)))
    assert abs(len(played) - len(words(heard))) <= 2, (played, heard)

    # Barge-in stops the audio at speech onset, not at the end of the sentence.
    onset = speech_onsets(audio)[1]
    assert barge["stopped_ms"] / 1000 - onset < 0.35


async def test_a_murmur_during_a_reply_is_not_an_interruption(engine, timeline):
    """'Uh-huh' while the reply plays pauses it at once; no words come, so it resumes."""
    audio = timeline([(1.0, "Tell me a long story about a brave dragon."), (5.5, "Uh-huh.")], 16.0)
    run = await run_session(engine, audio, 16_000, fast=True)
    paused, resumed = run.of_type("seetalk.reply.paused"), run.of_type("seetalk.reply.resumed")
    assert len(paused) == 1 and len(resumed) == 1
    assert resumed[0]["audio_end_ms"] == paused[0]["audio_end_ms"]  # from where it stopped
    assert [h["role"] for h in run.history] == ["user", "assistant"]
    assert not run.history[1]["interrupted"]
    assert not run.of_type("conversation.item.truncated")
    statuses = [e["response"]["status"] for e in run.of_type("response.done")]
    assert statuses == ["completed"]
    # Audio goes quiet at the pause and plays again after the resume.
    out = np.abs(run.audio.astype(np.int32))
    p_ms, r_ms = paused[0]["t_ms"], resumed[0]["t_ms"]
    assert out[(p_ms + 40) * 48 : (r_ms - 20) * 48].max() == 0
    assert out[(r_ms + 20) * 48 : (r_ms + 1000) * 48].max() > 1000


async def test_model_server_down_gives_an_error_and_a_spoken_apology(engine, timeline):
    down = dataclasses.replace(
        engine, backend=OpenAIChatBackend("http://127.0.0.1:9/v1", timeout_s=2)
    )
    audio = timeline([(0.5, "What is the capital of France?")], 6.0)
    run = await run_session(down, audio, 16_000, fast=True)
    errors = run.of_type("error")
    assert errors and errors[0]["error"]["code"] == "model_backend_error"
    assert run.history[-1] == {
        "id": run.history[-1]["id"],
        "role": "assistant",
        "text": APOLOGY,
        "interrupted": False,
    }
    assert run.of_type("response.done")[-1]["response"]["status"] == "failed"
    assert run.leaked_tasks == 0


async def test_typed_messages_and_bad_client_events(engine):
    session = Session(engine, SessionSettings(output_rate=24_000), playout="push")
    await session.start()
    try:
        bad = [
            {"type": "no.such.event", "event_id": "e1"},
            {"type": "conversation.item.create", "event_id": "e2"},
            {"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 10},
            {"type": "conversation.item.delete", "item_id": "nope"},
            {"type": "session.update", "session": {"seetalk": {"turn": {"silence_ms": "slow"}}}},
            {"type": "input_audio_buffer.commit"},
            "not an object",
        ]
        for event in bad:
            await send(session, event)
        await send(
            session,
            {
                "type": "session.update",
                "session": {
                    "audio": {
                        "input": {
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}
                        }
                    }
                },
            },
        )
        await send(
            session,
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello."}],
                },
            },
        )
        await send(session, {"type": "response.create"})
        chunks = []
        events: list[dict] = []
        async with asyncio.timeout(60):
            while not any(e["type"] == "response.done" for e in events):
                while (e := session.events.get_nowait()) is not None:
                    events.append(e)
                try:
                    async with asyncio.timeout(0.05):
                        chunks.append(await session.audio_out.read())
                except TimeoutError:
                    pass
        errors = [e["error"] for e in events if e["type"] == "error"]
        assert [e["code"] for e in errors] == [
            "unknown_event_type",
            "missing_required_parameter",
            "missing_required_parameter",
            "item_not_found",
            "invalid_type",
            "input_audio_buffer_commit_empty",
            "invalid_event",
        ]
        assert errors[0]["event_id"] == "e1"
        assert errors[4]["param"] == "session.seetalk.turn.silence_ms"
        assert session.settings.turn.silence_ms == 700
        assert chunks and sum(c.samples.size for c in chunks) > 24_000 * 0.3
        assert events[-1]["response"]["status"] == "completed"
    finally:
        await session.aclose()
    assert session.task_count == 0


async def test_response_cancel_stops_the_reply(engine):
    session = Session(engine, SessionSettings())
    await session.start()
    await send(
        session,
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Tell me a long story about a castle."}],
            },
        },
    )
    await send(session, {"type": "response.create"})
    async with asyncio.timeout(30):
        while session.audio_out.buffered_samples == 0:
            await asyncio.sleep(0.01)
    for _ in range(25):  # half a second of playout
        session.audio_out.pull(960)
    await send(session, {"type": "response.cancel"})
    assert session.audio_out.pull(960).max() == 0  # silent at once
    events = []
    while (e := session.events.get_nowait()) is not None:
        events.append(e)
    done = [e for e in events if e["type"] == "response.done"]
    assert done[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    assert session.conversation.items[-1].interrupted
    await session.aclose()
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not leftover


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 10])
def test_run_file_rejects_what_is_not_audio(tmp_path, content):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "seetalk.cli", "run-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("seetalk: ") and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr or "empty" in proc.stderr


def test_run_file_writes_audio_and_events(tmp_path, espeak):
    wav = espeak("What is the capital of France?", wav=True)
    out, events = tmp_path / "reply.wav", tmp_path / "events.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seetalk.cli",
            "run-file",
            str(wav),
            "--fast",
            "--out",
            str(out),
            "--events",
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "user:" in proc.stdout and "assistant:" in proc.stdout
    import json

    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert all("t_ms" in e for e in lines)
    assert any(e["type"] == "seetalk.turn.metrics" for e in lines)
    from voice.audio import load_audio_file

    samples, rate = load_audio_file(out)
    assert rate == 48_000 and np.abs(samples).max() > 0.05
