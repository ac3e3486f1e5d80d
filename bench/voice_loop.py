"""Voice-loop benchmark: spoken questions through file sessions on the default models.

Runs in real time (the wall clock paces the input, models take the time they take), so the
figures are what a person would experience on this machine. Each turn is measured twice:
by the session's own ``seetalk.turn.metrics`` and independently from the audio itself
(last voiced input sample -> first non-silent output sample, on the shared timeline).
Barge-in runs interrupt a long reply and measure speech onset -> reply audio silent, and
compare the words kept in history with a transcription of the audio that actually played.

    .venv/bin/python bench/voice_loop.py [--quick] [--json bench/results/voice_loop.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conversation.filesession import run_session  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.registry import resolve_asr  # noqa: E402
from seetalk.config import ModelConfig, SessionSettings  # noqa: E402
from voice.asr import Transcriber  # noqa: E402
from voice.audio import load_audio_file, resample  # noqa: E402

RATE = 16_000
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Can you recommend a good book?",
    "What is the boiling point of water?",
    "Who wrote Romeo and Juliet?",
    "What is the tallest mountain in the world?",
    "How do I make a cup of tea?",
]
STORIES = [
    "Tell me a long story about a brave dragon.",
    "Tell me a long story about a lighthouse keeper.",
    "Describe the history of the Roman empire in detail.",
    "Tell me everything you know about the ocean.",
    "Tell me a long story about a robot who learns to paint.",
]
INTERRUPTIONS = [
    "Stop. What is two plus two?",
    "Wait, tell me a joke instead.",
    "No, no. What time is it?",
    "Hold on. Where is Paris?",
    "Stop please. How are you?",
]


def speak(text: str, workdir: Path) -> np.ndarray:
    path = workdir / "say.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    audio, rate = load_audio_file(path)
    return resample(audio, rate, RATE)


def voiced_spans(audio: np.ndarray, rate: int, level: float = 0.01) -> list[tuple[float, float]]:
    """(start, end) seconds of sound separated by at least 300 ms of quiet."""
    frame = rate // 100
    n = audio.size // frame
    energy = np.abs(audio[: n * frame].reshape(n, frame)).mean(axis=1)
    loud = np.flatnonzero(energy > level)
    spans: list[tuple[float, float]] = []
    for i in loud:
        if spans and i / 100 - spans[-1][1] < 0.3:
            spans[-1] = (spans[-1][0], (i + 1) / 100)
        else:
            spans.append((i / 100, (i + 1) / 100))
    return spans


def silent_from(audio: np.ndarray, start: int, length: int) -> int:
    """The first sample at or after ``start`` that begins ``length`` exact zeros."""
    nonzero = np.flatnonzero(audio[start:] != 0)
    gaps = np.diff(np.concatenate([[-1], nonzero, [audio.size - start]]))
    i = int(np.argmax(gaps > length))
    return start + (int(nonzero[i - 1]) + 1 if i > 0 else 0)


def words(text: str) -> list[str]:
    """Lower-case words; a number such as 1,819 or 3.5 is one word."""
    return re.findall(r"[a-z0-9']+(?:[.,][0-9]+)*", text.lower())


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[k], 1)


async def answer_turn(
    engine: Engine, question: str, workdir: Path, settings: SessionSettings | None = None
) -> dict:
    speech = speak(question, workdir)
    audio = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(4 * RATE, np.float32)])
    run = await run_session(
        engine, audio, RATE, settings=settings or SessionSettings(), max_tail_s=2.0
    )
    metrics = run.of_type("seetalk.turn.metrics")
    m = dict(metrics[0]["metrics"]) if metrics else {}
    last_voiced = voiced_spans(audio, RATE)[-1][1]
    out = np.abs(run.audio.astype(np.float32)) / 32768
    loud = np.flatnonzero(out > 0.005)
    m["audio_voice_to_voice_ms"] = (
        round((loud[0] / run.rate - last_voiced) * 1000, 1) if loud.size else None
    )
    m["question"] = question
    m["transcript"] = next(
        (
            e["transcript"]
            for e in run.of_type("conversation.item.input_audio_transcription.completed")
        ),
        "",
    )
    m["reply"] = next((h["text"] for h in run.history if h["role"] == "assistant"), "")
    return m


async def barge_in_turn(
    engine: Engine, story: str, interruption: str, at_s: float, workdir: Path
) -> dict:
    first, second = speak(story, workdir), speak(interruption, workdir)
    audio = np.zeros(
        int((1 + first.size / RATE + at_s + second.size / RATE + 3) * RATE), np.float32
    )
    audio[RATE : RATE + first.size] = first
    onset_i = int((1 + first.size / RATE + at_s) * RATE)
    audio[onset_i : onset_i + second.size] = second
    run = await run_session(engine, audio, RATE, max_tail_s=1.0)
    # The interruption's first sound (it may hold pauses: take the span where it begins).
    onset = next(a for a, _ in voiced_spans(audio, RATE) if a >= onset_i / RATE - 0.05)
    out = np.abs(run.audio.astype(np.float32)) / 32768
    rate = run.rate
    result: dict = {"story": story, "interruption": interruption}
    truncated = run.of_type("conversation.item.truncated")
    started = run.of_type("output_audio_buffer.started")
    if not truncated or not started:
        result["missed"] = "the reply was not playing when the interruption came"
        return result
    # The reply's audio: from its first sound to where it goes digitally silent after the
    # onset (a cleared buffer plays exact zeros; the voice's own pauses are not exact zeros).
    reply_start = next(i for i in np.flatnonzero(out > 0.005)) / rate
    stopped = silent_from(run.audio, int(onset * rate), int(0.3 * rate)) / rate
    result["barge_in_stop_ms"] = round((stopped - onset) * 1000, 1)
    barge = run.of_type("seetalk.barge_in")
    result["event_stop_ms"] = barge[0]["stopped_ms"] - barge[0]["onset_ms"] if barge else None
    heard = truncated[0]["transcript"]
    piece = (
        run.audio[int(reply_start * rate) - 960 : int(stopped * rate) + 960].astype(np.float32)
        / 32768
    )
    played = reference_transcriber().transcribe(resample(piece, rate, RATE))
    result["heard_history"] = heard
    result["played_transcribed"] = played
    result["word_diff"] = len(words(heard)) - len(words(played))
    return result


_REFERENCE: list[Transcriber] = []


def reference_transcriber() -> Transcriber:
    """Whisper base on the full 30 s window, to hear what played: the measuring ear, not the
    engine's recognizer (whose fitted window is tuned for a person's turn, not a clip cut
    inside a word)."""
    if not _REFERENCE:
        _REFERENCE.append(Transcriber(resolve_asr(ModelConfig()), fit_window=False))
    return _REFERENCE[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 questions, 2 barge-ins")
    parser.add_argument("--json", default="bench/results/voice_loop.json")
    parser.add_argument("--eot", choices=("silence", "smart_turn"), help="turn.eot")
    args = parser.parse_args()
    settings = SessionSettings()
    if args.eot:
        settings = dataclasses.replace(
            settings, turn=dataclasses.replace(settings.turn, eot=args.eot)
        )
    t0 = time.perf_counter()
    engine = Engine.load()
    print(f"models loaded in {time.perf_counter() - t0:.1f} s: {engine.load_times}")
    questions = QUESTIONS[:3] if args.quick else QUESTIONS
    barges = 2 if args.quick else len(STORIES)
    turns, barge_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for q in questions:
            turn = await answer_turn(engine, q, workdir, settings)
            turns.append(turn)
            print(
                f"  turn: v2v {turn.get('voice_to_voice_ms')} ms (audio {turn['audio_voice_to_voice_ms']}), "
                f"overhead {turn.get('overhead_ms')} ms | {turn['transcript']!r} -> {turn['reply'][:60]!r}"
            )
        for i in range(barges):
            run = await barge_in_turn(engine, STORIES[i], INTERRUPTIONS[i], 4.0 + 0.3 * i, workdir)
            barge_runs.append(run)
            print(
                f"  barge-in: stop {run.get('barge_in_stop_ms')} ms, heard {run.get('heard_history')!r} "
                f"vs played {run.get('played_transcribed')!r} ({run.get('missed', '')})"
            )
    await engine.aclose()

    keys = [
        "endpoint_ms",
        "asr_final_ms",
        "llm_first_token_ms",
        "first_audio_ready_ms",
        "voice_to_voice_ms",
        "audio_voice_to_voice_ms",
        "compute_ms",
        "overhead_ms",
    ]
    summary = {
        k: {"p50": pct([t.get(k) for t in turns], 0.5), "p90": pct([t.get(k) for t in turns], 0.9)}
        for k in keys
    }
    stops = [r["barge_in_stop_ms"] for r in barge_runs if "barge_in_stop_ms" in r]
    diffs = [r["word_diff"] for r in barge_runs if "word_diff" in r]
    summary["barge_in_stop_ms"] = {"p50": pct(stops, 0.5), "p90": pct(stops, 0.9)}
    summary["heard_words_within_1"] = f"{sum(abs(d) <= 1 for d in diffs)}/{len(diffs)}"
    summary["preemptive_turns"] = f"{sum(1 for t in turns if t.get('preemptive'))}/{len(turns)}"
    print("\nmedian / p90 over", len(turns), "turns (ms):")
    for k in [*keys, "barge_in_stop_ms"]:
        print(f"  {k:26s} {summary[k]['p50']!s:>8} {summary[k]['p90']!s:>8}")
    print(f"  interrupted history = played words +-1: {summary['heard_words_within_1']}")
    print(
        "targets: overhead <= 50 ms p50; barge-in stop <= 150 ms p90; heard words +-1 in every run"
    )
    report = {
        "eot": settings.turn.eot,
        "summary": summary,
        "turns": turns,
        "barge_ins": barge_runs,
        "load_times": engine.load_times,
    }
    print(f"wrote {await asyncio.to_thread(_write, Path(args.json), report)}")


def _write(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


if __name__ == "__main__":
    asyncio.run(main())
