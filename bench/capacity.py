"""Capacity: how turn latency grows with people talking at once, on the real engine.

    .venv/bin/python bench/capacity.py [--quick] [--peers 1,2,4,8] [--stagger 1.0]
                                       [--eot silence|smart_turn] [--max-seconds 900]

The server runs in a child process (this script with ``--child``: uvicorn on a free loopback
port, the embedded default models). For each level N, N aiortc peers
(``examples/webrtc_client.py``) connect at once; peer i asks a spoken question (espeak-ng)
``i * --stagger`` seconds after the first, then keeps listening until its turn's
``seetalk.turn.metrics`` arrives (or 90 s pass). Printed per level: the median and worst
endpoint -> final transcript (``asr_final_ms``), endpoint -> first audio ready and speech end
-> first audio out (``voice_to_voice_ms``), turns that completed, and the server's
scheduler statistics from ``/healthz`` (waits by priority, skipped partials, capacity
estimate). Beside them, a reference figure: one whisper-base pass on the same question in
this process before the server starts, so figures from different machines compare.

``--quick``: levels 1 and 2 only. Writes ``bench/results/capacity.json``. Needs a quiet
machine: anything else running doubles whisper's times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Can you name a large animal that lives in Africa?",
    "What is two plus three?",
    "Which planet is closest to the sun?",
    "What do bees make?",
    "How many days are in a week?",
)


async def _child(port: int) -> None:
    import uvicorn

    from conversation.session import Sessions
    from models.engine import Engine
    from seetalk.config import ModelConfig, ServerConfig
    from server.app import create_app

    cfg = ServerConfig(host="127.0.0.1", port=port, max_sessions=16)
    app = create_app(lambda: Sessions(Engine.load(ModelConfig())), cfg)
    await uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    ).serve()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def speech48k(text: str, workdir: Path) -> np.ndarray:
    """int16 mono at 48 kHz of espeak-ng saying ``text``."""
    from voice.audio import load_audio_file, resample

    path = workdir / f"q{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    audio, rate = load_audio_file(str(path))
    return (np.clip(resample(audio, rate, 48_000), -1, 1) * 32767).astype(np.int16)


def whisper_reference(workdir: Path) -> float:
    """Milliseconds of one whisper-base pass on the first question (best of 3)."""
    from models.registry import resolve_asr
    from seetalk.config import ModelConfig
    from voice.asr import Transcriber
    from voice.audio import load_audio_file

    path = workdir / "ref.wav"
    subprocess.run(["espeak-ng", "-w", str(path), QUESTIONS[0]], check=True, capture_output=True)
    audio, _rate = load_audio_file(str(path))  # 16 kHz mono
    tr = Transcriber(resolve_asr(ModelConfig()))
    tr.transcribe(audio)  # load and warm
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        tr.transcribe(audio)
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 1)


async def one_peer(base: str, i: int, delay: float, speech: np.ndarray, eot: str) -> dict[str, Any]:
    from examples.webrtc_client import Client

    out: dict[str, Any] = {"peer": i}
    async with Client(base) as c:
        if eot != "silence":
            c.send({"type": "session.update", "session": {"seetalk": {"turn": {"eot": eot}}}})
        await asyncio.sleep(delay)
        c.mic.say(speech)
        try:
            ev = await c.wait_for("seetalk.turn.metrics", limit_s=90.0)
            out.update(ev.get("metrics", {}))
        except TimeoutError:
            out["timeout"] = True
    return out


async def level(
    base: str, n: int, stagger: float, speeches: list[np.ndarray], eot: str
) -> dict[str, Any]:
    import httpx

    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []

    async def poll() -> None:  # /healthz while the peers talk: load and capacity estimate
        async with httpx.AsyncClient() as http:
            while True:
                await asyncio.sleep(2.0)
                body = (await http.get(f"{base}/healthz")).json()
                if body.get("load"):
                    samples.append(body["load"])

    poller = asyncio.create_task(poll())
    try:
        peers = await asyncio.gather(
            *(
                one_peer(base, i, 1.0 + i * stagger, speeches[i % len(speeches)], eot)
                for i in range(n)
            ),
            return_exceptions=True,
        )
    finally:
        poller.cancel()
        try:
            await poller
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we were cancelled, not just the poller
    rows = [p if isinstance(p, dict) else {"error": repr(p)} for p in peers]
    busiest = max(
        samples, key=lambda ld: max(ld.get("utilisation", {}).values(), default=0.0), default={}
    )

    def stat(key: str) -> dict[str, float | None]:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return {
            "median": round(statistics.median(vals), 1) if vals else None,
            "max": round(max(vals), 1) if vals else None,
        }

    return {
        "peers": n,
        "completed": sum(1 for r in rows if "voice_to_voice_ms" in r),
        "seconds": round(time.monotonic() - t0, 1),
        "asr_final_ms": stat("asr_final_ms"),
        "first_audio_ready_ms": stat("first_audio_ready_ms"),
        "voice_to_voice_ms": stat("voice_to_voice_ms"),
        "load": samples[-1] if samples else None,  # the last, with totals
        "busiest_moment": busiest,
        "turns": rows,
    }


async def run(
    args: argparse.Namespace, base: str, proc: subprocess.Popen[bytes], speeches: list[np.ndarray]
) -> list[dict[str, Any]]:
    from bench.soak import wait_ready  # the same readiness poll

    await wait_ready(base, proc, 300)
    levels: list[dict[str, Any]] = []
    for n in args.levels:
        result = await level(base, n, args.stagger, speeches, args.eot)
        levels.append(result)
        print_level(result)
    return levels


def print_level(r: dict[str, Any]) -> None:
    def f(key: str) -> str:
        s = r[key]
        return f"{s['median']}/{s['max']}"

    load = r.get("load") or {}
    busiest = r.get("busiest_moment") or {}
    roles = load.get("roles", {})
    waits = {k: v.get("mean_wait_ms") for k, v in roles.items() if v.get("mean_wait_ms")}
    skipped = {k: v.get("skipped") for k, v in roles.items() if v.get("skipped")}
    print(
        f"peers {r['peers']}: completed {r['completed']}/{r['peers']}  "
        f"asr_final ms (median/max) {f('asr_final_ms')}  first_audio_ready {f('first_audio_ready_ms')}  "
        f"voice_to_voice {f('voice_to_voice_ms')}\n"
        f"   waits by role and priority (ms): {waits}\n   skipped: {skipped}  "
        f"peak utilisation: {busiest.get('utilisation')}  "
        f"capacity estimate then: {busiest.get('capacity_estimate')}"
    )


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        asyncio.run(_child(int(sys.argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peers", default="1,2,4,8")
    ap.add_argument("--stagger", type=float, default=1.0)
    ap.add_argument("--eot", default="silence", choices=("silence", "smart_turn"))
    ap.add_argument("--max-seconds", type=float, default=900)
    args = ap.parse_args()
    args.levels = [1, 2] if args.quick else [int(x) for x in args.peers.split(",")]
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is needed (apt-get install espeak-ng)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="seetalk-capacity-"))
    ref = whisper_reference(workdir)
    print(f"reference: one whisper-base pass on a 2 s question: {ref} ms")
    speeches = [speech48k(q, workdir) for q in QUESTIONS]
    port = _free_port()
    log = (workdir / "server.log").open("wb")
    cmd = [sys.executable, __file__, "--child", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        levels = asyncio.run(
            asyncio.wait_for(
                run(args, f"http://127.0.0.1:{port}", proc, speeches), args.max_seconds
            )
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"whisper_base_ms": ref, "eot": args.eot, "stagger_s": args.stagger, "levels": levels}
    out = ROOT / "bench" / "results" / "capacity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
