"""MCP servers as server tools, with the official ``mcp`` SDK (docs/tools.md, "MCP").

- :class:`McpServer`: one server, over stdio (``--mcp NAME=COMMAND``) or streamable HTTP
  (``--mcp NAME=https://...`` or a session's allowed ``server_url``). It lists its tools
  (each a :class:`McpTool` the model sees as ``NAME__tool``) and calls them. The SDK's
  client lives in one task owned by this object (its context managers open and close in the
  same task); calls come from any task of the same loop.
- :class:`McpRegistry`: the deployment's servers (:class:`~seetalk.config.McpConfig`),
  started with the app, listed once, offered to every session, closed at shutdown. A
  server that does not start fails start-up (:class:`~seetalk.errors.ConfigError`).
- :class:`SessionMcp`: one session's MCP state: the ``mcp`` tools of ``session.update``
  (and ``response.create``), checked (labels, the URL allow-list, a per-session bound),
  the ``mcp_list_tools`` items, the ``mcp_call`` items of the model's calls (run by
  :class:`~conversation.server_tools.ToolRuns`), and the approval flow
  (``mcp_approval_request`` / ``mcp_approval_response``).

A ``server_url`` is a request, made by a client, that the server connect somewhere: it is
refused (``mcp_url_not_allowed``) unless it lies under a prefix of ``--mcp-allow-url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import sys
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from conversation import events as ev
from conversation import tool_items
from conversation.history import Conversation, Item
from conversation.tool_schema import MCP_SEP, McpApprovalResponseItem, McpToolDef
from llm.tools import ToolSpec
from seetalk.config import McpConfig
from seetalk.errors import ConfigError, InvalidEvent, SeetalkError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
MAX_PENDING_APPROVALS = 32  # the oldest unanswered request is forgotten past it
DENIED = "The person did not approve this call{reason}. Answer without it."
SEP = MCP_SEP  # the model sees a server's tool as LABEL__tool: no two servers' tools share
# a name, as a label is unique, has no '__' and does not end in '_' (docs/tools.md)


class McpError(SeetalkError):
    type = "server_error"
    code = "mcp_error"


@dataclass
class McpTool:
    """One tool of an MCP server, as a server tool (``spec`` is what the model sees)."""

    spec: ToolSpec
    server: McpServer
    remote_name: str
    listing: dict[str, Any] = field(default_factory=dict)  # as an mcp_list_tools entry

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self.server.call(self.remote_name, arguments)


def parse_mcp_flag(value: str) -> tuple[str, list[str] | str]:
    """``NAME=COMMAND ARGS...`` -> ``(NAME, argv)``; ``NAME=http(s)://...`` -> ``(NAME,
    url)``. :class:`ConfigError` if malformed."""
    name, sep, target = value.partition("=")
    target = target.strip()
    if sep and name.strip() and target.startswith(("http://", "https://")):
        return name.strip(), target
    argv = shlex.split(target)
    if not sep or not name.strip() or not argv:
        raise ConfigError(f"--mcp takes NAME=COMMAND or NAME=URL, got {value!r}", param="mcp")
    return name.strip(), argv


class McpServer:
    """One MCP server. ``await start()``, then :attr:`tools`; ``aclose()``.

    ``argv`` starts a process over stdio; ``url`` (with ``headers``) reaches one over
    streamable HTTP."""

    def __init__(
        self,
        name: str,
        argv: list[str] | None = None,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        allowed_tools: tuple[str, ...] | None = None,
        prefix: bool = True,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if (argv is None) == (url is None):
            raise ValueError("an MCP server has a command or a URL")
        self.name = name
        self.argv = argv
        self.url = url
        self.headers = headers or {}
        self.allowed_tools = allowed_tools
        self.prefix = prefix
        self.emit = emit or (lambda e: None)
        self.tools: list[McpTool] = []
        self._session: Any = None
        self._ready: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return self.url or shlex.join(self.argv or [])

    async def start(self) -> list[McpTool]:
        """Start or reach the server, initialize, list the tools. Raises :class:`McpError`;
        cancelling it is safe (the server is stopped)."""
        item_id = ev.new_id("mcpl")
        self.emit(_event("mcp_list_tools.in_progress", item_id=item_id))
        self._ready = asyncio.get_running_loop().create_future()
        self._owner = asyncio.get_running_loop().create_task(self._own())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
            listed = await asyncio.wait_for(self._session.list_tools(), START_TIMEOUT_S)
        except BaseException as exc:
            await self.aclose()
            self.emit(_event("mcp_list_tools.failed", item_id=item_id))
            if isinstance(exc, asyncio.CancelledError):
                raise
            why = "no answer" if isinstance(exc, TimeoutError) else _reason(exc)
            raise McpError(f"MCP server {self.name!r} ({self.where}) did not start: {why}") from exc
        for tool in listed.tools:
            if self.allowed_tools is not None and tool.name not in self.allowed_tools:
                continue
            schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None)
            params = dict(schema or {"type": "object", "properties": {}})
            params.pop("title", None)
            name = f"{self.name}{SEP}{tool.name}" if self.prefix else tool.name
            listing: dict[str, Any] = {
                "name": tool.name,
                "description": tool.description or "",
                "input_schema": params,
            }
            annotations = getattr(tool, "annotations", None)
            if annotations is not None and hasattr(annotations, "model_dump"):
                listing["annotations"] = annotations.model_dump(exclude_none=True)
            spec = ToolSpec(name, tool.description or "", params)
            self.tools.append(McpTool(spec, self, tool.name, listing))
        self.emit(
            _event(
                "mcp_list_tools.completed",
                item_id=item_id,
                tools=[t.spec.name for t in self.tools],
            )
        )
        return self.tools

    async def _own(self) -> None:
        from mcp import ClientSession

        assert self._ready is not None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.url is not None:
                    from mcp.client.streamable_http import streamable_http_client
                    from mcp.shared._httpx_utils import create_mcp_http_client

                    http = await stack.enter_async_context(
                        create_mcp_http_client(headers=self.headers)
                    )
                    streams = streamable_http_client(self.url, http_client=http)
                else:
                    from mcp import StdioServerParameters
                    from mcp.client.stdio import stdio_client

                    assert self.argv is not None
                    params = StdioServerParameters(command=self.argv[0], args=self.argv[1:])
                    streams = stdio_client(params)
                read, write = await stack.enter_async_context(streams)
                s = await stack.enter_async_context(ClientSession(read, write))
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
        """Stop the server (its process, or the HTTP session). Idempotent; cancelling it is
        safe."""
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


def _event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": ev.new_id("event"), **fields}


def _reason(exc: BaseException) -> str:
    """The innermost message of an exception (task groups wrap what went wrong)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- the deployment's servers ---------------------------------------------------------------


class McpRegistry:
    """The deployment's MCP servers (``--mcp``) and URL allow-list (``--mcp-allow-url``).

    ``await start()`` with the app (each server started and listed once; one that fails
    fails start-up with a :class:`ConfigError` naming it), ``aclose()`` at shutdown."""

    def __init__(self, config: McpConfig | None = None) -> None:
        self.config = config or McpConfig()
        self.servers: dict[str, McpServer] = {}

    async def start(self) -> None:
        for spec in self.config.servers:
            name, target = parse_mcp_flag(spec)
            if name in self.servers or SEP in name or name.endswith("_"):
                await self.aclose()
                raise ConfigError(
                    f"--mcp {name}: a server name is unique, has no {SEP!r} and does not end "
                    "in '_'",
                    param="mcp",
                )
            server = (
                McpServer(name, url=target)
                if isinstance(target, str)
                else McpServer(name, list(target))
            )
            try:
                await server.start()
            except McpError as exc:
                await self.aclose()
                raise ConfigError(f"--mcp {name}: {exc.message}", param="mcp") from exc
            self.servers[name] = server
            log.info("MCP server %s: %d tools", name, len(server.tools))

    def url_allowed(self, url: str) -> bool:
        """``url`` lies under a prefix of ``allow_urls`` (a prefix ends at a ``/``, ``?`` or
        ``#`` of the URL, so ``https://a.example`` does not allow ``https://a.example.evil``)."""
        for prefix in self.config.allow_urls:
            if url == prefix:
                return True
            if url.startswith(prefix) and (prefix[-1] in "/?#" or url[len(prefix)] in "/?#"):
                return True
        return False

    async def aclose(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            await server.aclose()


# --- one session ----------------------------------------------------------------------------


@dataclass
class _Binding:
    """A server the session's model may use, with the session's policy for it."""

    label: str
    decl: McpToolDef | None  # None: a deployment server offered without a declaration
    server: McpServer | None  # None while a session's server connects, or if it failed
    owned: bool = False  # opened for this session (a server_url): closed with it

    def tools(self) -> list[McpTool]:
        if self.server is None:
            return []
        return [
            t for t in self.server.tools if self.decl is None or self.decl.allows(t.remote_name)
        ]

    def needs_approval(self, tool: McpTool) -> bool:
        return self.decl is not None and self.decl.needs_approval(tool.remote_name)


@dataclass
class _Approval:
    request_id: str
    label: str
    tool: McpTool
    arguments: str
    state: str = "pending"  # pending | approved | denied | ran


@dataclass
class _Call:
    response_id: str
    output_index: int
    tool: McpTool
    item: Item


class SessionMcp:
    """One session's MCP servers, listings, calls and approvals (see the module doc)."""

    def __init__(
        self,
        registry: McpRegistry | None,
        emit: Callable[[dict[str, Any]], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        conversation: Conversation,
    ) -> None:
        self.registry = registry or McpRegistry()
        self.emit = emit
        self.spawn = spawn
        self.conversation = conversation
        self.bindings: dict[str, _Binding] = {
            label: _Binding(label, None, server) for label, server in self.registry.servers.items()
        }
        self._next: dict[str, _Binding] | None = None  # response.create's tools
        self._active: dict[str, _Binding] = self.bindings  # the current reply's
        self._calls: dict[str, _Call] = {}  # running mcp_call items by id
        self._approvals: OrderedDict[str, _Approval] = OrderedDict()

    def start(self) -> None:
        """The session opened: the deployment's servers' listings enter its conversation."""
        for binding in self.bindings.values():
            self._listed(self._listing(binding.label), binding)

    async def aclose(self) -> None:
        """Close the servers opened for this session. Cancelling it is safe."""
        owned = [b.server for b in self.bindings.values() if b.owned and b.server is not None]
        self.bindings = {}
        for server in owned:
            await server.aclose()

    # --- declarations --------------------------------------------------------------------

    def check(self, decls: tuple[McpToolDef, ...] | None, *, response: bool = False) -> None:
        """Raise :class:`InvalidEvent` if these ``mcp`` tools cannot be used (before anything
        applies): an unknown label, a URL not allowed, too many servers."""
        if decls is None:
            return
        urls = [d for d in decls if d.server_url is not None]
        limit = self.registry.config.max_per_session
        if len(urls) > limit:
            raise InvalidEvent(
                f"at most {limit} MCP servers with a server_url per session, got {len(urls)}",
                code="too_many_mcp_servers",
                param=urls[-1].path + "server_url",
            )
        for d in decls:
            if d.server_url is None:
                if d.server_label not in self.registry.servers and not (
                    response and d.server_label in self.bindings
                ):
                    known = ", ".join(self.registry.servers) or "none configured"
                    raise InvalidEvent(
                        f"no MCP server labelled {d.server_label!r} (the deployment's: {known}); "
                        "give a server_url to reach another",
                        code="mcp_server_not_found",
                        param=d.path + "server_label",
                    )
                continue
            if response:
                raise InvalidEvent(
                    "an MCP server with a server_url is declared in session.update; "
                    "response.create may name declared servers by server_label only",
                    code="unsupported",
                    param=d.path + "server_url",
                )
            if d.server_label in self.registry.servers:
                raise InvalidEvent(
                    f"server_label {d.server_label!r} names a server of the deployment: drop "
                    "server_url to use it, or choose another label",
                    param=d.path + "server_label",
                )
            if not self.registry.url_allowed(d.server_url):
                raise InvalidEvent(
                    f"server_url {d.server_url[:200]!r} is not allowed: this server connects "
                    "only to MCP servers under its --mcp-allow-url prefixes",
                    code="mcp_url_not_allowed",
                    param=d.path + "server_url",
                )

    def update(self, decls: tuple[McpToolDef, ...] | None) -> None:
        """Apply ``session.update``'s ``mcp`` tools (checked by :meth:`check`): each gets an
        ``mcp_list_tools`` item; a new ``server_url`` is reached in the background, a
        server no longer declared is closed. The deployment's servers stay offered."""
        if decls is None:
            return
        old = self.bindings
        new = self._planned(decls)
        kept = {id(b.server) for b in new.values()}
        for b in old.values():
            if b.owned and b.server is not None and id(b.server) not in kept:
                self.spawn(b.server.aclose())
        self.bindings = self._active = new
        for d in decls:
            binding = new[d.server_label]
            item = self._listing(d.server_label)
            if binding.owned and binding.server is None:
                self.spawn(self._connect(binding, item))
            else:
                self._listed(item, binding)

    def next_response(self, decls: tuple[McpToolDef, ...] | None) -> None:
        """``response.create``'s ``mcp`` tools: the servers (by label) and policies of the
        next response only."""
        self.check(decls, response=True)
        self._next = None if decls is None else self._planned(decls, response=True)

    def _planned(
        self, decls: tuple[McpToolDef, ...], *, response: bool = False
    ) -> dict[str, _Binding]:
        """The bindings these declarations make (nothing applied, nothing reached: a new
        ``server_url`` has no server yet). ``session.update``'s keep the deployment's
        servers and a session server whose URL and credentials did not change;
        ``response.create``'s name declared or deployment servers by label."""
        if response:
            return {
                d.server_label: _Binding(
                    d.server_label,
                    d,
                    self.bindings[d.server_label].server
                    if d.server_label in self.bindings
                    else self.registry.servers.get(d.server_label),
                )
                for d in decls
            }
        new = {label: _Binding(label, None, s) for label, s in self.registry.servers.items()}
        for d in decls:
            if d.server_url is None:
                new[d.server_label] = _Binding(
                    d.server_label, d, self.registry.servers.get(d.server_label)
                )
                continue
            prev = self.bindings.get(d.server_label)
            same = (
                prev is not None
                and prev.owned
                and prev.decl is not None
                and (prev.decl.server_url, prev.decl.headers, prev.decl.authorization)
                == (d.server_url, d.headers, d.authorization)
            )
            server = prev.server if same and prev is not None else None
            new[d.server_label] = _Binding(d.server_label, d, server, owned=True)
        return new

    def offered(
        self, decls: tuple[McpToolDef, ...] | None, response: bool = False
    ) -> dict[str, tuple[str, ...] | None]:
        """The servers a reply would offer if these ``mcp`` tools of an event applied
        (``None``: none given): label -> the names (the server's) of the tools the model
        may call, ``None`` while the server is not listed. Changes nothing (for the checks
        of :class:`~conversation.tools.SessionTools`)."""
        if decls is None or (response and not decls):
            planned = self.bindings
        else:
            planned = self._planned(decls, response=response)
        return {
            label: None if b.server is None else tuple(t.remote_name for t in b.tools())
            for label, b in planned.items()
        }

    def specs(self) -> tuple[ToolSpec, ...]:
        """The MCP tools the next reply's model sees (takes ``response.create``'s)."""
        self._active, self._next = (self._next or self.bindings), None
        return tuple(t.spec for b in self._active.values() for t in b.tools())

    async def _connect(self, binding: _Binding, item: tuple[Item, str | None]) -> None:
        d = binding.decl
        assert d is not None and d.server_url is not None
        headers = dict(d.headers)
        if d.authorization:
            headers["Authorization"] = f"Bearer {d.authorization}"
        server = McpServer(d.server_label, url=d.server_url, headers=headers)
        try:
            await server.start()
        except McpError as exc:
            self._list_failed(item, exc.message)
            return
        if self.bindings.get(binding.label) is not binding:  # replaced or closed meanwhile
            await server.aclose()
            self._list_failed(item, "the server was no longer declared")
            return
        binding.server = server
        self._listed(item, binding)

    def _listing(self, label: str) -> tuple[Item, str | None]:
        item = Item(
            ev.new_id("mcpl"),
            "assistant",
            "",
            source="text",
            kind=tool_items.MCP_LIST,
            data={"server_label": label, "tools": []},
        )
        previous = self.conversation.add(item)
        self.emit(ev.item_added(item.to_event_item(), previous))
        self.emit(_event("mcp_list_tools.in_progress", item_id=item.id))
        return item, previous

    def _listed(self, listing: tuple[Item, str | None], binding: _Binding) -> None:
        item, previous = listing
        item.data["tools"] = [dict(t.listing) for t in binding.tools()]
        self.emit(_event("mcp_list_tools.completed", item_id=item.id))
        self.emit(ev.item_done(item.to_event_item(), previous))

    def _list_failed(self, listing: tuple[Item, str | None], why: str) -> None:
        item, previous = listing
        self.emit(_event("mcp_list_tools.failed", item_id=item.id))
        self.emit(ev.item_done(item.to_event_item(), previous))
        self.emit(
            ev.error(
                {
                    "type": "server_error",
                    "code": "mcp_list_tools_failed",
                    "message": f"MCP server {item.data['server_label']!r}: {why}",
                    "param": None,
                    "event_id": None,
                }
            )
        )

    # --- the model's calls ---------------------------------------------------------------

    def _lookup(self, name: str) -> tuple[_Binding, McpTool] | None:
        label, sep, _ = name.partition(SEP)
        binding = self._active.get(label) if sep else None
        if binding is None:
            return None
        tool = next((t for t in binding.tools() if t.spec.name == name), None)
        return None if tool is None else (binding, tool)

    def announce(
        self, reply_id: str, index: int, item_id: str, name: str, arguments: str
    ) -> dict[str, Any] | None:
        """The model called ``name``: if it is an MCP tool, announce its ``mcp_call`` item
        (or, when its policy asks, an ``mcp_approval_request``) and return the item for
        ``response.done``; ``None`` for any other tool."""
        found = self._lookup(name)
        if found is None:
            return None
        binding, tool = found
        if binding.needs_approval(tool):
            return self._request_approval(reply_id, index, item_id, binding.label, tool, arguments)
        return self._open_call(reply_id, index, item_id, binding.label, tool, arguments, None)

    def _open_call(
        self,
        reply_id: str,
        index: int,
        item_id: str,
        label: str,
        tool: McpTool,
        arguments: str,
        approval: str | None,
    ) -> dict[str, Any]:
        item = Item(
            item_id,
            "assistant",
            "",
            source="text",
            kind=tool_items.MCP_CALL,
            call_id=item_id,
            name=tool.spec.name,
            arguments=arguments,
            data={
                "server_label": label,
                "name": tool.remote_name,
                "arguments": arguments,
                "approval_request_id": approval,
                "output": None,
                "error": None,
            },
        )
        opened = {**item.to_event_item(), "arguments": ""}
        where = {"item_id": item_id, "output_index": index}
        self.emit(
            _event(
                "response.output_item.added", response_id=reply_id, output_index=index, item=opened
            )
        )
        previous = self.conversation.add(item)
        self.emit(ev.item_added(opened, previous))
        self.emit(
            _event(
                "response.mcp_call_arguments.delta", response_id=reply_id, **where, delta=arguments
            )
        )
        self.emit(
            _event(
                "response.mcp_call_arguments.done",
                response_id=reply_id,
                **where,
                arguments=arguments,
            )
        )
        self.emit(_event("response.mcp_call.in_progress", **where))
        self._calls[item_id] = _Call(reply_id, index, tool, item)
        return item.to_event_item()

    def tool(self, call: dict[str, Any]) -> McpTool:
        """The tool an announced ``mcp_call`` item runs (for ToolRuns)."""
        return self._calls[call["id"]].tool

    def call_done(self, call: dict[str, Any], output: str, error: str | None) -> None:
        """An ``mcp_call`` ended: its item gets ``output`` or ``error`` (history included),
        reported with ``response.mcp_call.completed`` / ``.failed``."""
        run = self._calls.pop(call["id"], None)
        if run is None:
            return
        item = run.item
        if error is None:
            item.data["output"] = call["output"] = output
            item.text = output
        else:
            failure = {"type": "tool_execution_error", "message": error}
            item.data["error"] = call["error"] = failure
            item.text = json.dumps({"error": error})
        where = {"item_id": item.id, "output_index": run.output_index}
        kind = "completed" if error is None else "failed"
        self.emit(_event(f"response.mcp_call.{kind}", **where))
        done = item.to_event_item()
        self.emit(
            _event(
                "response.output_item.done",
                response_id=run.response_id,
                output_index=run.output_index,
                item=done,
            )
        )
        self.emit(ev.item_done(dict(done), None))

    # --- approvals -----------------------------------------------------------------------

    def _request_approval(
        self, reply_id: str, index: int, item_id: str, label: str, tool: McpTool, arguments: str
    ) -> dict[str, Any]:
        item = Item(
            item_id,
            "assistant",
            "",
            source="text",
            kind=tool_items.MCP_APPROVAL_REQUEST,
            data={"server_label": label, "name": tool.remote_name, "arguments": arguments},
        )
        shown = item.to_event_item()
        self.emit(
            _event(
                "response.output_item.added", response_id=reply_id, output_index=index, item=shown
            )
        )
        previous = self.conversation.add(item)
        self.emit(ev.item_added(dict(shown), previous))
        self.emit(
            _event(
                "response.output_item.done",
                response_id=reply_id,
                output_index=index,
                item=dict(shown),
            )
        )
        self.emit(ev.item_done(dict(shown), previous))
        self._approvals[item_id] = _Approval(item_id, label, tool, arguments)
        while len(self._approvals) > MAX_PENDING_APPROVALS:
            self._approvals.popitem(last=False)
        return dict(shown)

    def answer(self, response: McpApprovalResponseItem) -> Item:
        """The history item for a client's ``mcp_approval_response`` (not added yet); raises
        :class:`InvalidEvent` for an unknown request or a second answer."""
        req = self._approvals.get(response.approval_request_id)
        if req is None:
            raise InvalidEvent(
                f"no mcp_approval_request {response.approval_request_id!r} awaits an answer",
                code="unknown_approval_request_id",
                param="item.approval_request_id",
            )
        if req.state != "pending":
            raise InvalidEvent(
                f"approval request {req.request_id!r} was already answered",
                code="duplicate_approval_response",
                param="item.approval_request_id",
            )
        req.state = "approved" if response.approve else "denied"
        data: dict[str, Any] = {
            "approval_request_id": req.request_id,
            "approve": response.approve,
            "reason": response.reason,
        }
        item = Item(
            response.id or ev.new_id("item"),
            "user",
            "",
            source="text",
            kind=tool_items.MCP_APPROVAL_RESPONSE,
            data=data,
        )
        if not response.approve:  # the model sees the call and that it was refused
            reason = f" ({response.reason})" if response.reason else ""
            item.call_id, item.name = req.request_id, req.tool.spec.name
            item.arguments, item.text = req.arguments, DENIED.format(reason=reason)
        return item

    def has_approved(self) -> bool:
        return any(r.state == "approved" for r in self._approvals.values())

    def take_approved(self, reply_id: str) -> list[dict[str, Any]]:
        """Approved calls not run yet: announced as ``mcp_call`` items of ``reply_id``
        (for ToolRuns to run)."""
        calls: list[dict[str, Any]] = []
        for req in self._approvals.values():
            if req.state == "approved":
                req.state = "ran"
                calls.append(
                    self._open_call(
                        reply_id,
                        len(calls),
                        ev.new_id("mcp"),
                        req.label,
                        req.tool,
                        req.arguments,
                        req.request_id,
                    )
                )
        return calls


@runtime_checkable
class UsesMcp(Protocol):
    """A session source whose sessions offer the deployment's MCP servers
    (:class:`~conversation.session.Sessions`); the app sets ``mcp`` once they started."""

    mcp: McpRegistry | None
