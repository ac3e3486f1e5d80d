"""Tool parts of the client events, parsed and checked once (pure; no I/O, no clock).

:mod:`conversation.protocol` calls these for ``session.tools``, ``tool_choice`` and
``parallel_tool_calls`` (in ``session.update`` and ``response.create``) and for the
``function_call`` and ``function_call_output`` items. Everything wrong raises
:class:`~seetalk.errors.InvalidEvent` naming the parameter, with one of these codes:

- ``invalid_tool_schema``: ``parameters`` is not a valid JSON Schema (draft 2020-12) of an
  object, or it is nested deeper than :data:`MAX_SCHEMA_DEPTH` / bigger than
  :data:`MAX_SCHEMA_BYTES`;
- ``duplicate_tool_name``: two tools of one list share a name, or a function tool takes the
  name of a tool the session runs itself (:func:`check_tool_names`, also called by
  :class:`~conversation.tools.SessionTools` with the session's built-ins and MCP servers);
- ``too_many_tools``: more than :data:`MAX_TOOLS`;
- ``tool_description_too_long``: a description over :data:`MAX_DESCRIPTION_CHARS`;
- ``invalid_value`` / ``invalid_type`` / ``missing_required_parameter`` /
  ``unknown_parameter``: as for every other field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
MCP_SEP: Final = "__"  # the model sees an MCP server's tool as LABEL__tool (conversation/mcp.py)
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
class McpToolDef:
    """An ``{"type": "mcp", ...}`` tool: an MCP server the session's model may use
    (conversation/mcp.py). ``allowed_tools`` ``None``: all its tools. ``approval``:
    ``"always"``, ``"never"`` (for every tool), or per tool (``always_tools`` /
    ``never_tools``; a tool in neither list needs approval). ``path`` locates it in the
    event, for errors (``"session.tools[2]."``)."""

    server_label: str
    server_url: str | None = None
    allowed_tools: tuple[str, ...] | None = None
    approval: str = "always"  # always | never | filter
    always_tools: tuple[str, ...] = ()
    never_tools: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    authorization: str | None = field(default=None, repr=False)
    server_description: str | None = None
    path: str = field(default="", compare=False)

    def allows(self, tool: str) -> bool:
        return self.allowed_tools is None or tool in self.allowed_tools

    def needs_approval(self, tool: str) -> bool:
        if self.approval != "filter":
            return self.approval == "always"
        return tool in self.always_tools or tool not in self.never_tools

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "mcp", "server_label": self.server_label}
        if self.server_url is not None:
            d["server_url"] = self.server_url
        if self.allowed_tools is not None:
            d["allowed_tools"] = list(self.allowed_tools)
        if self.approval == "filter":
            d["require_approval"] = {
                k: {"tool_names": list(v)}
                for k, v in (("always", self.always_tools), ("never", self.never_tools))
                if v
            }
        else:
            d["require_approval"] = self.approval
        if self.server_description is not None:
            d["server_description"] = self.server_description
        return d  # headers and authorization are secrets: never echoed


@dataclass(frozen=True)
class McpApprovalResponseItem:
    """An ``mcp_approval_response`` item: the client's answer to an approval request."""

    approval_request_id: str
    approve: bool
    reason: str | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "mcp_approval_response",
            "approval_request_id": self.approval_request_id,
            "approve": self.approve,
        }
        if self.reason is not None:
            d["reason"] = self.reason
        if self.id is not None:
            d["id"] = self.id
        return d


@dataclass(frozen=True)
class McpChoice:
    """``tool_choice: {"type": "mcp", "server_label", "name"?}``: the reply must call a tool
    of that MCP server (``name``, as the server names it, or ``None``: any of its tools)."""

    server_label: str
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "mcp", "server_label": self.server_label}
        if self.name is not None:
            d["name"] = self.name
        return d


@dataclass(frozen=True)
class ToolOptions:
    """The tool fields of a ``session.update`` or ``response.create`` (``None``: not given).
    ``mcp`` holds the ``mcp`` tools of ``tools`` (given together); ``paths`` locates each
    of ``tools`` in the event, for errors (``"session.tools[2]."``)."""

    tools: tuple[ToolSpec, ...] | None = None
    # auto | none | required | the name of one function | one MCP server's tool
    tool_choice: str | McpChoice | None = None
    parallel_tool_calls: bool | None = None
    mcp: tuple[McpToolDef, ...] | None = None
    paths: tuple[str, ...] = field(default=(), compare=False)

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
            d["tools"] += [m.to_dict() for m in self.mcp or ()]
        if self.tool_choice is not None:
            c = self.tool_choice
            if isinstance(c, McpChoice):
                d["tool_choice"] = c.to_dict()
            else:
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
    mcp_tools: tuple[McpToolDef, ...] = ()
    paths: list[str] = []
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
        mcp: list[McpToolDef] = []
        for i, t in enumerate(raw):
            if isinstance(t, dict) and t.get("type") == "mcp":
                m = parse_mcp_tool(t, f"{path}tools[{i}].", event_id)
                if any(x.server_label == m.server_label for x in mcp):
                    raise _fail(
                        m.path,
                        "server_label",
                        f"MCP server label {m.server_label!r} is declared twice",
                        event_id,
                        "duplicate_tool_name",
                    )
                mcp.append(m)
                continue
            specs.append(parse_tool(t, f"{path}tools[{i}].", event_id))
            paths.append(f"{path}tools[{i}].")
            check_tool_names(specs, paths, event_id)
        tools = tuple(specs)
        mcp_tools = tuple(mcp)
    choice = parse_tool_choice(obj.get("tool_choice"), path, event_id)
    if isinstance(choice, str) and choice not in CHOICES and tools is not None:
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
    return ToolOptions(
        tools, choice, parallel, mcp_tools if tools is not None else None, tuple(paths)
    )


def check_tool_names(
    specs: Sequence[ToolSpec],
    paths: Sequence[str],
    event_id: str | None = None,
    *,
    taken: Mapping[str, str] | None = None,
    namespaces: Mapping[str, str] | None = None,
) -> None:
    """The one check that the model is never offered two tools of one name: no two of
    ``specs`` (function tools at ``paths``) share a name, none takes a name of ``taken``
    (name -> what owns it, e.g. a built-in), and none lies in a ``namespaces`` prefix
    (``LABEL__`` -> the MCP server whose tools are named so). Raises
    :class:`InvalidEvent` (``duplicate_tool_name``) naming the tool."""
    seen: set[str] = set()
    for spec, where in zip(specs, paths, strict=True):
        name = spec.name
        owner = next(
            ((p, who) for p, who in (namespaces or {}).items() if name.startswith(p)), None
        )
        if name in seen:
            message = f"tool name {name!r} is declared twice"
        elif taken and name in taken:
            message = f"tool name {name!r} is taken by {taken[name]}: choose another name"
        elif owner is not None:
            message = (
                f"tool name {name!r} is taken: {owner[1]} offers its tools as "
                f"{owner[0]}TOOL; choose another name"
            )
        else:
            seen.add(name)
            continue
        raise _fail(where, "name", message, event_id, "duplicate_tool_name")


def parse_tool(t: Any, path: str, event_id: str | None) -> ToolSpec:
    """One ``{"type": "function", "name", "description", "parameters"}`` definition."""
    if not isinstance(t, dict):
        raise _fail(path[:-1], "", f"'{path[:-1]}' must be an object", event_id, "invalid_type")
    kind = t.get("type", "function")
    if kind != "function":
        raise _fail(
            path,
            "type",
            f"tool type {str(kind)[:64]!r} is not supported (only 'function' and 'mcp')",
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


def parse_tool_choice(raw: Any, path: str, event_id: str | None) -> str | McpChoice | None:
    """``auto``/``none``/``required``, ``{"type": "function", "name": ...}`` as the name, or
    ``{"type": "mcp", "server_label": ..., "name"?: ...}`` as a :class:`McpChoice` (whether
    the server and tool are offered is the session's check)."""
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
    if raw.get("type") == "mcp":
        _keys(raw, {"type", "server_label", "name"}, sub, event_id)
        label = _string(raw, "server_label", sub, event_id, max_chars=64)
        assert label is not None
        tool = raw.get("name")
        if tool is not None:
            tool = _string(raw, "name", sub, event_id, max_chars=128)
        return McpChoice(label, tool)
    _keys(raw, {"type", "name"}, sub, event_id)
    if raw.get("type") != "function":
        raise _fail(sub, "type", "a named tool_choice has type 'function' or 'mcp'", event_id)
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


MCP_TOOL_KEYS = {
    "type",
    "server_label",
    "server_url",
    "allowed_tools",
    "require_approval",
    "headers",
    "authorization",
    "server_description",
    "allowed_callers",
    "defer_loading",
}
MAX_MCP_HEADERS: Final = 32


def parse_mcp_tool(t: dict[str, Any], path: str, event_id: str | None) -> McpToolDef:
    """One ``{"type": "mcp", "server_label", ...}`` tool (the GA Realtime shape).
    Whether its label or URL may be used is the session's check (conversation/mcp.py)."""
    for key in ("connector_id", "tunnel_id"):
        if key in t:
            raise _fail(
                path,
                key,
                f"{key} is not supported: name a server of the deployment with "
                "server_label, or give a server_url",
                event_id,
                "unsupported",
            )
    _keys(t, MCP_TOOL_KEYS, path, event_id)
    label = _string(t, "server_label", path, event_id, max_chars=64)
    assert label is not None
    if not NAME.fullmatch(label) or MCP_SEP in label or label.endswith("_"):
        raise _fail(
            path,
            "server_label",
            f"server_label {label!r} must be 1-64 letters, digits, '_' or '-' (no '__', "
            "not ending in '_': its tools are named LABEL__tool)",
            event_id,
        )
    url = _string(t, "server_url", path, event_id, max_chars=2048, required=False)
    if url is not None and not url.startswith(("http://", "https://")):
        raise _fail(path, "server_url", "server_url must be an http(s) URL", event_id)
    allowed = _mcp_names(t.get("allowed_tools"), path, "allowed_tools", event_id)
    approval, always, never = _mcp_approval(t.get("require_approval"), path, event_id)
    headers: list[tuple[str, str]] = []
    raw_headers = t.get("headers")
    if raw_headers is not None:
        if not isinstance(raw_headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_headers.items()
        ):
            raise _fail(
                path, "headers", "headers must map names to strings", event_id, "invalid_type"
            )
        if len(raw_headers) > MAX_MCP_HEADERS:
            raise _fail(path, "headers", f"at most {MAX_MCP_HEADERS} headers", event_id)
        headers = sorted(raw_headers.items())
    auth = _string(t, "authorization", path, event_id, max_chars=8192, required=False)
    description = _string(
        t, "server_description", path, event_id, max_chars=MAX_DESCRIPTION_CHARS, required=False
    )
    return McpToolDef(
        label,
        url,
        allowed,
        approval,
        always,
        never,
        tuple(headers),
        auth,
        description,
        path,
    )


def _mcp_names(raw: Any, path: str, key: str, event_id: str | None) -> tuple[str, ...] | None:
    """A list of tool names, or ``{"tool_names": [...]}`` (``read_only`` is not supported)."""
    if raw is None:
        return None
    where = path + key
    if isinstance(raw, dict):
        _keys(raw, {"tool_names"}, where + ".", event_id)
        raw = raw.get("tool_names", [])
        where += ".tool_names"
    if not isinstance(raw, list) or not all(isinstance(n, str) and len(n) <= 128 for n in raw):
        raise InvalidEvent(
            f"'{where}' must be a list of tool names (or {{'tool_names': [...]}})",
            code="invalid_type",
            param=where,
            event_id=event_id,
        )
    if len(raw) > MAX_TOOLS:
        raise InvalidEvent(
            f"'{where}' names more than {MAX_TOOLS} tools", param=where, event_id=event_id
        )
    return tuple(raw)


def _mcp_approval(
    raw: Any, path: str, event_id: str | None
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``require_approval``: ``"always"`` (the default), ``"never"``, or
    ``{"always": {"tool_names": [...]}, "never": {"tool_names": [...]}}``."""
    if raw is None:
        return "always", (), ()
    if raw in ("always", "never"):
        return str(raw), (), ()
    if not isinstance(raw, dict) or not raw:
        raise _fail(
            path,
            "require_approval",
            "require_approval must be 'always', 'never' or "
            "{'always': {'tool_names': [...]}, 'never': {'tool_names': [...]}}",
            event_id,
        )
    sub = f"{path}require_approval."
    _keys(raw, {"always", "never"}, sub, event_id)
    lists = []
    for key in ("always", "never"):
        part = raw.get(key)
        if part is not None and not isinstance(part, dict):
            raise _fail(
                sub, key, f"'{sub}{key}' must be {{'tool_names': [...]}}", event_id, "invalid_type"
            )
        lists.append(_mcp_names(part, sub, key, event_id) if part is not None else ())
    return "filter", lists[0] or (), lists[1] or ()


def parse_mcp_approval_response(
    obj: dict[str, Any], path: str, event_id: str | None
) -> McpApprovalResponseItem:
    """An ``mcp_approval_response`` item (the only MCP item a client adds)."""
    _keys(obj, _ITEM_KEYS | {"approval_request_id", "approve", "reason"}, path, event_id)
    request = _string(obj, "approval_request_id", path, event_id, max_chars=256)
    assert request is not None
    if "approve" not in obj:
        raise _fail(
            path,
            "approve",
            f"missing required parameter {path + 'approve'!r}",
            event_id,
            "missing_required_parameter",
        )
    if not isinstance(obj["approve"], bool):
        raise _fail(path, "approve", "'approve' must be a boolean", event_id, "invalid_type")
    reason = _string(obj, "reason", path, event_id, max_chars=4096, required=False)
    item_id = _string(obj, "id", path, event_id, max_chars=256, required=False)
    return McpApprovalResponseItem(request, obj["approve"], reason, item_id)
