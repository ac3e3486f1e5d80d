"""Function tools of one session: what the model may call, the calls it makes, their outputs.

:class:`SessionTools` is per session. ``session.update`` replaces its tools, ``tool_choice``
and ``parallel_tool_calls`` (checked as a whole: a named choice must name a declared tool,
an MCP choice an offered server's tool, and no function may take the name of a tool the
session runs itself: a built-in, or ``LABEL__...`` of an offered MCP server);
``response.create`` may override them for the next response only. While a reply is
generated the model's call pieces are gathered here (:meth:`SessionTools.on_delta`); when
the reply ends they become ``function_call`` items, announced in the protocol's order
(``response.output_item.added``, ``response.function_call_arguments.delta``/``.done``,
``response.output_item.done``, ``conversation.item.added``/``.done``), kept in history and
listed by ``response.done``. A held (preemptive) reply's calls are announced only when it
is adopted and ends, so a call never appears for words the person then went on from.

The client answers with a ``function_call_output`` item (:meth:`SessionTools.add_output`):
its ``call_id`` must name a call in the history, and a call has one output; anything else is
a typed error (``unknown_call_id``, ``duplicate_call_output``) and the session goes on.

:class:`Filler` decides, on time given as input, when to say "One moment." while a tool
runs: once, never more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conversation import events as ev
from conversation import tool_items
from conversation.history import Conversation, Item
from conversation.tool_schema import (
    MCP_SEP,
    FunctionCallItem,
    FunctionCallOutputItem,
    McpChoice,
    McpToolDef,
    ToolOptions,
    check_tool_names,
)
from llm.tools import CHOICES, ToolCallDelta, ToolSpec, ToolUse
from seetalk.errors import InvalidEvent

MAX_CALLS_PER_REPLY = 8  # calls beyond it are dropped, reported with an error event
FILLER_AFTER_S = 1.0
FILLER_TEXT = "One moment."


def _event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": ev.new_id("event"), **fields}


@dataclass
class _Pending:
    """One call being assembled from the model's pieces."""

    call_id: str
    name: str = ""
    arguments: str = ""
    item_id: str = field(default_factory=lambda: ev.new_id("item"))


class SessionTools:
    """The session's function tools and the calls of its replies (see the module doc)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.tools: tuple[ToolSpec, ...] = ()
        self.choice: str | McpChoice = "auto"
        self.parallel = True
        self._next: ToolOptions | None = None  # response.create's override, one response
        self._calls: dict[str, dict[int, _Pending]] = {}  # reply id -> index -> call
        # tools the session runs itself (conversation/server_tools.py), seen by the model
        self.server_specs: Callable[[], tuple[ToolSpec, ...]] = lambda: ()
        # the names of those of them that are not MCP tools (built-ins: a client's function
        # may not take one), and the MCP servers a reply would offer given an event's mcp
        # tools (None: unchanged; True: response.create's): label -> the names of the tools
        # the model may call (None: not listed yet). Pure: for checks before anything applies
        self.own_names: Callable[[], tuple[str, ...]] = lambda: ()
        self.mcp_offered: Callable[
            [tuple[McpToolDef, ...] | None, bool], dict[str, tuple[str, ...] | None]
        ] = lambda decls, response: {}
        # MCP tools (conversation/mcp.py): their declarations (for the session object) and
        # the announcement of a call to one (an mcp_call item; None: not an MCP tool)
        self.mcp: tuple[McpToolDef, ...] = ()
        self.announce_mcp: Callable[[str, int, str, str, str], dict[str, Any] | None] = (
            lambda reply_id, index, item_id, name, arguments: None
        )

    # --- settings --------------------------------------------------------------------------

    def _combined(
        self, opts: ToolOptions, param: str
    ) -> tuple[tuple[ToolSpec, ...], str | McpChoice, bool]:
        tools = self.tools if opts.tools is None else opts.tools
        choice = self.choice if opts.tool_choice is None else opts.tool_choice
        parallel = self.parallel if opts.parallel_tool_calls is None else opts.parallel_tool_calls
        if (
            isinstance(choice, str)
            and choice not in CHOICES
            and not any(t.name == choice for t in tools)
        ):
            raise InvalidEvent(
                f"tool_choice names {choice!r}, which is not one of the tools "
                f"({', '.join(t.name for t in tools) or 'none declared'})",
                code="invalid_value",
                param=f"{param}.tool_choice",
            )
        return tools, choice, parallel

    def _against_server_tools(self, opts: ToolOptions, param: str, response: bool) -> None:
        """The client's function tools take no name of the session's own tools (a built-in,
        or ``LABEL__...`` of an MCP server offered), and an MCP ``tool_choice`` names an
        offered server (and one of its tools, once listed)."""
        offered = self.mcp_offered(opts.mcp, response)
        if opts.tools is not None:
            paths = opts.paths or tuple(f"{param}.tools[{i}]." for i in range(len(opts.tools)))
            check_tool_names(
                opts.tools,
                paths,
                taken={n: f"the built-in tool {n!r} of this server" for n in self.own_names()},
                namespaces={f"{label}{MCP_SEP}": f"MCP server {label!r}" for label in offered},
            )
        choice = self.choice if opts.tool_choice is None else opts.tool_choice
        if not isinstance(choice, McpChoice):
            return
        if choice.server_label not in offered:
            raise InvalidEvent(
                f"tool_choice names MCP server {choice.server_label!r}, which this session "
                f"does not offer ({', '.join(offered) or 'none'})",
                code="invalid_value",
                param=f"{param}.tool_choice.server_label",
            )
        listed = offered[choice.server_label]
        if choice.name is not None and listed is not None and choice.name not in listed:
            raise InvalidEvent(
                f"tool_choice names {choice.name!r}, which is not a tool of MCP server "
                f"{choice.server_label!r} this session may call ({', '.join(listed) or 'none'})",
                code="invalid_value",
                param=f"{param}.tool_choice.name",
            )

    def check(self, opts: ToolOptions) -> None:
        """Raise :class:`InvalidEvent` if ``session.update`` with ``opts`` would be invalid
        (call before applying anything, so a refusal changes nothing)."""
        self._combined(opts, "session")
        self._against_server_tools(opts, "session", False)

    def update(self, opts: ToolOptions) -> None:
        """Apply a ``session.update``'s tool fields (checked by :meth:`check`)."""
        self.tools, self.choice, self.parallel = self._combined(opts, "session")
        if opts.mcp is not None:
            self.mcp = opts.mcp

    def next_response(self, opts: ToolOptions) -> None:
        """``response.create``'s tool fields, for the next response only."""
        self._combined(opts, "response")
        self._against_server_tools(opts, "response", True)
        self._next = opts if opts.given else None

    def describe(self) -> dict[str, Any]:
        """The tool fields of the session object."""
        d = ToolOptions(self.tools, self.choice, self.parallel, self.mcp).to_dict()
        d.setdefault("tools", [])
        return d

    def use_for_reply(self) -> ToolUse | None:
        """What the next model call may do with tools (takes ``response.create``'s override)."""
        opts, self._next = self._next, None
        tools, choice, parallel = self._combined(opts or ToolOptions(), "response")
        names = {t.name for t in tools}
        server = tuple(t for t in self.server_specs() if t.name not in names)
        tools = (*tools, *server)
        if isinstance(choice, McpChoice):  # forced like a named function (llm/tools.py)
            tools, choice = self._mcp_choice(choice, tools, server)
        use = ToolUse(tools, choice, parallel)
        return use if use.active else None

    def _mcp_choice(
        self, choice: McpChoice, tools: tuple[ToolSpec, ...], server: tuple[ToolSpec, ...]
    ) -> tuple[tuple[ToolSpec, ...], str]:
        """An MCP ``tool_choice`` as the model sees it: a named tool is the named choice of
        its ``LABEL__tool``; a server without a name is ``required`` over its tools only. If
        they are not offered now (the server is not listed, or failed), an ``error`` event
        says so and the reply chooses freely (``auto``)."""
        prefix = f"{choice.server_label}{MCP_SEP}"
        chosen = tuple(
            t
            for t in server
            if t.name.startswith(prefix) and choice.name in (None, t.name[len(prefix) :])
        )
        if not chosen:
            what = prefix + choice.name if choice.name else f"a tool of {choice.server_label!r}"
            self.emit(
                ev.error(
                    {
                        "type": "invalid_request_error",
                        "code": "mcp_tool_unavailable",
                        "message": f"tool_choice forces {what}, which the MCP server does not "
                        "offer now (not listed yet, or it failed); this reply chooses freely",
                        "param": "tool_choice",
                        "event_id": None,
                    }
                )
            )
            return tools, "auto"
        if choice.name is not None:
            return tools, chosen[0].name
        return chosen, "required"

    # --- the model's calls -----------------------------------------------------------------

    def on_delta(self, reply_id: str, delta: ToolCallDelta) -> None:
        """A piece of a call from the model (gathered; announced when the reply ends)."""
        calls = self._calls.setdefault(reply_id, {})
        call = calls.get(delta.index)
        if call is None:
            if len(calls) >= MAX_CALLS_PER_REPLY:
                return
            call = calls[delta.index] = _Pending(delta.call_id or ev.new_id("call"))
        if delta.name:
            call.name = delta.name
        call.arguments += delta.arguments

    def has_calls(self, reply_id: str) -> bool:
        return bool(self._calls.get(reply_id))

    def discard(self, reply_id: str) -> None:
        """The reply was cancelled or failed: its unannounced calls are dropped."""
        self._calls.pop(reply_id, None)

    def finish(self, reply_id: str, conversation: Conversation, first_index: int) -> list[dict]:
        """Announce the reply's calls, keep them in history; returns their items for
        ``response.done`` (``output_index`` counts from ``first_index``)."""
        calls = self._calls.pop(reply_id, {})
        items: list[dict[str, Any]] = []
        for n, (_, call) in enumerate(sorted(calls.items())):
            index = first_index + n
            mcp = self.announce_mcp(
                reply_id, index, call.item_id, call.name, call.arguments or "{}"
            )
            if mcp is not None:  # an MCP server's tool: an mcp_call item (conversation/mcp.py)
                items.append(mcp)
                continue
            item = Item(
                call.item_id,
                "assistant",
                "",
                source="text",
                kind=tool_items.CALL,
                call_id=call.call_id,
                name=call.name,
                arguments=call.arguments or "{}",
            )
            open_item = {**item.to_event_item(), "status": "in_progress", "arguments": ""}
            common = {"response_id": reply_id, "item_id": item.id, "output_index": index}
            self.emit(
                _event(
                    "response.output_item.added",
                    response_id=reply_id,
                    output_index=index,
                    item=open_item,
                )
            )
            previous = conversation.add(item)
            self.emit(ev.item_added(open_item, previous))
            self.emit(
                _event(
                    "response.function_call_arguments.delta",
                    **common,
                    call_id=call.call_id,
                    delta=item.arguments,
                )
            )
            self.emit(
                _event(
                    "response.function_call_arguments.done",
                    **common,
                    call_id=call.call_id,
                    name=call.name,
                    arguments=item.arguments,
                )
            )
            done = item.to_event_item()
            self.emit(
                _event(
                    "response.output_item.done", response_id=reply_id, output_index=index, item=done
                )
            )
            self.emit(ev.item_done(done, previous))
            items.append(done)
        return items

    # --- the client's outputs --------------------------------------------------------------

    def add_item(
        self, conversation: Conversation, item: FunctionCallItem | FunctionCallOutputItem
    ) -> Item:
        """The history item for a client's ``function_call`` or ``function_call_output``
        (not added yet); raises :class:`InvalidEvent`."""
        if isinstance(item, FunctionCallItem):
            return self.add_call(conversation, item)
        return self.add_output(conversation, item)

    def add_call(self, conversation: Conversation, call: FunctionCallItem) -> Item:
        """A ``function_call`` item the client adds (e.g. restoring a conversation)."""
        if _find(conversation, tool_items.CALL, call.call_id) is not None:
            raise InvalidEvent(
                f"a call {call.call_id!r} is already in the conversation",
                code="duplicate_call_id",
                param="item.call_id",
            )
        return Item(
            call.id or ev.new_id("item"),
            "assistant",
            "",
            source="text",
            kind=tool_items.CALL,
            call_id=call.call_id,
            name=call.name,
            arguments=call.arguments,
        )

    def add_output(self, conversation: Conversation, out: FunctionCallOutputItem) -> Item:
        """A ``function_call_output`` item: its call must be in the history, unanswered."""
        call = _find(conversation, tool_items.CALL, out.call_id)
        if call is None:
            raise InvalidEvent(
                f"no function_call with call_id {out.call_id!r} in the conversation: an "
                "output answers a call the model made (or one added as an item)",
                code="unknown_call_id",
                param="item.call_id",
            )
        if _find(conversation, tool_items.OUTPUT, out.call_id) is not None:
            raise InvalidEvent(
                f"call {out.call_id!r} already has an output",
                code="duplicate_call_output",
                param="item.call_id",
            )
        return Item(
            out.id or ev.new_id("item"),
            "user",
            out.output,
            source="text",
            kind=tool_items.OUTPUT,
            call_id=out.call_id,
            name=call.name,
        )


def _find(conversation: Conversation, kind: str, call_id: str) -> Item | None:
    return next((i for i in conversation.items if i.kind == kind and i.call_id == call_id), None)


def valid_arguments(spec: ToolSpec, arguments: str) -> bool:
    """The call's arguments are JSON matching the tool's parameters (jsonschema)."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(arguments), spec.parameters)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


@dataclass
class Filler:
    """When to say the filler while a tool runs: once, ``after_s`` after the call started,
    if the tool has not answered by then. Pure: the time is an argument.

    ``start(now)`` when the call starts; ``due(now)`` says whether to speak the filler now
    (True at most once); ``answered()`` when the output arrives; ``deadline`` is when to ask
    again (``None``: never)."""

    after_s: float = FILLER_AFTER_S
    started: float | None = None
    said: bool = False
    done: bool = False

    def start(self, now: float) -> None:
        self.started, self.said, self.done = now, False, False

    def answered(self) -> None:
        self.done = True

    @property
    def deadline(self) -> float | None:
        if self.started is None or self.said or self.done:
            return None
        return self.started + self.after_s

    def due(self, now: float) -> bool:
        deadline = self.deadline
        if deadline is None or now < deadline:
            return False
        self.said = True
        return True
