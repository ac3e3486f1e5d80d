"""Tools seetalk runs itself: MCP servers' tools (:mod:`conversation.mcp`) and built-ins
a deployment switches on (``--tools time,look``: :func:`builtin_tools`; the current time
in the session's zone; ``look``, a fresh sharp camera frame's scene notes, or the frame
itself for a vision-language model).

The model calls them like any function tool; the call is announced as a ``function_call``
item (:mod:`conversation.tools`), then :class:`ToolRuns` runs it, adds its
``function_call_output`` item to history and starts the reply that speaks the answer. A call
to an MCP server's tool is an ``mcp_call`` item instead (:class:`McpCalls`, implemented by
:class:`conversation.mcp.SessionMcp`): the item gets its output or error, and its
response's ``response.done`` waits for it.

Voice behaviour, decided by the pure :class:`~conversation.tools.Filler` on the session's
clock: when no output has come :data:`~conversation.tools.FILLER_AFTER_S` after the call,
the assistant says "One moment." once, never more. A tool that fails or runs past
``timeout_s`` gives an output that says so and an ``error`` event (``tool_failed``,
``tool_timeout``); the session goes on. If the person speaks while a tool runs, the tool
still finishes (a finished action is never forgotten nor run twice) and its output enters
history, but the reply that would have followed is not started: the person's new turn gets
the answer. ``response.cancel`` cancels running tools; their outputs say so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conversation import events as ev
from conversation import tool_items
from conversation.history import Conversation, Item
from conversation.tools import FILLER_TEXT, Filler
from llm.tools import ToolSpec
from models.engine import Engine
from models.scheduler import Priority
from vision.frames import FrameIntake
from vision.select import SHARPEST_AT_END

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 15.0
POLL_S = 0.02  # while waiting for the filler to finish playing before the follow-up


class ServerTool(Protocol):
    """A tool seetalk runs: ``spec`` is what the model sees; ``call`` returns the output
    text (or a :class:`ToolOutput` with images) or raises. Cancelling ``call`` is safe."""

    spec: ToolSpec

    async def call(self, arguments: dict[str, Any]) -> str | ToolOutput: ...


@dataclass(frozen=True)
class ToolOutput:
    """A tool's output with pictures: ``text`` is the ``function_call_output``; ``images``
    (JPEG) follow it in history as a user item, so a vision-language model sees them."""

    text: str
    images: tuple[bytes, ...] = ()


@dataclass
class FunctionTool:
    """A server tool made of a spec and a coroutine function."""

    spec: ToolSpec
    run: Callable[[dict[str, Any]], Awaitable[str | ToolOutput]]

    async def call(self, arguments: dict[str, Any]) -> str | ToolOutput:
        return await self.run(arguments)


# --- built-ins (``seetalk serve --tools time,look``) ----------------------------------------

LOOK_WINDOW_S = 1.0  # look chooses the sharpest frame of the camera's last second
NO_CAMERA = "The camera is off: there is nothing to see."


def time_tool(
    zone: str | Callable[[], str] = "UTC", clock: Callable[[], float] = time.time
) -> FunctionTool:
    """``get_current_time``: the date and time in ``zone`` (an IANA name, or a callable
    that gives the session's zone at the time of the call)."""

    async def run(arguments: dict[str, Any]) -> str:
        name = zone() if callable(zone) else zone
        try:
            tz: dt.tzinfo = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            name, tz = "UTC", dt.UTC
        now = dt.datetime.fromtimestamp(clock(), tz)
        return now.strftime("%A %d %B %Y, %H:%M") + f" ({name})"

    spec = ToolSpec(
        "get_current_time",
        "The current date and time where the person is.",
        {"type": "object", "properties": {}},
    )
    return FunctionTool(spec, run)


def look_tool(describe: Callable[[], Awaitable[str | ToolOutput]]) -> FunctionTool:
    """``look``: a fresh, sharp camera frame's scene notes, or the frame itself for a
    vision-language model (``describe`` takes and reads the frame: :func:`look_now`)."""

    async def run(arguments: dict[str, Any]) -> str | ToolOutput:
        return await describe()

    spec = ToolSpec(
        "look",
        "Look through the person's camera now and describe what is in view.",
        {"type": "object", "properties": {}},
    )
    return FunctionTool(spec, run)


async def look_now(frames: FrameIntake, now: float, engine: Engine, session_id: str) -> ToolOutput:
    """The ``look`` tool's work for one session: the sharpest frame of the camera's last
    :data:`LOOK_WINDOW_S` (vision/select.py), then its scene notes (vision/scene.py) for a
    text-only model, or the frame itself for one that sees images. Frame choice and notes
    run on the vision role's scheduler, never on the event loop."""
    loop = asyncio.get_running_loop()
    vision = engine.vision_executor
    selection = await loop.run_in_executor(
        vision.lane(session_id, Priority.FIRST, kind="frames"),
        frames.select,
        now - LOOK_WINDOW_S,
        now,
    )
    sharp = [f for f in selection.frames if f.reason == SHARPEST_AT_END] or selection.frames
    if not sharp:
        return ToolOutput(NO_CAMERA)
    jpeg = sharp[-1].jpeg
    if engine.backend.supports_images:
        return ToolOutput("Here is the camera view now (the image that follows).", (jpeg,))
    if engine.vision is None:
        return ToolOutput("A camera frame was taken, but no scene describer is loaded.")
    notes = await loop.run_in_executor(
        vision.lane(session_id, Priority.FIRST, kind="scene"), engine.vision.describe, [jpeg]
    )
    return ToolOutput(notes or "Nothing recognisable is in view.")


def builtin_tools(
    names: Sequence[str],
    *,
    zone: Callable[[], str],
    look: Callable[[], Awaitable[str | ToolOutput]],
) -> list[ServerTool]:
    """The built-ins a deployment switched on (``time``, ``look``), for one session."""
    made: dict[str, ServerTool] = {"time": time_tool(zone), "look": look_tool(look)}
    return [made[n] for n in names]


class McpCalls(Protocol):
    """The session's ``mcp_call`` items (conversation/mcp.py): the tool one runs, and where
    its result goes (the item's ``output`` or ``error``, and its events)."""

    def tool(self, call: dict[str, Any]) -> ServerTool: ...

    def call_done(self, call: dict[str, Any], output: str, error: str | None) -> None: ...


class _Failed(str):
    """A failed call's output (JSON ``{"error": ...}``); ``message`` says why."""

    message: str


@dataclass
class ToolHost:
    """What :class:`ToolRuns` needs of its session (callables, so no import of it)."""

    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    emit: Callable[[dict[str, Any]], None]
    now: Callable[[], float]
    conversation: Conversation
    speech_mark: Callable[[], object]  # changes when the person starts speaking
    speaking: Callable[[], bool]  # a reply is playing
    say: Callable[[str], None]  # speak a fixed line as a reply
    follow_up: Callable[[], None]  # start the reply that speaks the tools' outputs


class ToolRuns:
    """Runs the server tools a reply called; see the module doc."""

    def __init__(
        self, host: ToolHost, *, timeout_s: float = TOOL_TIMEOUT_S, filler_after_s: float = 1.0
    ) -> None:
        self.host = host
        self.timeout_s = timeout_s
        self.filler_after_s = filler_after_s
        self.tools: dict[str, ServerTool] = {}
        self.fillers_said = 0
        self.follow_ups_skipped = 0  # the person spoke while a tool ran
        self._task: asyncio.Task[None] | None = None
        self.mcp: McpCalls | None = None  # the session's MCP calls (conversation/mcp.py)

    def add(self, tools: list[ServerTool]) -> None:
        for tool in tools:
            self.tools[tool.spec.name] = tool

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self.tools.values())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def after_reply(
        self, calls: list[dict[str, Any]], finish: Callable[[], None] | None = None
    ) -> None:
        """A reply ended with ``calls`` (``function_call`` and ``mcp_call`` items): run the
        server's own. ``finish`` (the reply's ``response.done``) is called at once, or, when
        ``mcp_call`` items run, once they have ended (they are part of the response)."""
        mine = [
            c
            for c in calls
            if c.get("type") == tool_items.MCP_CALL
            or (c.get("type", tool_items.CALL) == tool_items.CALL and c.get("name") in self.tools)
        ]
        mcp = any(c.get("type") == tool_items.MCP_CALL for c in mine)
        if finish is not None and not mcp:
            finish()
        if mine:
            self._task = self.host.spawn(self._run(mine, finish if mcp else None))

    def cancel(self) -> None:
        """``response.cancel``: stop running tools (their outputs say they were cancelled)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(
        self, calls: list[dict[str, Any]], finish: Callable[[], None] | None = None
    ) -> None:
        host = self.host
        mark = host.speech_mark()
        filler = Filler(after_s=self.filler_after_s)
        filler.start(host.now())
        jobs = [host.spawn(self._call(c)) for c in calls]
        try:
            pending = set(jobs)
            while pending:
                deadline = filler.deadline
                wait = None if deadline is None else max(0.0, deadline - host.now())
                _, pending = await asyncio.wait(pending, timeout=wait)
                if pending and filler.due(host.now()) and host.speech_mark() == mark:
                    self.fillers_said += 1
                    host.say(FILLER_TEXT)
            filler.answered()
        except asyncio.CancelledError:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            for call, job in zip(calls, jobs, strict=True):
                self._add_output(call, _result(job) or _failed("cancelled"))
            if finish is not None:
                finish()
            raise
        for call, job in zip(calls, jobs, strict=True):
            self._add_output(call, _result(job) or _failed("no output"))
        if finish is not None:
            finish()
        if host.speech_mark() != mark:
            self.follow_ups_skipped += 1  # the person spoke: their turn gets the answer
            return
        while host.speaking():  # the filler plays to its end
            await asyncio.sleep(POLL_S)
        host.follow_up()

    async def _call(self, call: dict[str, Any]) -> str | ToolOutput:
        name = call["name"]
        try:
            arguments = json.loads(call.get("arguments") or "{}")
            mcp = self.mcp if call.get("type") == tool_items.MCP_CALL else None
            tool = self.tools[name] if mcp is None else mcp.tool(call)
            async with asyncio.timeout(self.timeout_s):
                return await tool.call(arguments)
        except TimeoutError:
            message = f"tool {name!r} did not answer within {self.timeout_s:g} s"
            self._error("tool_timeout", message)
        except Exception as exc:  # noqa: BLE001 - the failure is the output and an event
            message = f"tool {name!r} failed: {exc}"
            log.warning(message)
            self._error("tool_failed", message)
        return _failed(message)

    def _error(self, code: str, message: str) -> None:
        self.host.emit(
            ev.error(
                {
                    "type": "server_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": None,
                }
            )
        )

    def _add_output(self, call: dict[str, Any], output: str | ToolOutput) -> None:
        out = output if isinstance(output, ToolOutput) else ToolOutput(output)
        if call.get("type") == tool_items.MCP_CALL and self.mcp is not None:
            failed = output.message if isinstance(output, _Failed) else None
            self.mcp.call_done(call, out.text, failed)  # the item holds its output
            return
        item = Item(
            ev.new_id("item"),
            "user",
            out.text,
            source="text",
            kind=tool_items.OUTPUT,
            call_id=call["call_id"],
            name=call["name"],
        )
        items = [item]
        if out.images:  # what the tool saw, for a model that sees images
            text = f"(the image from {call['name']})"
            items.append(Item(ev.new_id("item"), "user", text, images=out.images, source="text"))
        for it in items:
            previous = self.host.conversation.add(it)
            self.host.emit(ev.item_added(it.to_event_item(), previous))
            self.host.emit(ev.item_done(it.to_event_item(), previous))


def _result(job: asyncio.Task[str | ToolOutput]) -> str | ToolOutput | None:
    if job.done() and not job.cancelled() and job.exception() is None:
        return job.result()
    return None


def _failed(message: str) -> _Failed:
    out = _Failed(json.dumps({"error": message}))
    out.message = message
    return out
