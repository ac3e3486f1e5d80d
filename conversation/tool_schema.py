"""Tool parts of the client events, parsed and checked once (pure; no I/O, no clock).

:mod:`conversation.protocol` calls these for ``session.tools``, ``tool_choice`` and
``parallel_tool_calls`` (in ``session.update`` and ``response.create``) and for the
``function_call`` and ``function_call_output`` items. Everything wrong raises
:class:`~seetalk.errors.InvalidEvent` naming the parameter, with one of these codes:

- ``invalid_tool_schema``: ``parameters`` is not a valid JSON Schema (draft 2020-12) of an
  object, or it is nested deeper than :data:`MAX_SCHEMA_DEPTH` / bigger than
  :data:`MAX_SCHEMA_BYTES`;
- ``duplicate_tool_name``: two tools of one list share a name;
- ``too_many_tools``: more than :data:`MAX_TOOLS`;
- ``tool_description_too_long``: a description over :data:`MAX_DESCRIPTION_CHARS`;
- ``invalid_value`` / ``invalid_type`` / ``missing_required_parameter`` /
  ``unknown_parameter``: as for every other field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from llm.tools import CHOICES, ToolSpec
from seetalk.errors import InvalidEvent

MAX_TOOLS: Final = 64
MAX_DESCRIPTION_CHARS: Final = 4096
MAX_SCHEMA_BYTES: Final = 32 * 1024
MAX_SCHEMA_DEPTH: Final = 16
MAX_ARGUMENTS_CHARS: Final = 64 * 1024
MAX_OUTPUT_CHARS: Final = 100_000
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ITEM_KEYS = {"type", "id", "object", "status"}


@dataclass(frozen=True)
class FunctionCallItem:
    """A ``function_call`` item (the model's call, or one the client adds to history)."""

    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "function_call",
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
        }
        if self.id is not None:
            d["id"] = self.id
        if self.status is not None:
            d["status"] = self.status
        return d


@dataclass(frozen=True)
class FunctionCallOutputItem:
    """A ``function_call_output`` item: what the client's function returned."""

    call_id: str
    output: str
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "function_call_output",
            "call_id": self.call_id,
            "output": self.output,
        }
        if self.id is not None:
            d["id"] = self.id
        return d


@dataclass(frozen=True)
class ToolOptions:
    """The tool fields of a ``session.update`` or ``response.create`` (``None``: not given)."""

    tools: tuple[ToolSpec, ...] | None = None
    tool_choice: str | None = None  # auto | none | required | the name of one function
    parallel_tool_calls: bool | None = None

    @property
    def given(self) -> bool:
        return (self.tools, self.tool_choice, self.parallel_tool_calls) != (None, None, None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.tools is not None:
            d["tools"] = [
                {
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                }
                for t in self.tools
            ]
        if self.tool_choice is not None:
            c = self.tool_choice
            d["tool_choice"] = c if c in CHOICES else {"type": "function", "name": c}
        if self.parallel_tool_calls is not None:
            d["parallel_tool_calls"] = self.parallel_tool_calls
        return d


def _fail(
    path: str, key: str, message: str, event_id: str | None, code: str = "invalid_value"
) -> InvalidEvent:
    return InvalidEvent(message, code=code, param=path + key, event_id=event_id)


def _keys(obj: dict[str, Any], allowed: set[str], path: str, event_id: str | None) -> None:
    for k in obj:
        if k not in allowed:
            raise _fail(
                path,
                str(k)[:100],
                f"unknown parameter {path + str(k)[:100]!r}",
                event_id,
                "unknown_parameter",
            )


def _string(
    obj: dict[str, Any],
    key: str,
    path: str,
    event_id: str | None,
    *,
    max_chars: int,
    required: bool = True,
) -> str | None:
    if key not in obj:
        if required:
            raise _fail(
                path,
                key,
                f"missing required parameter {path + key!r}",
                event_id,
                "missing_required_parameter",
            )
        return None
    v = obj[key]
    if not isinstance(v, str):
        raise _fail(path, key, f"{path + key!r} must be a string", event_id, "invalid_type")
    if len(v) > max_chars:
        raise _fail(
            path,
            key,
            f"{path + key!r} is longer than {max_chars} characters",
            event_id,
            "string_above_max_length",
        )
    return v


def parse_tool_options(obj: dict[str, Any], path: str, event_id: str | None) -> ToolOptions:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of a session or response object
    at ``path`` (e.g. ``"session."``). A named ``tool_choice`` must name a tool of the same
    object when it carries ``tools``; otherwise the session checks it (its tools)."""
    tools = None
    if "tools" in obj:
        raw = obj["tools"]
        if not isinstance(raw, list):
            raise _fail(path, "tools", f"{path}tools must be an array", event_id, "invalid_type")
        if len(raw) > MAX_TOOLS:
            raise _fail(
                path,
                "tools",
                f"at most {MAX_TOOLS} tools, got {len(raw)}",
                event_id,
                "too_many_tools",
            )
        specs: list[ToolSpec] = []
        for i, t in enumerate(raw):
            spec = parse_tool(t, f"{path}tools[{i}].", event_id)
            if any(s.name == spec.name for s in specs):
                raise _fail(
                    f"{path}tools[{i}].",
                    "name",
                    f"tool name {spec.name!r} is declared twice",
                    event_id,
                    "duplicate_tool_name",
                )
            specs.append(spec)
        tools = tuple(specs)
    choice = parse_tool_choice(obj.get("tool_choice"), path, event_id)
    if choice not in (None, *CHOICES) and tools is not None:
        if not any(t.name == choice for t in tools):
            raise _fail(
                path,
                "tool_choice",
                f"tool_choice names {choice!r}, which is not one of the tools",
                event_id,
            )
    parallel = obj.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _fail(
            path,
            "parallel_tool_calls",
            f"{path}parallel_tool_calls must be a boolean",
            event_id,
            "invalid_type",
        )
    return ToolOptions(tools, choice, parallel)


def parse_tool(t: Any, path: str, event_id: str | None) -> ToolSpec:
    """One ``{"type": "function", "name", "description", "parameters"}`` definition."""
    if not isinstance(t, dict):
        raise _fail(path[:-1], "", f"'{path[:-1]}' must be an object", event_id, "invalid_type")
    kind = t.get("type", "function")
    if kind != "function":
        raise _fail(
            path,
            "type",
            f"tool type {str(kind)[:64]!r} is not supported (only "
            "'function'; MCP servers are configured with --mcp)",
            event_id,
            "unsupported",
        )
    _keys(t, {"type", "name", "description", "parameters", "strict"}, path, event_id)
    name = _string(t, "name", path, event_id, max_chars=64)
    assert name is not None
    if not NAME.fullmatch(name):
        raise _fail(
            path, "name", f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'", event_id
        )
    if isinstance(t.get("description"), str) and len(t["description"]) > MAX_DESCRIPTION_CHARS:
        raise _fail(
            path,
            "description",
            f"the description of {name!r} is "
            f"{len(t['description'])} characters; at most {MAX_DESCRIPTION_CHARS}",
            event_id,
            "tool_description_too_long",
        )
    description = (
        _string(t, "description", path, event_id, max_chars=MAX_DESCRIPTION_CHARS, required=False)
        or ""
    )
    params = t.get("parameters", {"type": "object", "properties": {}})
    check_parameters(params, f"{path}parameters", event_id)
    return ToolSpec(name, description, params)


def check_parameters(schema: Any, param: str, event_id: str | None) -> None:
    """``schema`` is a valid JSON Schema of an object, of bounded size and depth."""

    def bad(message: str) -> InvalidEvent:
        return InvalidEvent(message, code="invalid_tool_schema", param=param, event_id=event_id)

    if not isinstance(schema, dict):
        raise bad(f"'{param}' must be a JSON Schema object")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise bad(f"'{param}' is bigger than {MAX_SCHEMA_BYTES} bytes")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise bad(f"'{param}' is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if schema.get("type", "object") != "object":
        raise bad(f'\'{param}\' must describe an object ("type": "object")')
    import jsonschema  # the one validator of schemas; imported when a tool is declared

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise bad(f"'{param}' is not a valid JSON Schema at {where}: {exc.message}") from None


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def parse_tool_choice(raw: Any, path: str, event_id: str | None) -> str | None:
    """``auto``/``none``/``required``, or ``{"type": "function", "name": ...}`` as the name."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in CHOICES:
            raise _fail(
                path,
                "tool_choice",
                f"tool_choice must be one of {list(CHOICES)} or "
                "{'type': 'function', 'name': ...}",
                event_id,
            )
        return raw
    if not isinstance(raw, dict):
        raise _fail(
            path,
            "tool_choice",
            "tool_choice must be a string or an object",
            event_id,
            "invalid_type",
        )
    sub = f"{path}tool_choice."
    _keys(raw, {"type", "name"}, sub, event_id)
    if raw.get("type") != "function":
        raise _fail(
            sub,
            "type",
            "a named tool_choice has type 'function'",
            event_id,
            "unsupported" if raw.get("type") == "mcp" else "invalid_value",
        )
    name = _string(raw, "name", sub, event_id, max_chars=64)
    assert name is not None
    return name


def parse_function_item(
    obj: dict[str, Any], path: str, event_id: str | None
) -> FunctionCallItem | FunctionCallOutputItem:
    """A ``function_call`` or ``function_call_output`` item."""
    kind = obj.get("type")
    item_id = _string(obj, "id", path, event_id, max_chars=256, required=False)
    call_id = _string(obj, "call_id", path, event_id, max_chars=256)
    assert call_id is not None
    if kind == "function_call":
        _keys(obj, _ITEM_KEYS | {"call_id", "name", "arguments"}, path, event_id)
        name = _string(obj, "name", path, event_id, max_chars=64)
        arguments = _string(obj, "arguments", path, event_id, max_chars=MAX_ARGUMENTS_CHARS)
        assert name is not None and arguments is not None
        try:
            json.loads(arguments)
        except ValueError:
            raise _fail(path, "arguments", "'arguments' must be JSON text", event_id) from None
        return FunctionCallItem(call_id, name, arguments, id=item_id)
    _keys(obj, _ITEM_KEYS | {"call_id", "output"}, path, event_id)
    output = _string(obj, "output", path, event_id, max_chars=MAX_OUTPUT_CHARS)
    assert output is not None
    return FunctionCallOutputItem(call_id, output, id=item_id)
