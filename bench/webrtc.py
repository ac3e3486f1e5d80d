"""WebRTC benchmark: latency as the aiortc client hears it, and media-path capacity.

    .venv/bin/python bench/webrtc.py [--turns 5] [--capacity 1,5,10,20] [--seconds 10]
                                     [--skip-latency] [--skip-capacity]

1. Latency (real server, default models): the client speaks an espeak-ng question; voice-to-
   voice = end of its speech -> first audible reply audio received; then, one second into the
   reply, it speaks again; barge-in stop = onset of that speech -> reply audio silent (5 quiet
   frames). Median and p90 over ``--turns`` turns.
2. Capacity (the model stages replaced by the recorded-reply replayer, conversation/replay.py, so it
   measures the media path alone): N concurrent clients, each sending microphone audio (a
   speech-like burst every 4 s, answered with recorded audio) and 640x480 15 fps VP8 camera
   video (pre-encoded once so the clients stay cheap). Reports server CPU per session, and
   whether media stayed real time (outgoing audio at 50 frames/s with no schedule restarts,
   incoming camera at >= 90% of 15 fps, reply audio received at >= 95% of 50 frames/s).

The server runs in a child process so its CPU is its own. Figures print and go to
bench/results/webrtc-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
import webrtc_client as wc  # noqa: E402

SERVER_CODE = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from seetalk.config import ServerConfig
from server.app import create_app
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "replay":
    from conversation.replay import ReplayEngine
    engine = ReplayEngine(silence_frames=15)
else:
    from conversation.session import Sessions
    from models.engine import Engine
    engine = lambda: Sessions(Engine.load())
app = create_app(engine, ServerConfig(port=port, max_sessions=64), realtime_ws=False)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    def __init__(self, kind: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = SERVER_CODE.format(root=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", code, kind, str(self.port)])

    async def ready(self, limit_s: float = 120.0) -> None:
        deadline = time.monotonic() + limit_s
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("the server exited")
                try:
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError("server not ready")

    async def sessions(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{self.url}/sessions")).json()["sessions"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median_ms": None, "p90_ms": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values)),
        "p90_ms": round(p90),
        "min_ms": round(ordered[0]),
        "max_ms": round(ordered[-1]),
    }


def espeak(text: str, d: Path) -> np.ndarray:
    path = d / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return wc.load_audio(str(path))


# --- latency --------------------------------------------------------------------------------


async def latency(turns: int) -> dict[str, Any]:
    server = ServerProcess("models")
    v2v: list[float] = []
    stop: list[float] = []
    try:
        await server.ready()
        tmp = Path(tempfile.mkdtemp())
        questions = [
            "What is the capital of France?",
            "Tell me about the moon.",
            "What do cats like to eat?",
            "Why is the sky blue?",
            "What is your favourite colour?",
            "How do trains work?",
        ]
        interrupt = espeak("Wait, stop please.", tmp)
        async with wc.Client(server.url) as client:
            client.send(
                {
                    "type": "session.update",
                    "session": {"instructions": "Answer in three or four full sentences."},
                }
            )
            for i in range(turns):
                q = espeak(questions[i % len(questions)], tmp)
                t = time.monotonic()
                client.mic.say(q)
                await client.wait_for("output_audio_buffer.started", 90, since=t)
                end = client.mic.speech_ended_at
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    heard = client.recorder.first_loud_after(end) if end else None
                    if heard is not None:
                        break
                    await asyncio.sleep(0.02)
                if end is not None and heard is not None:
                    v2v.append(1000 * (heard - end))
                await asyncio.sleep(1.0)
                t = time.monotonic()
                client.mic.say(interrupt)
                try:
                    await client.wait_for("response.done", 30, since=t)
                except TimeoutError:
                    pass
                onset = client.mic.speech_started_at
                await asyncio.sleep(1.0)
                quiet = client.recorder.silent_from(onset) if onset else None
                if onset is not None and quiet is not None:
                    stop.append(1000 * (quiet - onset))
                # let the reply to the interruption finish or cancel it, then go on
                client.send({"type": "response.cancel"})
                await asyncio.sleep(2.0)
                print(
                    f"  turn {i + 1}: voice-to-voice {v2v[-1] if v2v else float('nan'):.0f} ms,"
                    f" barge-in stop {stop[-1] if stop else float('nan'):.0f} ms",
                    flush=True,
                )
    finally:
        server.stop()
    return {"voice_to_voice": summary(v2v), "barge_in_stop": summary(stop)}


# --- capacity -------------------------------------------------------------------------------


async def talk(client: wc.Client, burst: np.ndarray, seconds: float, offset: float) -> None:
    await asyncio.sleep(offset)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.mic.say(burst)
        await asyncio.sleep(4.0)


async def capacity(n: int, seconds: float, packets: list[av.Packet]) -> dict[str, Any]:
    server = ServerProcess("replay")
    try:
        await server.ready()
        rng = np.random.default_rng(0)
        burst = (rng.standard_normal(int(0.6 * 48_000)) * 6000).astype(np.int16)
        clients = [wc.Client(server.url) for _ in range(n)]
        for c in clients:
            c.camera = wc.PacketCamera(packets)
            await c.connect()
        await asyncio.sleep(2.0)  # settle: ICE, first keyframes
        before = {s["session_id"]: s for s in await server.sessions()}
        rec0 = [len(c.recorder.levels) for c in clients]
        cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        await asyncio.gather(*(talk(c, burst, seconds, i * 4.0 / n) for i, c in enumerate(clients)))
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(server.proc.pid) - cpu0
        after = {s["session_id"]: s for s in await server.sessions()}
        received = [
            (len(c.recorder.levels) - r0) / elapsed for c, r0 in zip(clients, rec0, strict=True)
        ]
        replies = sum(len(c.of_type("response.created")) for c in clients)
        for c in clients:
            await c.close()
    finally:
        server.stop()
    out_rate, video_rate, resyncs = [], [], 0
    for sid, s in after.items():
        b = before.get(sid, {})
        out_rate.append((s["audio_frames_out"] - b.get("audio_frames_out", 0)) / elapsed)
        video_rate.append((s.get("video_frames_in", 0) - b.get("video_frames_in", 0)) / elapsed)
        resyncs += s["audio_resyncs"] - b.get("audio_resyncs", 0)
    realtime = (
        min(out_rate, default=0) >= 48
        and resyncs == 0
        and min(video_rate, default=0) >= 13.5
        and min(received, default=0) >= 47.5
    )
    return {
        "sessions": n,
        "seconds": round(elapsed, 1),
        "server_cpu_percent_of_core": round(100 * cpu / elapsed, 1),
        "server_cpu_percent_per_session": round(100 * cpu / elapsed / n, 2),
        "sessions_per_core_at_this_cost": round(n / (cpu / elapsed), 1) if cpu else None,
        "audio_out_fps_min": round(min(out_rate, default=0), 1),
        "audio_schedule_restarts": resyncs,
        "video_in_fps_min": round(min(video_rate, default=0), 1),
        "audio_received_fps_min": round(min(received, default=0), 1),
        "replies": replies,
        "real_time_held": realtime,
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--capacity", default="1,5,10,20")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-capacity", action="store_true")
    args = p.parse_args()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}
    }
    if not args.skip_latency:
        print(f"latency: real server on the default models, {args.turns} turns, aiortc client")
        results["latency"] = await latency(args.turns)
        for name, s in results["latency"].items():
            print(f"  {name}: median {s['median_ms']} ms, p90 {s['p90_ms']} ms (n={s['n']})")
    if not args.skip_capacity:
        print(
            "capacity: MODEL STAGES REPLACED BY A RECORDED-REPLY REPLAYER (conversation/replay.py); "
            "this measures the media path alone. Each client: mic + 640x480 15 fps VP8."
        )
        packets = wc.encode_camera()
        results["capacity"] = []
        for n in [int(x) for x in args.capacity.split(",")]:
            r = await capacity(n, args.seconds, packets)
            results["capacity"].append(r)
            print(
                f"  N={n:>2}: server {r['server_cpu_percent_of_core']:5.1f}% of a core, "
                f"{r['server_cpu_percent_per_session']:5.2f}%/session "
                f"(~{r['sessions_per_core_at_this_cost']} sessions/core), audio out "
                f">={r['audio_out_fps_min']} fps, video in >={r['video_in_fps_min']} fps, "
                f"received >={r['audio_received_fps_min']} fps, restarts "
                f"{r['audio_schedule_restarts']}: real time "
                f"{'HELD' if r['real_time_held'] else 'NOT held'}",
                flush=True,
            )
        print("  target: 10 or more voice + video sessions per core on the media path")
    results["load_avg_at_end"] = os.getloadavg()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"webrtc-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    asyncio.run(main())
