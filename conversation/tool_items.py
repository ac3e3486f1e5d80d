"""Function calls and their outputs as history items: their protocol shape and what the
model sees of them. :mod:`conversation.history` calls these for items whose ``kind`` is
``function_call`` or ``function_call_output`` (pure; no I/O)."""

from __future__ import annotations

from typing import Any

from llm.backend import ChatMessage, ToolCall

CALL = "function_call"
OUTPUT = "function_call_output"
# MCP items (conversation/mcp.py): their protocol fields are kept as given in ``data``
MCP_LIST = "mcp_list_tools"
MCP_CALL = "mcp_call"
MCP_APPROVAL_REQUEST = "mcp_approval_request"
MCP_APPROVAL_RESPONSE = "mcp_approval_response"
MCP_KINDS = frozenset({MCP_LIST, MCP_CALL, MCP_APPROVAL_REQUEST, MCP_APPROVAL_RESPONSE})


def mcp_event_item(kind: str, item_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """An MCP item as the protocol shows it."""
    return {"id": item_id, "object": "realtime.item", "type": kind, **data}


def event_item(
    kind: str, item_id: str, call_id: str, name: str, arguments: str, output: str, status: str
) -> dict[str, Any]:
    """The item as the protocol shows it (``conversation.item.*``, ``response.output``)."""
    if kind == CALL:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": CALL,
            "status": status,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": OUTPUT,
        "call_id": call_id,
        "output": output,
    }


def append_message(
    out: list[ChatMessage], kind: str, call_id: str, name: str, arguments: str, output: str
) -> None:
    """Add a call or an output to the chat the model sees. Calls in a row become one
    assistant message (parallel calls); an output whose call is not in the chat (cut off by
    ``history_turns``) becomes a user line, never an orphan ``tool`` message.

    An ``mcp_call`` is its call and its result; a denied approval (an
    ``mcp_approval_response`` with a ``name``) is the call and the denial; listings and
    approval requests are not shown."""
    if kind == MCP_CALL or (kind == MCP_APPROVAL_RESPONSE and name):
        append_message(out, CALL, call_id, name, arguments, "")
        append_message(out, OUTPUT, call_id, name, "", output or "(no output yet)")
        return
    if kind in MCP_KINDS:
        return
    if kind == CALL:
        call = ToolCall(call_id, name, arguments)
        last = out[-1] if out else None
        if last is not None and last.role == "assistant" and last.tool_calls:
            out[-1] = ChatMessage("assistant", last.text, tool_calls=(*last.tool_calls, call))
        else:
            out.append(ChatMessage("assistant", "", tool_calls=(call,)))
        return
    known = any(c.call_id == call_id for m in out for c in m.tool_calls)
    if known:
        out.append(ChatMessage("tool", output, tool_call_id=call_id))
    else:
        out.append(ChatMessage("user", f"Result of {name or 'a tool'}: {output}"))
