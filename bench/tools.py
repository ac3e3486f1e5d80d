"""Tool-call latency: a spoken question that needs one tool call, on the default models.

    .venv/bin/python bench/tools.py [--runs 3] [--slow-s 3] [--json bench/results/tools.json]

Each turn is a real session (VAD, whisper base, SmolLM2-135M, piper) fed an espeak-ng
question in real time (20 ms steps; the wall clock paces the input, the models take the
time they take). The tool is a local MCP server over stdio (the SDK's FastMCP, started by
:class:`conversation.mcp.McpServer`) that answers at once; the session's ``tool_choice`` is
``required`` so the small model calls it (grammar-constrained), then seetalk runs it and
speaks the answer. Times, from the end of the person's speech (the last voiced input
sample):

- ``model_to_call_ms``: to ``response.function_call_arguments.done`` (endpointing, the
  final transcript and the model writing the call);
- ``tool_ms``: from the call to its ``function_call_output`` in history;
- ``call_to_speech_ms``: from the output to the first audio of the spoken answer
  (``output_audio_buffer.started``);
- ``voice_to_voice_ms``: end of speech to that first audio; beside it the plain turn's
  (the same question, no tools).

A slow tool (``--slow-s`` seconds) measures the filler: call -> "One moment." starts
(``filler_ms``, set at 1 s) and output -> the answer's first audio. Printed with one
whisper-base pass over 3 s of speech as the machine's reference figure; written to
``bench/results/tools.json``. The MCP server can be replaced by the ``time`` built-in
(``--builtin``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference import espeak16k  # noqa: E402
from conversation.mcp import McpServer, python_command  # noqa: E402
from conversation.protocol import parse_client_object  # noqa: E402
from conversation.server_tools import ServerTool, time_tool  # noqa: E402
from conversation.session import Session  # noqa: E402
from models.engine import Engine  # noqa: E402
from seetalk.clock import MonotonicClock  # noqa: E402
from seetalk.config import SessionSettings  # noqa: E402

RATE = 16_000
STEP_S = 0.02
QUESTION = "What time is it in Paris right now?"
SLOW_QUESTION = "When is the Louvre open today?"
SERVER = textwrap.dedent(
    '''
    import asyncio
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("clock")

    @app.tool()
    def get_time(city: str) -> str:
        """The local time in a city."""
        return f"It is 10:15 in {city}."

    @app.tool()
    async def louvre_opening_hours() -> str:
        """Today's opening hours of the Louvre (a lookup that takes a while)."""
        await asyncio.sleep(float(__import__("os").environ.get("SLOW_S", "3")))
        return "The Louvre is open from 9 to 18 today."

    if __name__ == "__main__":
        app.run()
    '''
)
CALLED = ("response.function_call_arguments.done", "response.mcp_call_arguments.done")


def last_voiced_s(audio: np.ndarray, level: float = 0.01) -> float:
    frame = RATE // 100
    n = audio.size // frame
    energy = np.abs(audio[: n * frame].reshape(n, frame)).mean(axis=1)
    return float((np.flatnonzero(energy > level)[-1] + 1) / 100)


def is_output(e: dict[str, Any]) -> bool:
    item = e.get("item") or {}
    if e["type"] != "conversation.item.done":
        return False
    return item.get("type") == "function_call_output" or (
        item.get("type") == "mcp_call" and (item.get("output") or item.get("error")) is not None
    )


async def turn(
    engine: Engine, question: np.ndarray, tools: list[ServerTool], *, tail_s: float = 90.0
) -> dict[str, Any]:
    """One spoken turn in real time; returns the stamped events (seconds from the start)
    and where the person's speech ended."""
    audio = np.concatenate([np.zeros(RATE, np.float32), question, np.zeros(RATE, np.float32)])
    session = Session(engine, SessionSettings(), clock=MonotonicClock())
    session.add_server_tools(tools)
    loop = asyncio.get_running_loop()
    stamped: list[tuple[float, dict[str, Any]]] = []
    await session.start()
    if tools:
        update = {"type": "session.update", "session": {"tool_choice": "required"}}
        await session.handle_client_event(parse_client_object(update))
    t0 = loop.time()

    async def collect() -> None:
        while True:
            event = await session.events.get()
            stamped.append((loop.time() - t0, event))

    collector = asyncio.create_task(collect())
    n_in, n_out = round(RATE * STEP_S), round(session.settings.output_rate * STEP_S)
    try:
        k = 0
        while k * STEP_S < audio.size / RATE + tail_s:
            chunk = audio[k * n_in : (k + 1) * n_in]
            if chunk.size < n_in:
                chunk = np.concatenate([chunk, np.zeros(n_in - chunk.size, np.float32)])
            await session.feed_audio(chunk, RATE, 1)
            session.audio_out.pull(n_out)
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * STEP_S - loop.time()))
            if finished(stamped, bool(tools)) and session.quiet:
                break
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await session.aclose()
    return {"end": 1.0 + last_voiced_s(question), "events": stamped}


def finished(stamped: list[tuple[float, dict[str, Any]]], tools: bool) -> bool:
    """The answer has been spoken: a completed response after the tool's output (or, for a
    plain turn, any completed response) and its audio stopped."""
    seen_output = not tools
    for _, e in stamped:
        seen_output = seen_output or is_output(e)
        if seen_output and e["type"] == "output_audio_buffer.stopped":
            return True
    return False


def split(run: dict[str, Any]) -> dict[str, float | None]:
    end, events = run["end"], run["events"]

    def first(pred: Any, after: float = 0.0) -> float | None:
        return next((t for t, e in events if t >= after and pred(e)), None)

    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 1)

    started = lambda e: e["type"] == "output_audio_buffer.started"  # noqa: E731
    call = first(lambda e: e["type"] in CALLED)
    output = first(is_output)
    if call is None:  # a plain turn (or a tool turn whose call never came)
        return {"voice_to_voice_ms": ms(end, first(started)), **missing(run, started)}
    filler = first(started, call)
    answer = first(started, output) if output is not None else None
    if filler is not None and answer is not None and filler >= answer:
        filler = None  # the first audio after the call is the answer: no filler
    out = {
        "model_to_call_ms": ms(end, call),
        "tool_ms": ms(call, output),
        "call_to_speech_ms": ms(output, answer),
        "voice_to_voice_ms": ms(end, answer),
        "filler_ms": ms(call, filler),
    }
    return {**out, **(missing(run, started) if answer is None else {})}


def missing(run: dict[str, Any], started: Any) -> dict[str, Any]:
    """What happened, for a turn that was not answered in time (kept in the JSON)."""
    if any(started(e) for _, e in run["events"]):
        return {}
    return {"events": [f"{t:.2f} {e['type']}" for t, e in run["events"]][-40:]}


def whisper_reference(speech: np.ndarray) -> float:
    """One whisper-base pass over 3 s of speech (ms, ``bench/reference.py``): the machine's
    speed, printed beside the timings."""
    from bench.reference import whisper_base_ms

    return whisper_base_ms(speech)


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 1) if vals else None


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--slow-s", type=float, default=3.0)
    p.add_argument("--builtin", action="store_true", help="the time built-in instead of MCP")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "tools.json"))
    args = p.parse_args()
    t0 = time.perf_counter()
    engine = await asyncio.to_thread(Engine.load)
    print(f"models loaded in {time.perf_counter() - t0:.1f} s")
    question, slow_question = espeak16k(QUESTION), espeak16k(SLOW_QUESTION)
    reference_ms = whisper_reference(question)

    import os

    os.environ["SLOW_S"] = str(args.slow_s)
    server: McpServer | None = None
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "clock_server.py"
        script.write_text(SERVER)
        if args.builtin:
            fast: list[ServerTool] = [time_tool("Europe/Paris")]
            slow: list[ServerTool] = []
            kind = "time built-in"
        else:
            server = McpServer("clock", python_command(str(script)))
            listed = await server.start()
            fast = [t for t in listed if t.spec.name.endswith("get_time")]
            slow = [t for t in listed if t.spec.name.endswith("louvre_opening_hours")]
            kind = "local MCP server over stdio (FastMCP)"
        try:
            plain, tooled, slowed = [], [], []
            for i in range(args.runs):
                plain.append(split(await turn(engine, question, [])))
                tooled.append(split(await turn(engine, question, list(fast))))
                if slow:
                    slowed.append(split(await turn(engine, slow_question, list(slow))))
                print(f"  run {i + 1}: plain {plain[-1]} | tool {tooled[-1]}")
                if slow:
                    print(f"         slow tool {slowed[-1]}")
        finally:
            if server is not None:
                await server.aclose()
    await engine.aclose()

    summary = {
        "tool": kind,
        "runs": args.runs,
        "reference_whisper_base_3s_ms": reference_ms,
        "plain_voice_to_voice_ms": median(plain, "voice_to_voice_ms"),
        "tool_voice_to_voice_ms": median(tooled, "voice_to_voice_ms"),
        "model_to_call_ms": median(tooled, "model_to_call_ms"),
        "tool_ms": median(tooled, "tool_ms"),
        "call_to_speech_ms": median(tooled, "call_to_speech_ms"),
        "fast_tool_fillers": sum(1 for r in tooled if r.get("filler_ms") is not None),
        "slow_tool_s": args.slow_s if slow else None,
        "slow_filler_ms": median(slowed, "filler_ms"),
        "slow_tool_ms": median(slowed, "tool_ms"),
        "slow_call_to_speech_ms": median(slowed, "call_to_speech_ms"),
    }
    print(f"\nmedians over {args.runs} runs (ms); tool: {kind}")
    print(f"  reference: one whisper-base pass over 3 s of speech  {reference_ms}")
    print(
        f"  plain turn, end of speech -> first audio              {summary['plain_voice_to_voice_ms']}"
    )
    print(
        f"  tool turn,  end of speech -> first audio              {summary['tool_voice_to_voice_ms']}"
    )
    print(f"    model to call (endpoint, ASR, the call written)     {summary['model_to_call_ms']}")
    print(f"    tool (call -> output in history)                    {summary['tool_ms']}")
    print(f"    call to speech (output -> first audio)              {summary['call_to_speech_ms']}")
    print(f"  fillers said for the fast tool                        {summary['fast_tool_fillers']}")
    if slow:
        print(
            f"  slow tool ({args.slow_s:g} s): call -> filler audio          {summary['slow_filler_ms']}"
        )
        print(f"    call -> output                                      {summary['slow_tool_ms']}")
        print(
            f"    output -> answer's first audio                      {summary['slow_call_to_speech_ms']}"
        )
    report = {"summary": summary, "plain": plain, "tool": tooled, "slow_tool": slowed}
    print("wrote", await asyncio.to_thread(_write, Path(args.json), report))
    return 0


def _write(path: Path, report: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
