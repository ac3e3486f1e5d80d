"""Capacity: how turn latency grows with people talking at once, on the real engine.

    .venv/bin/python bench/capacity.py [--quick] [--peers 1,2,3,4,6,8] [--minutes 3]
                                       [--interval 20] [--seed 1] [--eot silence|smart_turn]
                                       [--max-seconds 3600]

The server runs in a child process (this script with ``--child``: uvicorn on a free loopback
port, the embedded default models, as ``make run``). For each level N, N aiortc peers
(``examples/webrtc_client.py``) connect, and each asks a spoken question (espeak-ng) about
every ``--interval`` seconds (0.75-1.25 of it, the first at a random offset; seeded, so runs
compare) for ``--minutes``. A peer does not talk over its own answer: its next question
waits until the answer has played. A question whose ``seetalk.turn.metrics`` has not come
within 60 s is counted unanswered.

Printed and written per level: voice-to-voice (speech end -> first reply audio out, the
server's own turn metrics) p50/p90/max, final transcript and endpoint times, answered and
unanswered questions, turns where the preemptive reply was used, each model role's busy
seconds over the level (CPU per role) and mean queue wait by priority (from ``/healthz``),
skipped background jobs, whisper decodes by encoder window and refits (from ``/metrics``),
and peers refused at connection. While the server reports
``overloaded``, one more peer tries to connect and its HTTP status (503 expected, with
``Retry-After``) is recorded. At the end: the largest N whose p90 stays within 1.5x of N=1.

Beside them, a reference figure: one whisper-base pass over about 3 s of speech in this
process before the server starts, so figures from different machines compare.

``--quick``: N = 1, 2, 4, one minute each. Writes ``bench/results/capacity.json``. Needs a
quiet machine: anything else running doubles whisper's times. The peers run in this process
on the same machine, so their media (encoding, jitter buffers) takes some of its CPU too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
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
REFERENCE = "Could you please tell me what the capital city of France is?"  # about 3 s
ANSWER_LIMIT_S = 60.0
WITHIN = 1.5  # a level "holds" while its p90 is within this factor of one peer's


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


def whisper_reference(workdir: Path) -> dict[str, float]:
    """Milliseconds of one whisper-base pass over :data:`REFERENCE` (``bench/reference.py``)."""
    from bench.reference import whisper_base_ms
    from voice.audio import load_audio_file, resample

    path = workdir / "ref.wav"
    subprocess.run(["espeak-ng", "-w", str(path), REFERENCE], check=True, capture_output=True)
    audio, rate = load_audio_file(str(path))
    audio = resample(audio, rate, 16_000)
    return {"whisper_base_ms": whisper_base_ms(audio), "speech_s": round(len(audio) / 16_000, 2)}


# --- peers ------------------------------------------------------------------------------------


def ask_times(rng: random.Random, interval: float, seconds: float) -> list[float]:
    """When one peer means to ask, from the level's start: a random first offset, then
    every 0.75-1.25 ``interval``."""
    t = rng.uniform(0.0, interval)
    out = []
    while t < seconds:
        out.append(t)
        t += interval * rng.uniform(0.75, 1.25)
    return out


async def one_peer(
    base: str, i: int, plan: list[float], speeches: list[np.ndarray], eot: str, t0: float
) -> dict[str, Any]:
    """Peer ``i`` asks at ``plan`` (seconds after ``t0``) and records each turn's metrics."""
    from examples.webrtc_client import Client

    out: dict[str, Any] = {"peer": i, "turns": []}
    c = Client(base)
    try:
        await c.connect()
    except (ConnectionError, TimeoutError) as exc:  # refused (503: over capacity) or failed
        out["refused"] = str(exc)[:200] or type(exc).__name__
        await c.close()
        return out
    try:
        if eot != "silence":
            c.send({"type": "session.update", "session": {"seetalk": {"turn": {"eot": eot}}}})
        for k, at in enumerate(plan):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            asked = time.monotonic()
            c.mic.say(speeches[(i + k) % len(speeches)])
            turn: dict[str, Any] = {"asked_s": round(asked - t0, 1)}
            try:
                ev = await c.wait_for("seetalk.turn.metrics", ANSWER_LIMIT_S, since=asked)
                turn.update(ev.get("metrics", {}))
                turn["transcribed"] = any(
                    e["_t"] >= asked
                    for e in c.of_type("conversation.item.input_audio_transcription.completed")
                )
                # Do not talk over the answer: wait until it has played.
                await c.wait_for("output_audio_buffer.stopped", ANSWER_LIMIT_S, since=asked)
            except TimeoutError:
                turn.setdefault("unanswered", "voice_to_voice_ms" not in turn)
            out["turns"].append(turn)
    finally:
        await c.close()
    return out


async def probe_offer(base: str) -> dict[str, Any]:
    """One more peer's offer while the server says it is overloaded: its status and
    ``Retry-After`` (503 expected). An admitted probe is closed at once."""
    import httpx
    from aiortc import RTCPeerConnection

    from examples.webrtc_client import SpeechSource

    pc = RTCPeerConnection()
    try:
        pc.addTrack(SpeechSource())  # an offer as a peer makes it: a microphone, the events
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(timeout=15.0) as http:
            r = await http.post(
                f"{base}/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}
            )
        return {
            "status": r.status_code,
            "retry_after": r.headers.get("retry-after"),
            "body": r.text[:200] if r.status_code != 200 else None,
        }
    finally:
        await pc.close()


# --- one level --------------------------------------------------------------------------------


def pct(vals: list[float], q: float) -> float | None:
    if not vals:
        return None
    return round(float(np.percentile(np.asarray(vals, dtype=float), q)), 1)


def role_delta(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Per role over the level: busy seconds, utilisation, mean wait by priority, skips."""
    out: dict[str, Any] = {}
    for role, a in after.items():
        b = before.get(role, {})
        busy = float(a.get("busy_s", 0.0)) - float(b.get("busy_s", 0.0))
        waits = {}
        for prio, n in (a.get("started") or {}).items():
            dn = n - (b.get("started") or {}).get(prio, 0)
            dw = (a.get("waited_s") or {}).get(prio, 0.0) - (b.get("waited_s") or {}).get(prio, 0.0)
            if dn:
                waits[prio] = round(1000 * dw / dn, 1)
        out[role] = {
            "busy_s": round(busy, 2),
            "utilisation": round(busy / max(seconds, 1e-9) / max(1, int(a.get("workers", 1))), 3),
            "mean_wait_ms": waits,
            "jobs": int(a.get("done", 0)) - int(b.get("done", 0)),
            "skipped": int(a.get("skipped", 0)) - int(b.get("skipped", 0)),
        }
    return out


async def level(
    base: str,
    n: int,
    args: argparse.Namespace,
    speeches: list[np.ndarray],
) -> dict[str, Any]:
    import httpx

    seconds = 60.0 * args.minutes
    plans = [
        ask_times(random.Random(args.seed * 1000 + n * 10 + i), args.interval, seconds)
        for i in range(n)
    ]
    probes: list[dict[str, Any]] = []
    peaks: dict[str, Any] = {"overloaded": False, "capacity_estimate": None}

    async with httpx.AsyncClient(timeout=10.0) as http:

        async def load() -> dict[str, Any]:
            return dict((await http.get(f"{base}/healthz")).json().get("load") or {})

        async def poll() -> None:  # overload verdicts; one probe peer per overloaded spell
            was = False
            while True:
                await asyncio.sleep(2.0)
                now = await load()
                over = bool(now.get("overloaded"))
                if now.get("capacity_estimate") is not None:
                    peaks["capacity_estimate"] = now["capacity_estimate"]
                if over and not was:
                    peaks["overloaded"] = True
                    probe = await probe_offer(base)
                    probe["reason"] = now.get("reason")
                    probes.append(probe)
                was = over

        async def decodes() -> dict[str, int]:  # whisper decodes by window (/metrics)
            text = (await http.get(f"{base}/metrics")).text
            return {
                f"{m[1]}:{m[2]}": int(m[3])
                for m in re.finditer(
                    r'seetalk_asr_(?:decodes|refits)_total\{role="(\w+)",\w+="(\w+)"\} (\d+)',
                    text,
                )
            }

        before = (await load()).get("roles", {})
        decodes_before = await decodes()
        t0 = time.monotonic()
        poller = asyncio.create_task(poll())
        try:
            peers = await asyncio.gather(
                *(one_peer(base, i, plans[i], speeches, args.eot, t0) for i in range(n)),
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
        elapsed = time.monotonic() - t0
        after = (await load()).get("roles", {})
        decodes_after = await decodes()
    rows = [p if isinstance(p, dict) else {"error": repr(p), "turns": []} for p in peers]
    turns = [t for r in rows for t in r["turns"]]
    answered = [t for t in turns if isinstance(t.get("voice_to_voice_ms"), (int, float))]

    def stats(key: str) -> dict[str, float | None]:
        vals = [float(t[key]) for t in answered if isinstance(t.get(key), (int, float))]
        return {"p50": pct(vals, 50), "p90": pct(vals, 90), "max": pct(vals, 100)}

    return {
        "peers": n,
        "seconds": round(elapsed, 1),
        "questions": len(turns),
        "answered": len(answered),
        "unanswered": len(turns) - len(answered),
        "refused_peers": sum(1 for r in rows if "refused" in r),
        "errors": [r["error"] for r in rows if "error" in r],
        "voice_to_voice_ms": stats("voice_to_voice_ms"),
        "asr_final_ms": stats("asr_final_ms"),
        "endpoint_ms": stats("endpoint_ms"),
        "first_audio_ready_ms": stats("first_audio_ready_ms"),
        "preemptive_turns": sum(1 for t in answered if t.get("preemptive")),
        "roles": role_delta(before, after, elapsed),
        "asr_decodes": {
            k: n - decodes_before.get(k, 0)
            for k, n in decodes_after.items()
            if n - decodes_before.get(k, 0)
        },
        "overloaded_seen": peaks["overloaded"],
        "capacity_estimate": peaks["capacity_estimate"],
        "overload_probes": probes,
        "turns": rows,
    }


def print_level(r: dict[str, Any]) -> None:
    def f(key: str) -> str:
        s = r[key]
        return f"{s['p50']}/{s['p90']}/{s['max']}"

    busy = {k: v["busy_s"] for k, v in r["roles"].items() if v["busy_s"]}
    waits = {k: v["mean_wait_ms"] for k, v in r["roles"].items() if v["mean_wait_ms"]}
    skipped = {k: v["skipped"] for k, v in r["roles"].items() if v["skipped"]}
    print(
        f"N={r['peers']}: answered {r['answered']}/{r['questions']} "
        f"(unanswered {r['unanswered']}, refused peers {r['refused_peers']}, "
        f"preemptive {r['preemptive_turns']})  ms p50/p90/max: "
        f"voice_to_voice {f('voice_to_voice_ms')}  asr_final {f('asr_final_ms')}  "
        f"endpoint {f('endpoint_ms')}\n"
        f"   busy s by role: {busy}\n   mean wait ms by role and priority: {waits}\n"
        f"   whisper decodes (role:window, role:refit reason): {r['asr_decodes']}\n"
        f"   skipped: {skipped}  overloaded seen: {r['overloaded_seen']}  "
        f"probes: {[(p['status'], p['retry_after']) for p in r['overload_probes']]}"
    )


def holds(levels: list[dict[str, Any]]) -> int | None:
    """The largest N whose voice-to-voice p90 is within :data:`WITHIN` of N=1's, with every
    question answered."""
    one = next((lv for lv in levels if lv["peers"] == 1), None)
    base = one["voice_to_voice_ms"]["p90"] if one else None
    if not base:
        return None
    ok = [
        lv["peers"]
        for lv in levels
        if lv["voice_to_voice_ms"]["p90"] is not None
        and lv["voice_to_voice_ms"]["p90"] <= WITHIN * base
        and lv["unanswered"] == 0
    ]
    return max(ok, default=None)


async def run(
    args: argparse.Namespace, base: str, proc: subprocess.Popen[bytes], speeches: list[np.ndarray]
) -> list[dict[str, Any]]:
    from bench.soak import wait_ready  # the same readiness poll

    await wait_ready(base, proc, 300)
    levels: list[dict[str, Any]] = []
    for n in args.levels:
        result = await level(base, n, args, speeches)
        levels.append(result)
        print_level(result)
        await asyncio.sleep(5.0)  # sessions close; the load window empties
    return levels


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        asyncio.run(_child(int(sys.argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1, 2, 4, one minute each")
    ap.add_argument("--peers", default="1,2,3,4,6,8")
    ap.add_argument("--minutes", type=float, default=3.0, help="per level")
    ap.add_argument("--interval", type=float, default=20.0, help="seconds between questions")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eot", default="silence", choices=("silence", "smart_turn"))
    ap.add_argument("--max-seconds", type=float, default=3600)
    args = ap.parse_args()
    if args.quick:
        args.levels, args.minutes = [1, 2, 4], 1.0
    else:
        args.levels = [int(x) for x in args.peers.split(",")]
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is needed (apt-get install espeak-ng)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="seetalk-capacity-"))
    ref = whisper_reference(workdir)
    load_avg = round(os.getloadavg()[0], 2)
    print(
        f"reference: one whisper-base pass over {ref['speech_s']} s of speech: "
        f"{ref['whisper_base_ms']} ms (load average {load_avg}, {os.cpu_count()} cores)"
    )
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
    best = holds(levels)
    one = levels[0]["voice_to_voice_ms"]["p90"] if levels else None
    print(f"largest N with p90 within {WITHIN}x of N=1 ({one} ms) and all answered: {best}")
    report = {
        **ref,
        "load_average_at_start": load_avg,
        "cores": os.cpu_count(),
        "eot": args.eot,
        "minutes": args.minutes,
        "interval_s": args.interval,
        "seed": args.seed,
        "largest_n_within_1_5x": best,
        "levels": levels,
    }
    out = ROOT / "bench" / "results" / "capacity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
