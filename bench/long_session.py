"""A long session on the virtual clock: a spoken turn every 20 s with the camera on.

    .venv/bin/python bench/long_session.py [--minutes 60] [--every 20] [--json PATH]

One real :class:`~conversation.session.Session` on the default models, driven as
``seetalk run-file --fast`` drives it: input in 100 ms steps on a virtual clock (model
compute takes no time on the timeline), a question from espeak-ng every ``--every`` seconds,
silence between, and a 640x480 camera frame every 0.5 s (a moving gradient, so frame
selection has work). After each turn it records: the process RSS, the conversation's items
and image bytes, the frames the camera intake holds, the model's input tokens for the reply
(``response.done`` ``usage``, after ``truncation``), the reply's voice-to-voice time on the
timeline and the wall time the turn's compute took. Everything should be flat after the
first minutes: memory and history bounded, model input bounded by the context budget.

Prints a row every ten turns and a summary (first vs last quarter), with one whisper-base
pass on 3 s of speech as a reference figure for the wall times, and writes
``bench/results/long_session.json`` (also every ten turns, ``"complete": false``, so a run
cut short still leaves its figures).

Where the wall time went: once the history reached the context budget (about turn 28),
truncation cut the oldest turn at every reply, so the model's prompt changed right after
the instructions and llama.cpp re-read the whole history each time (1,500 tokens: 20-30 s
on a busy 2-core machine, against 0.4 s with the prefix reused), 40-200 s a turn at
``nice -n 19``. ``conversation/budget.py`` now keeps a cut while the turns after it fit
(``auto`` cuts to 80 % of the budget), so one reply in about seven re-reads the history;
the full hour runs in about half an hour at ``nice -n 19`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference import espeak16k  # noqa: E402
from conversation.budget import context_of  # noqa: E402
from conversation.session import Session  # noqa: E402
from models.engine import Engine  # noqa: E402
from seetalk.clock import VirtualClock  # noqa: E402
from seetalk.config import SessionSettings  # noqa: E402

RATE = 16_000
STEP_S = 0.1
QUESTIONS = (
    "What do you see in front of the camera?",
    "Tell me something about the colours you see.",
    "What is the capital of France?",
    "Can you describe the scene again?",
    "How many sides does a triangle have?",
)


def frame(t: float) -> np.ndarray:
    """A 640x480 BGR frame: a gradient that drifts with time."""
    x = np.linspace(0, 255, 640, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, 480, dtype=np.float32)[:, None]
    shift = (t * 7.0) % 256
    img = np.stack([(x + shift) % 256 + 0 * y, (y + shift) % 256 + 0 * x, (x + y) / 2], axis=-1)
    return img.astype(np.uint8)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def whisper_reference(audio: np.ndarray) -> float:
    from bench.reference import whisper_base_ms

    return whisper_base_ms(audio) / 1000


def summarise(
    turns: list[dict[str, Any]], minutes: float, budget: int, reference_s: float
) -> dict[str, Any]:
    quarter = max(1, len(turns) // 4)
    first, last = turns[:quarter], turns[-quarter:]

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(vals), 1) if vals else None

    return {
        "minutes": minutes,
        "turns": len(turns),
        "timeline_min_reached": turns[-1]["t_min"] if turns else 0.0,
        "context_budget_tokens": budget,
        "max_input_tokens": max((r["input_tokens"] or 0) for r in turns) if turns else None,
        "whisper_base_3s_reference_s": round(reference_s, 3),
        **{
            f"{key}_{name}": med(rows, key)
            for key in (
                "rss_mb",
                "input_tokens",
                "items",
                "image_bytes",
                "voice_to_voice_ms",
                "wall_s",
            )
            for name, rows in (("first_quarter", first), ("last_quarter", last))
        },
    }


def save(path: str, result: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))


async def run(minutes: float, every: float, out: str) -> dict[str, Any]:
    engine = await asyncio.to_thread(Engine.load)
    questions = [espeak16k(q) for q in QUESTIONS]
    reference_s = whisper_reference(questions[0])
    clock = VirtualClock()
    settings = SessionSettings(history_turns=200)  # truncation bounds the input, not a count
    session = Session(engine, settings, clock=clock)
    await session.start()
    n_out = round(settings.output_rate * STEP_S)
    steps = int(minutes * 60 / STEP_S)
    budget = context_of(engine.backend) - settings.max_output_tokens
    turns: list[dict[str, Any]] = []
    pending: dict[str, Any] | None = None
    wall_turn = time.perf_counter()
    try:
        for k in range(steps):
            t = k * STEP_S
            clock.set(t)
            if k % int(0.5 / STEP_S) == 0:
                session.push_video(frame(t))
            since_turn = t % every
            q = questions[int(t // every) % len(questions)]
            start = int(since_turn * RATE)
            chunk = q[start : start + int(STEP_S * RATE)]
            if chunk.size < int(STEP_S * RATE):
                chunk = np.concatenate(
                    [chunk, np.zeros(int(STEP_S * RATE) - chunk.size, np.float32)]
                )
            if since_turn < STEP_S / 2:
                wall_turn = time.perf_counter()
            await session.feed_audio(chunk, RATE, 1)
            await session.wait_idle()
            session.audio_out.pull(n_out)
            while (event := session.events.get_nowait()) is not None:
                kind = event["type"]
                if kind == "seetalk.turn.metrics":
                    pending = {"voice_to_voice_ms": event["metrics"].get("voice_to_voice_ms")}
                elif kind == "response.done" and pending is not None:
                    usage = event["response"].get("usage") or {}
                    conv = session.conversation
                    pending.update(
                        t_min=round(t / 60, 2),
                        status=event["response"]["status"],
                        input_tokens=usage.get("input_tokens"),
                        rss_mb=round(rss_mb(), 1),
                        items=len(conv.items),
                        image_bytes=conv.image_bytes,
                        frames_held=len(session.frames.history),
                        wall_s=round(time.perf_counter() - wall_turn, 2),
                    )
                    turns.append(pending)
                    pending = None
                    if len(turns) % 10 == 0:  # progress, kept even if the run is cut short
                        print(json.dumps(turns[-1]), flush=True)
                        partial = summarise(turns, minutes, budget, reference_s)
                        save(out, {"summary": partial, "turns": turns, "complete": False})
    finally:
        await session.aclose()
    await engine.aclose()
    return {"summary": summarise(turns, minutes, budget, reference_s), "turns": turns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=20.0)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "long_session.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.minutes, args.every, args.json))
    for k, v in result["summary"].items():
        print(f"{k:40s} {v}")
    save(args.json, {**result, "complete": True})


if __name__ == "__main__":
    main()
