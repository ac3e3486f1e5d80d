"""Benchmark the WebSocket API as a client measures it, with the official ``openai`` package.

- voice-to-voice: end of the sent speech -> first ``response.output_audio.delta``.
- barge-in stop: onset of interrupting speech in the sent stream -> the last audio delta of
  the interrupted response (only replies still being sent when interrupted count), and ->
  ``input_audio_buffer.speech_started``.

The client streams its "microphone" (espeak-ng speech, silence between) as pcm16 24 kHz
appends of 20 ms, paced in real time, as a device would. Median and p90 over the turns are
printed and written as JSON to ``bench/results/``.

    .venv/bin/python bench/realtime_ws.py                 # in-process server, default models
    .venv/bin/python bench/realtime_ws.py --url ws://HOST:PORT/v1 --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RATE = 24_000
CHUNK = 480  # 20 ms
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Name a large animal that lives in the sea.",
    "What do bees make?",
]
STORY = "Tell me a long story about a dog."
INTERRUPT = "Stop, that is enough."


def espeak_pcm16(text: str) -> np.ndarray:
    """Speech from espeak-ng as int16 mono at 24 kHz."""
    from voice.audio import float_to_s16, load_audio_file, resample

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        samples, rate = load_audio_file(path)
    return float_to_s16(resample(samples, rate, RATE))


def onset_index(samples: np.ndarray, level: int = 500) -> int:
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > level)[0]
    return int(loud[0]) if len(loud) else 0


class Driver:
    """A realtime client: a paced microphone and a timestamped event log.

    ``say`` queues speech; the microphone sends silence when nothing is queued. ``said``
    records, per utterance, when its first loud sample and its last sample were sent.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.log: list[tuple[float, Any]] = []
        self._queue: deque[tuple[int, np.ndarray]] = deque()
        self.said: dict[int, dict[str, float]] = {}
        self._n = 0
        self._new = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Driver:
        self.tasks = [asyncio.create_task(self._mic()), asyncio.create_task(self._read())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def say(self, samples: np.ndarray) -> int:
        self._n += 1
        self._queue.append((self._n, samples))
        self.said[self._n] = {"onset_offset": onset_index(samples) / RATE}
        return self._n

    async def _mic(self) -> None:
        t0 = time.monotonic()
        sent = 0
        silence = np.zeros(CHUNK, np.int16)
        current: tuple[int, np.ndarray, int] | None = None
        while True:
            if current is None and self._queue:
                n, s = self._queue.popleft()
                current = (n, s, 0)
                self.said[n]["start"] = time.monotonic()
                self.said[n]["onset"] = self.said[n]["start"] + self.said[n]["onset_offset"]
            if current is not None:
                n, s, pos = current
                chunk = s[pos : pos + CHUNK]
                current = (n, s, pos + CHUNK) if pos + CHUNK < len(s) else None
                if current is None:
                    self.said[n]["end"] = time.monotonic() + len(chunk) / RATE
            else:
                chunk = silence
            audio = base64.b64encode(chunk.astype("<i2").tobytes()).decode()
            await self.conn.input_audio_buffer.append(audio=audio)
            sent += len(chunk)
            await asyncio.sleep(max(0.0, t0 + sent / RATE - time.monotonic()))

    async def _read(self) -> None:
        async for event in self.conn:
            self.log.append((time.monotonic(), event))
            self._new.set()

    async def wait_for(
        self, type_: str, within: float, *, since: float = 0.0, where: Any = None
    ) -> tuple[float, Any]:
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for t, e in self.log[seen:]:
                if t >= since and e.type == type_ and (where is None or where(e)):
                    return t, e
            seen = len(self.log)
            left = deadline - time.monotonic()
            if left <= 0:
                recent = [
                    f"{t - since:+.2f} {e.type}" for t, e in self.log[-40:] if e.type != type_
                ]
                raise TimeoutError(f"no {type_} within {within} s; last events: {recent}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except TimeoutError:
                pass

    def of(self, type_: str, **match: Any) -> list[tuple[float, Any]]:
        return [
            (t, e)
            for t, e in self.log
            if e.type == type_ and all(getattr(e, k, None) == v for k, v in match.items())
        ]

    async def until_spoken(self, n: int, within: float = 30.0) -> dict[str, float]:
        deadline = time.monotonic() + within
        while "end" not in self.said[n]:
            if time.monotonic() > deadline:
                raise TimeoutError("speech not sent")
            await asyncio.sleep(0.01)
        return self.said[n]


async def voice_turn(d: Driver, speech: np.ndarray) -> dict[str, Any]:
    n = d.say(speech)
    said = await d.until_spoken(n)
    _, done = await d.wait_for("response.done", 90, since=said["start"])
    rid = done.response.id
    deltas = d.of("response.output_audio.delta", response_id=rid)
    t_first = deltas[0][0] if deltas else None
    transcript = [
        e
        for _, e in d.of("conversation.item.input_audio_transcription.completed")
        if _ >= said["start"]
    ]
    return {
        "status": done.response.status,
        "voice_to_voice_ms": None if t_first is None else (t_first - said["end"]) * 1000,
        "transcript": transcript[-1].transcript if transcript else None,
        "audio_ms": sum(len(base64.b64decode(e.delta)) // 2 for _, e in deltas) * 1000 / RATE,
    }


async def barge_in(d: Driver, story: np.ndarray, interrupt: np.ndarray) -> dict[str, Any]:
    """Interrupt a long reply 0.3 s after its first audio. Audio is sent ahead of playback,
    so a reply may be fully sent (``response.done`` completed) before the interruption: then
    there is nothing to stop (``interrupted`` false) and only the truncate cuts the history."""
    n = d.say(story)
    said = await d.until_spoken(n)
    t_first, first = await d.wait_for("response.output_audio.delta", 90, since=said["end"])
    rid, item_id = first.response_id, first.item_id
    await asyncio.sleep(0.3)
    m = d.say(interrupt)
    stop = await d.until_spoken(m)
    t_started, _ = await d.wait_for("input_audio_buffer.speech_started", 20, since=stop["start"])
    t_done, done = await d.wait_for(
        "response.done", 30, since=t_first, where=lambda e: e.response.id == rid
    )
    interrupted = t_done >= stop["onset"]
    deltas = d.of("response.output_audio.delta", response_id=rid)
    t_last = deltas[-1][0]
    received_ms = sum(len(base64.b64decode(e.delta)) // 2 for _, e in deltas) * 1000 / RATE
    # what a client playing in real time had heard when the user spoke
    heard_ms = int(min(received_ms, (stop["onset"] - t_first) * 1000))
    await d.conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=heard_ms)
    _, truncated = await d.wait_for(
        "conversation.item.truncated",
        10,
        since=stop["start"],
        where=lambda e: e.item_id == item_id and e.audio_end_ms == heard_ms,
    )
    return {
        "status": done.response.status,
        "interrupted": interrupted,
        "stop_last_delta_ms": (t_last - stop["onset"]) * 1000 if interrupted else None,
        "stop_speech_started_ms": (t_started - stop["onset"]) * 1000,
        "received_ms": received_ms,
        "heard_ms": heard_ms,
        "truncated_transcript": getattr(truncated, "transcript", None),
        "item_id": item_id,
        "t_started": t_started,
    }


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "p90": None}
    v = sorted(values)
    p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
    return {
        "n": len(v),
        "median": round(statistics.median(v), 1),
        "p90": round(p90, 1),
        "min": round(v[0], 1),
        "max": round(v[-1], 1),
    }


async def run(url: str, api_key: str, turns: int, barge_ins: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=api_key, websocket_base_url=url)
    out: dict[str, Any] = {"turns": [], "barge_ins": []}
    async with client.realtime.connect(model="seetalk") as conn, Driver(conn) as d:
        await d.wait_for("session.created", 10)
        await conn.session.update(
            session={"type": "realtime", "instructions": "Answer in one short sentence."}
        )
        await d.wait_for("session.updated", 10)
        for i in range(turns):
            out["turns"].append(await voice_turn(d, espeak_pcm16(QUESTIONS[i % len(QUESTIONS)])))
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Answer with a long story of at least five sentences.",
            }
        )
        story, interrupt = espeak_pcm16(STORY), espeak_pcm16(INTERRUPT)
        for _ in range(barge_ins):
            out["barge_ins"].append(await barge_in(d, story, interrupt))
            await asyncio.sleep(2.0)
    out["voice_to_voice_ms"] = summary(
        [t["voice_to_voice_ms"] for t in out["turns"] if t["voice_to_voice_ms"] is not None]
    )
    out["barge_in_stop_last_delta_ms"] = summary(
        [b["stop_last_delta_ms"] for b in out["barge_ins"] if b["interrupted"]]
    )
    out["barge_in_speech_started_ms"] = summary(
        [b["stop_speech_started_ms"] for b in out["barge_ins"]]
    )
    return out


async def in_process(args: argparse.Namespace) -> dict[str, Any]:
    import socket

    import uvicorn

    from conversation.session import Sessions
    from models.engine import Engine
    from seetalk.config import ServerConfig
    from server.app import create_app

    engine = await asyncio.to_thread(Engine.load)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    app = create_app(Sessions(engine), ServerConfig(port=port))
    if not any(getattr(r, "path", None) == "/v1/realtime" for r in app.routes):
        from server.realtime_ws import add_realtime_routes

        add_realtime_routes(app)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, ws="websockets", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.05)
    try:
        return await run(f"ws://127.0.0.1:{port}/v1", "x", args.turns, args.barge_ins)
    finally:
        server.should_exit = True
        await task
        await engine.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="websocket_base_url of a running server (ws://HOST:PORT/v1)")
    p.add_argument("--api-key", default="x")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--barge-ins", type=int, default=3)
    args = p.parse_args()
    if args.url:
        result = asyncio.run(run(args.url, args.api_key, args.turns, args.barge_ins))
    else:
        result = asyncio.run(in_process(args))
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    for key in ("voice_to_voice_ms", "barge_in_stop_last_delta_ms", "barge_in_speech_started_ms"):
        s = result[key]
        print(f"{key:32s} median {s['median']} ms  p90 {s['p90']} ms  (n={s['n']})")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"realtime_ws-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
