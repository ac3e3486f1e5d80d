"""Tool use at the model interface: function tools in, function calls out.

A backend that can call tools implements :class:`ToolCallingBackend`: ``stream_tools()``
yields text deltas (``str``) and :class:`ToolCallDelta` pieces of calls, in the order the
model produced them. :func:`tool_stream` is the one entry the conversation uses.

- **OpenAI-compatible servers** (:class:`llm.openai_compat.OpenAIChatBackend`) get ``tools``
  and ``tool_choice`` in the request (:func:`openai_tool_fields`) and their streamed
  ``delta.tool_calls`` come back as :class:`ToolCallDelta` (:func:`tool_call_deltas`).
- **The in-process llama.cpp model** (:class:`llm.local.LlamaCppBackend`) produces a call by
  grammar-constrained decoding when one is required (``tool_choice`` ``required`` or a named
  function): the grammar is built from the tools' JSON Schemas (:func:`call_schema`), so
  even the 135M default model emits JSON that parses and matches a tool's parameters. With
  ``auto`` it answers in words (a tiny model cannot decide reliably when to call); with a
  bigger model point ``--llm-base-url`` at a server that decides itself.

Chat templates of small local models know no ``tool`` role: :func:`plain_messages` writes
calls and their outputs as ordinary text turns for them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llm.backend import ChatBackend, ChatMessage, GenerationSettings, ToolCall
from seetalk.errors import BackendError

CHOICES = ("auto", "none", "required")
DEFAULT_MAX_STRING = 200  # grammar cap on strings without maxLength (the call must end)
DEFAULT_MAX_ITEMS = 16  # grammar cap on arrays without maxItems
CALL_MAX_TOKENS = 512  # a constrained call's token budget (it must close its JSON)


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: ``parameters`` is its JSON Schema (checked upstream)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"}, hash=False)

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolUse:
    """What one model call may do with tools: ``choice`` is ``auto``, ``none``, ``required``
    or the name of one function (``named``)."""

    tools: tuple[ToolSpec, ...]
    choice: str = "auto"
    parallel: bool = True

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        """A call must come: ``required`` or a named function."""
        return self.active and self.choice != "auto"

    @property
    def callable(self) -> tuple[ToolSpec, ...]:
        """The tools this call may use (only the named one when one is named)."""
        if self.choice in CHOICES:
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the ``index``-th call of a reply: its id and name come with the first
    piece (servers send them once), ``arguments`` is the next piece of its JSON text."""

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


@runtime_checkable
class ToolCallingBackend(Protocol):
    """A :class:`~llm.backend.ChatBackend` that can call tools. Cancelling the consumer of
    ``stream_tools()`` is safe, as for ``stream()``."""

    def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncIterator[str | ToolCallDelta]: ...


async def tool_stream(
    backend: ChatBackend,
    messages: Sequence[ChatMessage],
    settings: GenerationSettings,
    tools: ToolUse | None,
) -> AsyncIterator[str | ToolCallDelta]:
    """The model's reply with tools: text deltas and call pieces. Without active tools it is
    the plain ``stream()``; a backend that cannot call tools raises :class:`BackendError`
    when a call is required, and answers in words otherwise."""
    if tools is None or not tools.active:
        async for text in backend.stream(messages, settings):
            yield text
        return
    if not isinstance(backend, ToolCallingBackend):
        if tools.forced:
            raise BackendError(f"{backend.name} cannot call tools")
        async for text in backend.stream(plain_messages(messages), settings):
            yield text
        return
    async for delta in backend.stream_tools(messages, settings, tools):
        yield delta


# --- OpenAI-compatible servers ------------------------------------------------------------


def openai_tool_fields(tools: ToolUse) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of a chat completions request."""
    choice: Any = tools.choice
    if choice not in CHOICES:
        choice = {"type": "function", "function": {"name": choice}}
    return {
        "tools": [t.to_openai() for t in tools.tools],
        "tool_choice": choice,
        "parallel_tool_calls": tools.parallel,
    }


def tool_call_deltas(chunk: dict[str, Any]) -> list[ToolCallDelta]:
    """The ``delta.tool_calls`` of one streamed chunk (or ``message.tool_calls`` of a whole
    completion) as :class:`ToolCallDelta`; malformed entries are skipped."""
    choices = chunk.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    part = first.get("delta") or first.get("message") or {}
    calls = part.get("tool_calls") if isinstance(part, dict) else None
    out: list[ToolCallDelta] = []
    for i, c in enumerate(calls if isinstance(calls, list) else []):
        if not isinstance(c, dict):
            continue
        raw = c.get("function")
        fn: dict[str, Any] = raw if isinstance(raw, dict) else {}
        index = c.get("index", i)
        args = fn.get("arguments")
        out.append(
            ToolCallDelta(
                index=index if isinstance(index, int) else i,
                call_id=c.get("id") if isinstance(c.get("id"), str) else None,
                name=fn.get("name") if isinstance(fn.get("name"), str) else None,
                arguments=args if isinstance(args, str) else "",
            )
        )
    return out


# --- grammar-constrained calls (in-process model) ------------------------------------------


def call_schema(tools: ToolUse) -> dict[str, Any]:
    """The JSON Schema of one call, ``{"name": ..., "arguments": {...}}``, over the tools
    this call may use; strings and arrays without a bound get one, so the constrained
    output always closes within :data:`CALL_MAX_TOKENS`."""
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": _bounded(t.parameters),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools.callable
    ]
    if len(alternatives) == 1:
        return alternatives[0]
    return {"anyOf": alternatives}


def _bounded(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v) for k, v in schema.items()}
    if out.get("type") == "string" and "enum" not in out and "const" not in out:
        out.setdefault("maxLength", DEFAULT_MAX_STRING)
    if out.get("type") == "array":
        out.setdefault("maxItems", DEFAULT_MAX_ITEMS)
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def tools_prompt(tools: ToolUse) -> str:
    """A system-prompt paragraph naming the tools (the grammar does the rest)."""
    lines = ["You call a tool by answering with JSON. Tools:"]
    for t in tools.callable:
        params = json.dumps(t.parameters.get("properties", {}), separators=(",", ":"))
        lines.append(f"- {t.name}: {t.description} Arguments: {params}")
    return "\n".join(lines)


def parse_call(text: str) -> tuple[str, str]:
    """``(name, arguments JSON)`` of a constrained call's text; :class:`BackendError` if it
    does not parse (the model ran out of tokens before closing it)."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BackendError(f"the model's tool call is not complete JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise BackendError("the model's tool call names no tool")
    return obj["name"], json.dumps(obj.get("arguments", {}), separators=(",", ":"))


def plain_messages(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Calls and their outputs as plain text turns, for chat templates without tool roles.
    A call is the assistant saying which function it called; its output is a user turn
    that begins with ``Result of NAME:``."""
    names: dict[str, str] = {}
    out: list[ChatMessage] = []
    for m in messages:
        if m.tool_calls:
            for c in m.tool_calls:
                names[c.call_id] = c.name
            called = "; ".join(f"{c.name}({c.arguments})" for c in m.tool_calls)
            text = f"{m.text}\n" if m.text else ""
            out.append(ChatMessage("assistant", f"{text}(called {called})"))
        elif m.tool_call_id is not None:
            name = names.get(m.tool_call_id, "the tool")
            out.append(ChatMessage("user", f"Result of {name}: {m.text}"))
        else:
            out.append(m)
    return out


def with_tools_prompt(messages: Sequence[ChatMessage], tools: ToolUse) -> list[ChatMessage]:
    """``plain_messages`` with :func:`tools_prompt` added to the system message."""
    plain = plain_messages(messages)
    prompt = tools_prompt(tools)
    if plain and plain[0].role == "system":
        return [ChatMessage("system", f"{plain[0].text}\n\n{prompt}"), *plain[1:]]
    return [ChatMessage("system", prompt), *plain]


def new_call(call_id: str, name: str, arguments: str) -> ToolCall:
    return ToolCall(call_id, name, arguments)
