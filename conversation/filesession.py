"""File-driven sessions: a recording plays into a session as if it were a live microphone.

The assistant's audio is written on the same timeline as the input, so speech in the file
that starts while a reply plays is a barge-in. In real time (the default) each 20 ms step
waits for the wall clock. With ``fast`` the session runs on a virtual clock: each step waits
instead until no model work is in flight, so model compute takes no time on the timeline.
Decisions and transcripts are the same; timings differ (replies start right at the endpoint).

With ``echo`` (``seetalk run-file --echo DELAY_MS,GAIN``) a simulated loudspeaker
(:mod:`voice.loudspeaker`) feeds the session's output back into its input on the same
timeline: each 20 ms of output is heard ``DELAY_MS`` later, scaled and with a little
reverberation, added to the recording, as a speakerphone without echo cancellation would.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conversation.session import Session
from models.engine import Engine
from seetalk.clock import MonotonicClock, VirtualClock
from seetalk.config import SessionSettings
from voice.audio import load_audio_file, write_wav
from voice.loudspeaker import EchoSpec, Loudspeaker

STEP_S = 0.02
MAX_TAIL_S = 60.0  # after the input ends, wait at most this long for the reply to finish
QUIET_S = 1.0  # ... and stop once the session was quiet this long


@dataclass
class FileRun:
    """What a file session produced: the output audio (int16 at ``rate``) and the events,
    each with ``t_ms``, its time on the input timeline."""

    audio: np.ndarray
    rate: int
    events: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    leaked_tasks: int = 0

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


async def run_session(
    engine: Engine,
    audio: np.ndarray,
    rate: int,
    *,
    fast: bool = False,
    settings: SessionSettings | None = None,
    camera: Any = None,
    max_tail_s: float = MAX_TAIL_S,
    echo: EchoSpec | None = None,
) -> FileRun:
    """Play ``audio`` (float32 mono) into a new session and collect what comes out; after
    the input ends, go on until the session is quiet, for at most ``max_tail_s``. With
    ``echo``, the output comes back into the input through a simulated loudspeaker."""
    settings = settings or SessionSettings()
    clock = VirtualClock() if fast else MonotonicClock()
    session = Session(engine, settings, clock=clock)
    out_rate = settings.output_rate
    n_in, n_out = round(rate * STEP_S), round(out_rate * STEP_S)
    steps_in = -(-audio.size // n_in)
    max_steps = steps_in + int(max_tail_s / STEP_S)
    out: list[np.ndarray] = []
    run = FileRun(np.zeros(0, np.int16), out_rate)
    speaker = Loudspeaker(echo, rate) if echo is not None else None
    loop = asyncio.get_running_loop()
    await session.start()
    t0 = loop.time()
    quiet_steps = 0
    try:
        for k in range(max_steps):
            t = k * STEP_S
            if isinstance(clock, VirtualClock):
                clock.set(t)
            if camera is not None:
                camera.feed(session, t)
            chunk = audio[k * n_in : (k + 1) * n_in]
            if chunk.size < n_in:
                chunk = np.concatenate([chunk, np.zeros(n_in - chunk.size, np.float32)])
            if speaker is not None:
                chunk = np.clip(chunk + speaker.hear(chunk.size), -1.0, 1.0)
            await session.feed_audio(chunk, rate, 1)
            if fast:
                await session.wait_idle()
            else:
                await asyncio.sleep(max(0.0, t0 + (k + 1) * STEP_S - loop.time()))
            out.append(session.audio_out.pull(n_out))
            if speaker is not None:
                speaker.play(out[-1], out_rate)
            _drain(session, run.events, int(round((t + STEP_S) * 1000)))
            if k >= steps_in:
                quiet_steps = quiet_steps + 1 if session.quiet else 0
                if quiet_steps * STEP_S >= QUIET_S:
                    break
    finally:
        await session.aclose()
        _drain(session, run.events, int(round(len(out) * STEP_S * 1000)))
    run.audio = np.concatenate(out) if out else np.zeros(0, np.int16)
    run.history = [
        {"id": i.id, "role": i.role, "text": i.text, "interrupted": i.interrupted}
        for i in session.conversation.items
    ]
    run.leaked_tasks = session.task_count
    return run


def _drain(session: Any, events: list[dict[str, Any]], t_ms: int) -> None:
    while (event := session.events.get_nowait()) is not None:
        event["t_ms"] = t_ms
        events.append(event)


async def run_file(
    engine: Engine,
    input_path: str | Path,
    out_path: str | Path | None,
    events_path: str | Path | None,
    *,
    fast: bool = False,
    settings: SessionSettings | None = None,
    camera: Any = None,
    echo: EchoSpec | None = None,
) -> FileRun:
    """``seetalk run-file``: read any audio file, run it, write the reply WAV and events."""
    audio, rate = load_audio_file(input_path)
    run = await run_session(
        engine, audio, rate, fast=fast, settings=settings, camera=camera, echo=echo
    )
    if out_path is not None:
        await asyncio.to_thread(write_wav, out_path, run.audio, run.rate)
    if events_path is not None:
        lines = "".join(json.dumps(event) + "\n" for event in run.events)
        await asyncio.to_thread(Path(events_path).write_text, lines, encoding="utf-8")
    return run
