"""Echo benchmark: the assistant's reply played back into the microphone.

A simulated loudspeaker (``voice/loudspeaker.py``: delay, gain, a little reverberation) feeds
each file session's output back into its input on the same timeline, at delays of 50, 150
and 400 ms and gains of 0.3, 0.5 and 1.0. File sessions run on the virtual clock (``fast``),
so the whole grid takes minutes. For each setting:

- *self*: a question whose answer is long, nobody interrupting: self-interruptions
  (``seetalk.barge_in`` events) and assistant words transcribed as user words (words of
  user items other than the question). Target: 0 for gains up to 0.5.
- *interrupt*: the same question, and a person talking over the reply at a known time:
  whether the barge-in was detected, and the stop time (the person's onset -> the reply's
  audio silent, from the output audio itself). Target: detected, and within 100 ms of the
  echo-free figure.
- *ERLE*: echo return loss enhancement of the canceller alone on that reply's audio (after
  its first second), in dB.

    .venv/bin/python bench/echo.py [--quick] [--json bench/results/echo.json]

A reference figure (one whisper-base pass over 3 s of speech on this machine) is printed
beside the timings; stop times are on the virtual timeline and do not depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reference import whisper_base_ms  # noqa: E402
from conversation.filesession import FileRun, run_session  # noqa: E402
from models.engine import Engine  # noqa: E402
from seetalk.config import ModelConfig, SessionSettings  # noqa: E402
from voice.audio import load_audio_file, resample  # noqa: E402
from voice.echo import EchoCanceller  # noqa: E402
from voice.loudspeaker import EchoSpec, Loudspeaker  # noqa: E402

RATE = 16_000
QUESTION = "Tell me a short story about a little red fox."
INTERRUPTION = "Stop, wait a moment please. What about the chair?"
INTERRUPT_AT_S = 6.0  # the person starts talking here (the reply starts about 3.3 s)
DELAYS = (50, 150, 400)
GAINS = (0.3, 0.5, 1.0)
TAIL_S = 12.0  # after the input ends: enough reply to hear itself many times


def espeak(text: str, tmp: Path) -> np.ndarray:
    path = tmp / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    audio, rate = load_audio_file(path)
    return resample(audio, rate, RATE)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def stop_ms(run: FileRun, at_s: float) -> float | None:
    """The person's onset -> the first 100 ms of silent reply audio after it."""
    out = run.audio.astype(np.float32)
    frame = run.rate // 100
    start = int(at_s * run.rate)
    for i in range(start, out.size - 10 * frame, frame):
        if not np.any(out[i : i + 10 * frame]):
            return (i - start) * 1000 / run.rate
    return None


def erle_db(reply: np.ndarray, rate: int, spec: EchoSpec) -> float:
    """The canceller alone on ``reply`` (int16 at ``rate``) heard through ``spec``."""
    far = resample(reply.astype(np.float32) / 32768, rate, RATE)
    speaker, ec = Loudspeaker(spec, RATE), EchoCanceller()
    echo, clean = [], []
    for i in range(0, far.size - 319, 320):
        echo.append(speaker.hear(320))
        speaker.play(far[i : i + 320], RATE)
        ec.play(far[i : i + 320], RATE, ec.pos + ec._pending.size)
        clean.append(ec.process(echo[-1])[0])
    e, c = np.concatenate(echo)[RATE:], np.concatenate(clean)[RATE:]
    n = min(e.size, c.size)
    return float(10 * np.log10(np.sum(e[:n] ** 2) / max(float(np.sum(c[:n] ** 2)), 1e-12)))


async def one(
    engine: Engine,
    audio: np.ndarray,
    spec: EchoSpec | None,
    echo: str = "auto",
    tail_s: float = TAIL_S,
) -> FileRun:
    settings = SessionSettings(echo=echo)
    return await run_session(
        engine, audio, RATE, fast=True, settings=settings, echo=spec, max_tail_s=tail_s
    )


def self_row(run: FileRun) -> dict[str, Any]:
    users = [i for i in run.history if i["role"] == "user"]
    extra = [w for i in users[1:] for w in words(i["text"])]
    return {
        "self_interruptions": len(run.of_type("seetalk.barge_in")),
        "assistant_words_as_user": len(extra),
        "user_texts": [i["text"] for i in users[1:]],
    }


def interrupt_row(run: FileRun) -> dict[str, Any]:
    barges = [
        e
        for e in run.of_type("seetalk.barge_in")
        if INTERRUPT_AT_S * 1000 - 200 <= e["onset_ms"] <= INTERRUPT_AT_S * 1000 + 1000
    ]
    return {"detected": bool(barges), "stop_ms": stop_ms(run, INTERRUPT_AT_S)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    engine = Engine.load(ModelConfig())
    try:
        with tempfile.TemporaryDirectory() as d:
            question = espeak(QUESTION, Path(d))
            person = espeak(INTERRUPTION, Path(d))
        plain = np.concatenate([question, np.zeros(RATE, np.float32)])
        talk = np.zeros(int((INTERRUPT_AT_S + 5) * RATE), np.float32)
        talk[: question.size] = question
        at = int(INTERRUPT_AT_S * RATE)
        talk[at : at + person.size] = person
        clip = question[: 3 * RATE]
        reference_s = whisper_base_ms(clip) / 1000

        results: dict[str, Any] = {"reference_whisper_base_3s_s": round(reference_s, 3)}
        base = {}
        for mode in ("off", "auto"):
            run = await one(engine, talk, None, mode, tail_s=2.0)
            base[mode] = {**interrupt_row(run), **self_row(await one(engine, plain, None, mode))}
        results["echo_free"] = base
        grid = [(150, 0.5)] if args.quick else [(d, g) for d in DELAYS for g in GAINS]
        rows = []
        for delay, gain in grid:
            spec = EchoSpec(delay, gain)
            t = time.perf_counter()
            selfrun = await one(engine, plain, spec)
            row: dict[str, Any] = {"delay_ms": delay, "gain": gain, **self_row(selfrun)}
            row.update(interrupt_row(await one(engine, talk, spec, tail_s=2.0)))
            row["erle_db"] = round(erle_db(selfrun.audio, selfrun.rate, spec), 1)
            row["wall_s"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(_line(row, base["off"]), flush=True)
        results["rows"] = rows
        return results
    finally:
        await engine.aclose()


def _line(row: dict[str, Any], free: dict[str, Any]) -> str:
    stop = row["stop_ms"]
    delta = "" if stop is None or free["stop_ms"] is None else f"{stop - free['stop_ms']:+.0f}"
    return (
        f"{row['delay_ms']:>6} {row['gain']:>5} {row['self_interruptions']:>6} "
        f"{row['assistant_words_as_user']:>6} {'yes' if row['detected'] else 'NO':>9} "
        f"{'-' if stop is None else f'{stop:.0f}':>8} {delta:>7} {row['erle_db']:>7} "
        f"{row['wall_s']:>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="150 ms at gain 0.5 only")
    parser.add_argument("--json", default="bench/results/echo.json")
    args = parser.parse_args()
    print(
        f"{'delay':>6} {'gain':>5} {'self':>6} {'words':>6} {'barge-in':>9} "
        f"{'stop ms':>8} {'vs free':>7} {'ERLE dB':>7} {'wall s':>7}"
    )
    results = asyncio.run(main_async(args))
    for mode, row in results["echo_free"].items():
        print(
            f"echo-free (echo={mode}): stop {row['stop_ms']} ms, detected {row['detected']}, "
            f"self-interruptions {row['self_interruptions']}"
        )
    print(f"reference: one whisper-base pass over 3 s = {results['reference_whisper_base_3s_s']} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
