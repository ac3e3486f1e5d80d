"""Timing targets that used to be test assertions, measured on this machine.

Tests check behaviour (a slower or busier machine must not fail them); how fast things are
is measured here, each figure printed next to its target:

- VAD: cost of one 32 ms Silero frame, per-session model and shared model (target < 5 ms);
  and building one VAD stream, which the server does per session on its event loop;
- language model (SmolLM2 in-process): load time (< 10 s), first delta, the executor free
  after ``aclose`` of a 1000-token stream (< 1 s), the next short request (< 5 s);
- OpenAI-compatible backend: a refused connection becomes an error (< 1 s); a server that
  never answers times out near ``timeout_s`` (0.5 s: 0.4-2 s);
- streaming ASR: partial lag with a model that takes 120 ms (< 0.49 s, not growing).

    .venv/bin/python bench/timing.py [--skip-llm] [--json bench/results/timing.json]

WebRTC pacing (outgoing audio at 50 frames/s) and barge-in stop time (< 400 ms) are in
bench/webrtc.py and bench/realtime_ws.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm.backend import ChatMessage, GenerationSettings  # noqa: E402
from seetalk.errors import BackendError, BackendTimeout  # noqa: E402

FRANCE = [ChatMessage("user", "What is the capital of France?")]
RAMBLE = [ChatMessage("user", "Count from 1 to 1000, one number per line.")]
rows: list[dict[str, Any]] = []


def record(name: str, value: float, target: str, ok: bool, unit: str = "ms") -> None:
    rows.append({"name": name, "value": round(value, 3), "unit": unit, "target": target, "ok": ok})
    print(f"{name:<44} {value:>10.2f} {unit:<3} target {target:<12} {'ok' if ok else 'MISSED'}")


def vad() -> None:
    from models.registry import resolve_vad
    from seetalk.config import ModelConfig
    from voice.vad import FRAME, SileroVad
    from voice.vad_model import SharedSileroVad

    path = resolve_vad(ModelConfig())
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal(FRAME).astype(np.float32) * 0.1 for _ in range(300)]
    for name, make in (("per-session", SileroVad), ("shared", SharedSileroVad)):
        make(path)  # load the library (and, shared, the one model)
        t0 = time.perf_counter()
        for _ in range(20):
            v = make(path)
        build_ms = (time.perf_counter() - t0) / 20 * 1000
        record(f"VAD stream build ({name})", build_ms, "< 1 ms", build_ms < 1)
        t0 = time.perf_counter()
        for f in frames:
            v.prob(f)
        per_frame = (time.perf_counter() - t0) / len(frames) * 1000
        record(f"VAD frame ({name})", per_frame, "< 5 ms", per_frame < 5)


async def llm() -> None:
    from llm.local import LlamaCppBackend
    from models.registry import resolve_llm
    from seetalk.config import ModelConfig

    backend = LlamaCppBackend(resolve_llm(ModelConfig()))
    await asyncio.to_thread(backend.warmup)
    load = backend.load_seconds or 0.0
    record("LLM load", load, "< 10 s", load < 10, "s")
    t0 = time.perf_counter()
    gen = backend.stream(FRANCE, GenerationSettings(temperature=0.0, max_tokens=16))
    await anext(gen)
    first = time.perf_counter() - t0
    await gen.aclose()
    record("LLM first delta", first * 1000, "< 1000 ms", first < 1)
    gen = backend.stream(RAMBLE, GenerationSettings(max_tokens=1000, temperature=0.0))
    await anext(gen)
    await gen.aclose()
    t0 = time.perf_counter()
    await asyncio.wrap_future(backend._executor.submit(lambda: None))
    free = time.perf_counter() - t0
    record("LLM executor free after aclose", free * 1000, "< 1000 ms", free < 1)
    t0 = time.perf_counter()
    _ = [d async for d in backend.stream(FRANCE, GenerationSettings(max_tokens=20))]
    nxt = time.perf_counter() - t0
    record("LLM next 20-token request", nxt, "< 5 s", nxt < 5, "s")
    await backend.aclose()


async def openai_backend() -> None:
    from llm.openai_compat import OpenAIChatBackend

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", timeout_s=10)
    t0 = time.perf_counter()
    try:
        _ = [d async for d in backend.stream(FRANCE, GenerationSettings())]
    except BackendError:
        pass
    down = time.perf_counter() - t0
    record("backend: server down -> error", down * 1000, "< 1000 ms", down < 1)
    await backend.aclose()

    ended = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client gives up
        finally:
            writer.close()
            ended.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", timeout_s=0.5)
    t0 = time.perf_counter()
    try:
        _ = [d async for d in backend.stream(FRANCE, GenerationSettings())]
    except BackendTimeout:
        pass
    waited = time.perf_counter() - t0
    record("backend: timeout_s=0.5 -> timeout", waited * 1000, "400-2000 ms", 0.4 < waited < 2)
    await backend.aclose()
    try:
        await asyncio.wait_for(ended.wait(), 5)
    except TimeoutError:
        print("the timed-out connection was not closed by the client")
    server.close()
    await server.wait_closed()


async def partial_lag() -> None:
    from voice.asr import SAMPLE_RATE, StreamingRecognizer

    class Slow:
        def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> str:
            time.sleep(0.12)
            return "final"

        def transcribe_partial(self, audio: np.ndarray, *, prompt: str | None = None) -> str:
            time.sleep(0.12)
            return "partial"

    lags: list[float] = []
    with ThreadPoolExecutor(2) as ex:
        rec = StreamingRecognizer(Slow(), ex, partial_interval_s=0.1, on_partial=lambda _t: None)
        rec.begin()
        for _ in range(60):
            rec.append(np.full(SAMPLE_RATE // 10, 0.1, np.float32))
            await asyncio.sleep(0.04)
            if rec.stats.last_partial_lag_s is not None:
                lags.append(rec.stats.last_partial_lag_s)
        await rec.finalize()
        await rec.aclose()
    worst = max(lags) if lags else float("nan")
    record("ASR partial lag, worst (120 ms model)", worst * 1000, "< 490 ms", worst < 0.49)
    if len(lags) >= 20:
        growth = statistics.mean(lags[-10:]) - statistics.mean(lags[:10])
        record("ASR partial lag growth (last-first 10)", growth * 1000, "< 100 ms", growth < 0.1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--skip-llm", action="store_true")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "timing.json"))
    args = p.parse_args()
    threading.current_thread().name = "bench"
    vad()
    if not args.skip_llm:
        asyncio.run(llm())
    asyncio.run(openai_backend())
    asyncio.run(partial_lag())
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print("wrote", out)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
