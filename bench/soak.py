"""Soak: what a real server holds (RSS, threads, fds, asyncio tasks) over session churn.

    .venv/bin/python bench/soak.py [--quick] [--replay] [--sessions 600] [--concurrency 4]
                                   [--long 2] [--max-seconds 240] [--malloc-arena-max N]

The server runs in a child process (this script with ``--child``: uvicorn on a free
loopback port, the real engine by default or ``conversation.replay.ReplayEngine`` with
``--replay``). The client opens and closes WebSocket sessions at ``/v1/realtime`` one after
another, and every tenth step ``--concurrency`` at once, each waiting for ``session.created``,
sending a ``session.update`` and a few audio appends, then closing; meanwhile ``--long``
sessions append 20 ms of quiet noise every 20 ms for the whole run. The child's RSS, thread
count and open fds come from /proc; its asyncio task count, Python allocator blocks and
glibc heap figures (mallinfo2) come from a file the child rewrites every half second.

Stops by itself after ``--sessions`` sessions or ``--max-seconds``, prints a table and the
growth (baseline after warm-up -> end, and the slope over the second half in MB per 100
sessions, which separates warm-up from a leak), and writes ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import json
import os
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

CHUNK_24K = 480  # 20 ms of pcm16 at 24 kHz


# --- the child: the server under test ------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, float]:
    """glibc heap figures in MB: in use (``uordblks`` + mmapped ``hblkhd``) and free
    (``fordblks``, held by the allocator but not returned to the system). Empty off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    mb = 1024 * 1024
    return {
        "heap_used_mb": (m.uordblks + m.hblkhd) / mb,
        "heap_free_mb": m.fordblks / mb,
    }


async def _child(port: int, stats: Path, replay: bool, max_sessions: int) -> None:
    import uvicorn

    from seetalk.config import ServerConfig
    from server.app import create_app

    source: Any
    if replay:
        from conversation.replay import ReplayEngine

        source = ReplayEngine()
    else:

        def source() -> Any:
            from conversation.session import Sessions
            from models.engine import Engine
            from seetalk.config import ModelConfig

            return Sessions(Engine.load(ModelConfig()))

    cfg = ServerConfig(host="127.0.0.1", port=port, max_sessions=max_sessions)
    app = create_app(source, cfg)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, ws="websockets-sansio", log_level="warning"
        )
    )

    async def report() -> None:
        tmp = stats.with_suffix(".tmp")
        while True:
            body = {
                "tasks": len(asyncio.all_tasks()),
                "py_blocks": sys.getallocatedblocks(),
                **_mallinfo(),
            }
            tmp.write_text(json.dumps(body))
            tmp.replace(stats)
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(report())
    try:
        await server.serve()
    finally:
        reporter.cancel()
        try:
            await reporter
        except asyncio.CancelledError:
            pass


# --- the parent: client load and sampling ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(pid: int, stats: Path, done: int, t0: float) -> dict[str, Any]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    row: dict[str, Any] = {
        "t_s": round(time.monotonic() - t0, 1),
        "sessions": done,
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }
    try:
        row.update(json.loads(stats.read_text()))
    except (OSError, ValueError):
        pass
    return row


def _audio_event(rng: np.random.Generator) -> str:
    pcm = (rng.standard_normal(CHUNK_24K) * 30).astype("<i2")  # quiet noise, no speech
    audio = base64.b64encode(pcm.tobytes()).decode()
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})


async def one_session(url: str, rng: np.random.Generator, appends: int = 5) -> None:
    """Open, wait for ``session.created``, update, append a little audio, close."""
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, open_timeout=60) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if first.get("type") != "session.created":
            raise RuntimeError(f"expected session.created, got {first}")
        await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "Hi."}}))
        for _ in range(appends):
            await ws.send(_audio_event(rng))


async def long_session(url: str, stop: asyncio.Event, counts: list[int]) -> None:
    """Appends 20 ms of audio every 20 ms until ``stop``; drains what the server sends."""
    from websockets.asyncio.client import connect

    rng = np.random.default_rng(1)
    async with connect(url, max_size=None, open_timeout=60) as ws:

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        try:
            next_t = time.monotonic()
            while not stop.is_set():
                await ws.send(_audio_event(rng))
                counts[0] += 1
                next_t += 0.02
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        finally:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                if not reader.cancelled():
                    raise


async def wait_ready(base: str, proc: subprocess.Popen[bytes], limit_s: float) -> None:
    import httpx

    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                if (await http.get(f"{base}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def slope_per_100(rows: list[dict[str, Any]], key: str) -> float | None:
    """Least-squares growth of ``key`` per 100 sessions over the second half of the run."""
    half = [r for r in rows[len(rows) // 2 :] if key in r]
    if len(half) < 3 or half[-1]["sessions"] == half[0]["sessions"]:
        return None
    x = np.array([r["sessions"] for r in half], float)
    y = np.array([r[key] for r in half], float)
    return float(np.polyfit(x, y, 1)[0] * 100)


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The child server process, its port and its working directory (stats, log)."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="seetalk-soak-"))
    env = dict(os.environ)
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    cmd = [sys.executable, __file__, "--child", str(port), str(workdir / "stats.json")]
    cmd += ["--max-sessions", str(args.concurrency + args.long + 4)]
    cmd += ["--replay"] if args.replay else []
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, port, workdir


async def run(
    args: argparse.Namespace, proc: subprocess.Popen[bytes], port: int, workdir: Path
) -> dict[str, Any]:
    stats = workdir / "stats.json"
    base = f"http://127.0.0.1:{port}"
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    rng = np.random.default_rng(0)
    await wait_ready(base, proc, 600)
    t0 = time.monotonic()
    rows.append({**sample(proc.pid, stats, 0, t0), "phase": "ready"})
    for _ in range(args.warmup):
        await one_session(url, rng)
    await asyncio.sleep(1.0)
    rows.append({**sample(proc.pid, stats, 0, t0), "phase": "baseline"})
    stop = asyncio.Event()
    appended = [0]
    longs = [asyncio.create_task(long_session(url, stop, appended)) for _ in range(args.long)]
    done = 0
    started = time.monotonic()
    step = 0
    try:
        while done < args.sessions and time.monotonic() - started < args.max_seconds:
            step += 1
            try:
                if step % 10 == 0:
                    batch = [one_session(url, rng) for _ in range(args.concurrency)]
                    await asyncio.gather(*batch)
                    done += args.concurrency
                else:
                    await one_session(url, rng)
                    done += 1
            except Exception as exc:  # noqa: BLE001 - a refused session is a figure too
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.2)
            if step % args.sample_every == 0:
                rows.append(sample(proc.pid, stats, done, t0))
    finally:
        stop.set()
        for result in await asyncio.gather(*longs, return_exceptions=True):
            if isinstance(result, BaseException):
                errors.append(f"long session: {type(result).__name__}: {result}"[:200])
    await asyncio.sleep(2.0)  # let the server finish closing
    rows.append({**sample(proc.pid, stats, done, t0), "phase": "end"})
    base_row = next(r for r in rows if r.get("phase") == "baseline")
    end = rows[-1]
    return {
        "engine": "replay" if args.replay else "default models",
        "malloc_arena_max": args.malloc_arena_max or None,
        "sessions": done,
        "long_sessions": args.long,
        "long_appends": appended[0],
        "seconds": end["t_s"],
        "errors": errors[:20],
        "error_count": len(errors),
        "growth": {
            key: round(end[key] - base_row[key], 1)
            for key in ("rss_mb", "threads", "fds", "tasks", "heap_used_mb", "heap_free_mb")
            if key in end and key in base_row
        },
        "slope_per_100_sessions": {
            key: None if (v := slope_per_100(rows, key)) is None else round(v, 2)
            for key in ("rss_mb", "heap_used_mb", "heap_free_mb", "py_blocks")
        },
        "server_log": str(workdir / "server.log"),
        "rows": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    cols = ["t_s", "sessions", "rss_mb", "threads", "fds", "tasks"]
    cols += ["heap_used_mb", "heap_free_mb", "py_blocks"]
    print("  ".join(f"{c:>12}" for c in cols))
    for r in report["rows"]:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:>12.1f}" if isinstance(v, float) else f"{v!s:>12}")
        print("  ".join(cells), r.get("phase", ""))
    print(
        f"{report['engine']}: {report['sessions']} sessions in {report['seconds']} s, "
        f"{report['error_count']} errors, MALLOC_ARENA_MAX={report['malloc_arena_max']}"
    )
    print("growth baseline -> end:", report["growth"])
    print("slope per 100 sessions (second half):", report["slope_per_100_sessions"])
    for e in report["errors"][:5]:
        print("  error:", e)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", nargs=2, metavar=("PORT", "STATS"), help=argparse.SUPPRESS)
    p.add_argument("--max-sessions", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--replay", action="store_true", help="ReplayEngine instead of the models")
    p.add_argument("--quick", action="store_true", help="about 30 s: 100 sessions")
    p.add_argument("--sessions", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--long", type=int, default=2, help="sessions appending audio throughout")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--sample-every", type=int, default=10, help="steps between samples")
    p.add_argument("--max-seconds", type=float, default=240.0)
    p.add_argument("--malloc-arena-max", type=int, default=0, help="MALLOC_ARENA_MAX for it")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = p.parse_args()
    if args.child:
        port, stats = int(args.child[0]), Path(args.child[1])
        asyncio.run(_child(port, stats, args.replay, args.max_sessions))
        return 0
    if args.quick:
        args.sessions, args.max_seconds = min(args.sessions, 100), min(args.max_seconds, 30.0)
        args.warmup = min(args.warmup, 10)
    proc, port, workdir = start_server(args)
    try:
        report = asyncio.run(run(args, proc, port, workdir))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print_table(report)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
