"""Tools seetalk runs itself: MCP servers' tools (:mod:`conversation.mcp`) and built-ins
(the current time; ``look``, a fresh camera frame's scene notes).

The model calls them like any function tool; the call is announced as a ``function_call``
item (:mod:`conversation.tools`), then :class:`ToolRuns` runs it, adds its
``function_call_output`` item to history and starts the reply that speaks the answer.

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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conversation import events as ev
from conversation import tool_items
from conversation.history import Conversation, Item
from conversation.tools import FILLER_TEXT, Filler
from llm.tools import ToolSpec

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 15.0
POLL_S = 0.02  # while waiting for the filler to finish playing before the follow-up


class ServerTool(Protocol):
    """A tool seetalk runs: ``spec`` is what the model sees; ``call`` returns the output
    text or raises. Cancelling ``call`` is safe."""

    spec: ToolSpec

    async def call(self, arguments: dict[str, Any]) -> str: ...


@dataclass
class FunctionTool:
    """A server tool made of a spec and a coroutine function."""

    spec: ToolSpec
    run: Callable[[dict[str, Any]], Awaitable[str]]

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self.run(arguments)


def time_tool(zone: str = "UTC", clock: Callable[[], float] = time.time) -> FunctionTool:
    """``get_current_time``: the date and time in ``zone`` (an IANA name)."""
    try:
        tz: dt.tzinfo = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = dt.UTC

    async def run(arguments: dict[str, Any]) -> str:
        now = dt.datetime.fromtimestamp(clock(), tz)
        return now.strftime("%A %d %B %Y, %H:%M") + f" ({zone})"

    spec = ToolSpec(
        "get_current_time",
        "The current date and time where the person is.",
        {"type": "object", "properties": {}},
    )
    return FunctionTool(spec, run)


def look_tool(describe: Callable[[], Awaitable[str]]) -> FunctionTool:
    """``look``: a fresh, sharp camera frame's scene notes (``describe`` chooses the frame)."""

    async def run(arguments: dict[str, Any]) -> str:
        return await describe()

    spec = ToolSpec(
        "look",
        "Look through the person's camera now and describe what is in view.",
        {"type": "object", "properties": {}},
    )
    return FunctionTool(spec, run)


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

    def add(self, tools: list[ServerTool]) -> None:
        for tool in tools:
            self.tools[tool.spec.name] = tool

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self.tools.values())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def after_reply(self, calls: list[dict[str, Any]]) -> None:
        """A reply ended with ``calls`` (``function_call`` items): run the server's own."""
        mine = [c for c in calls if c.get("name") in self.tools]
        if mine:
            self._task = self.host.spawn(self._run(mine))

    def cancel(self) -> None:
        """``response.cancel``: stop running tools (their outputs say they were cancelled)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self, calls: list[dict[str, Any]]) -> None:
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
                output = _result(job) or json.dumps({"error": "cancelled"})
                self._add_output(call, output)
            raise
        for call, job in zip(calls, jobs, strict=True):
            self._add_output(call, _result(job) or json.dumps({"error": "no output"}))
        if host.speech_mark() != mark:
            self.follow_ups_skipped += 1  # the person spoke: their turn gets the answer
            return
        while host.speaking():  # the filler plays to its end
            await asyncio.sleep(POLL_S)
        host.follow_up()

    async def _call(self, call: dict[str, Any]) -> str:
        name = call["name"]
        try:
            arguments = json.loads(call.get("arguments") or "{}")
            async with asyncio.timeout(self.timeout_s):
                return await self.tools[name].call(arguments)
        except TimeoutError:
            message = f"tool {name!r} did not answer within {self.timeout_s:g} s"
            self._error("tool_timeout", message)
        except Exception as exc:  # noqa: BLE001 - the failure is the output and an event
            message = f"tool {name!r} failed: {exc}"
            log.warning(message)
            self._error("tool_failed", message)
        return json.dumps({"error": message})

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

    def _add_output(self, call: dict[str, Any], output: str) -> None:
        item = Item(
            ev.new_id("item"),
            "user",
            output,
            source="text",
            kind=tool_items.OUTPUT,
            call_id=call["call_id"],
            name=call["name"],
        )
        previous = self.host.conversation.add(item)
        self.host.emit(ev.item_added(item.to_event_item(), previous))
        self.host.emit(ev.item_done(item.to_event_item(), previous))


def _result(job: asyncio.Task[str]) -> str | None:
    if job.done() and not job.cancelled() and job.exception() is None:
        return job.result()
    return None
