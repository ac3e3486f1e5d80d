"""MCP servers as server tools, with the official ``mcp`` SDK (stdio transport).

:class:`McpServer` starts one server process (``--mcp NAME=COMMAND``), lists its tools
(each becomes a :class:`~conversation.server_tools.ServerTool` named ``NAME__tool`` unless
``prefix`` is off) and calls them. The SDK's client lives in one task owned by this object
(its context managers must open and close in the same task); calls come from any task of
the same loop. ``allowed_tools`` limits what the model may call.

Listing reports ``mcp_list_tools.in_progress`` / ``.completed`` / ``.failed`` through
``emit`` (when given), as the protocol's MCP tool does.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conversation import events as ev
from llm.tools import ToolSpec
from seetalk.errors import ConfigError, SeetalkError

START_TIMEOUT_S = 30.0


class McpError(SeetalkError):
    type = "server_error"
    code = "mcp_error"


@dataclass
class McpTool:
    """One tool of an MCP server, as a server tool."""

    spec: ToolSpec
    server: McpServer
    remote_name: str

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self.server.call(self.remote_name, arguments)


def parse_mcp_flag(value: str) -> tuple[str, list[str]]:
    """``NAME=COMMAND ARGS...`` -> ``(NAME, argv)``; :class:`ConfigError` if malformed."""
    name, sep, command = value.partition("=")
    argv = shlex.split(command)
    if not sep or not name.strip() or not argv:
        raise ConfigError(f"--mcp takes NAME=COMMAND, got {value!r}", param="mcp")
    return name.strip(), argv


class McpServer:
    """One MCP server over stdio. ``await start()``, then :attr:`tools`; ``aclose()``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        allowed_tools: tuple[str, ...] | None = None,
        prefix: bool = True,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.allowed_tools = allowed_tools
        self.prefix = prefix
        self.emit = emit or (lambda e: None)
        self.tools: list[McpTool] = []
        self._session: Any = None
        self._ready: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    async def start(self) -> list[McpTool]:
        """Start the process, initialize, list the tools. Raises :class:`McpError`."""
        item_id = ev.new_id("mcpl")
        self.emit(
            {
                "type": "mcp_list_tools.in_progress",
                "event_id": ev.new_id("event"),
                "item_id": item_id,
            }
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._owner = asyncio.get_running_loop().create_task(self._own())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
            listed = await self._session.list_tools()
        except BaseException as exc:
            await self.aclose()
            self.emit(
                {
                    "type": "mcp_list_tools.failed",
                    "event_id": ev.new_id("event"),
                    "item_id": item_id,
                }
            )
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise McpError(f"MCP server {self.name!r} did not start: {exc!r}") from exc
        for tool in listed.tools:
            if self.allowed_tools is not None and tool.name not in self.allowed_tools:
                continue
            schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None)
            params = dict(schema or {"type": "object", "properties": {}})
            params.pop("title", None)
            name = f"{self.name}__{tool.name}" if self.prefix else tool.name
            self.tools.append(
                McpTool(ToolSpec(name, tool.description or "", params), self, tool.name)
            )
        self.emit(
            {
                "type": "mcp_list_tools.completed",
                "event_id": ev.new_id("event"),
                "item_id": item_id,
                "tools": [t.spec.name for t in self.tools],
            }
        )
        return self.tools

    async def _own(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=self.argv[0], args=self.argv[1:])
        assert self._ready is not None
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
                await s.initialize()
                self._session = s
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(
                    exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
                )
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._session = None

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call ``tool``; its text content joined. A tool error raises :class:`McpError`."""
        if self._session is None:
            raise McpError(f"MCP server {self.name!r} is not running")
        result = await self._session.call_tool(tool, arguments)
        texts = [getattr(c, "text", "") for c in result.content]
        text = "\n".join(t for t in texts if t)
        if getattr(result, "is_error", False) or getattr(result, "isError", False):
            raise McpError(text or f"{tool} failed")
        return text

    async def aclose(self) -> None:
        """Stop the server process. Idempotent; cancelling it is safe."""
        self._stop.set()
        owner, self._owner = self._owner, None
        if owner is not None and not owner.done():
            try:
                await asyncio.wait_for(owner, 5.0)
            except (TimeoutError, Exception):  # noqa: BLE001 - stopped either way
                owner.cancel()
                with contextlib.suppress(BaseException):
                    await owner


def python_command(script: str, *args: str) -> list[str]:
    """``[sys.executable, script, *args]``: a Python MCP server in this interpreter."""
    return [sys.executable, script, *args]
