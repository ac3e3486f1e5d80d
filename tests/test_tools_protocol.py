"""Function tools in the protocol, without models: the one parser accepts tools,
``tool_choice``, ``parallel_tool_calls`` and the function items, and refuses bad ones with
clear codes; the session's tool registry announces calls in the protocol's order, keeps
calls and outputs in history in order, and refuses outputs without a call; the filler's
timing on a fake clock; the model-side pieces (schemas for grammars, OpenAI request fields
and streamed tool-call deltas, plain-text history for small templates)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conversation.history import Conversation, Item
from conversation.protocol import ItemCreate, ResponseCreate, SessionUpdate, parse_client_event
from conversation.tool_schema import (
    MAX_DESCRIPTION_CHARS,
    MAX_TOOLS,
    FunctionCallOutputItem,
    ToolOptions,
)
from conversation.tools import Filler, SessionTools, valid_arguments
from llm.backend import ChatMessage, openai_messages
from llm.tools import (
    ToolCallDelta,
    ToolSpec,
    ToolUse,
    call_schema,
    openai_tool_fields,
    plain_messages,
    tool_call_deltas,
)
from seetalk.errors import InvalidEvent

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["city"],
    },
}
TIME = {"type": "function", "name": "get_time", "description": "The time now.", "parameters": {}}


def parse(obj: dict) -> object:
    return parse_client_event(json.dumps(obj), max_bytes=1 << 20)


def session_update(**session: object) -> SessionUpdate:
    e = parse({"type": "session.update", "session": {"type": "realtime", **session}})
    assert isinstance(e, SessionUpdate)
    return e


def refused(obj: dict) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(obj)
    return info.value


# --- the parser ------------------------------------------------------------------------------


def test_session_update_with_tools_parses_and_round_trips() -> None:
    e = session_update(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    opts = e.tool_options
    assert [t.name for t in opts.tools or ()] == ["get_weather", "get_time"]
    assert opts.tool_choice == "required" and opts.parallel_tool_calls is False
    again = parse(e.to_dict())
    assert isinstance(again, SessionUpdate) and again.tool_options.to_dict() == opts.to_dict()
    named = session_update(tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    assert named.tool_options.tool_choice == "get_weather"


def test_response_create_takes_tool_choice_and_tools() -> None:
    e = parse({"type": "response.create", "response": {"tool_choice": "none"}})
    assert isinstance(e, ResponseCreate) and e.tool_options.tool_choice == "none"
    e = parse({"type": "response.create", "response": {"tools": [TIME], "tool_choice": "auto"}})
    assert isinstance(e, ResponseCreate) and e.tool_options.tools is not None


@pytest.mark.parametrize(
    ("tools", "code", "param"),
    [
        (
            [{**WEATHER, "parameters": {"type": "object", "properties": {"city": {"type": 5}}}}],
            "invalid_tool_schema",
            "session.tools[0].parameters",
        ),
        ([{**WEATHER, "parameters": {"type": "string"}}], "invalid_tool_schema", None),
        ([{**WEATHER, "parameters": "city"}], "invalid_tool_schema", None),
        ([WEATHER, WEATHER], "duplicate_tool_name", "session.tools[1].name"),
        (
            [{**TIME, "name": f"t{i}"} for i in range(MAX_TOOLS + 1)],
            "too_many_tools",
            "session.tools",
        ),
        (
            [{**WEATHER, "description": "x" * (MAX_DESCRIPTION_CHARS + 1)}],
            "tool_description_too_long",
            "session.tools[0].description",
        ),
        ([{**WEATHER, "name": "bad name!"}], "invalid_value", "session.tools[0].name"),
        ([{**WEATHER, "extra": 1}], "unknown_parameter", "session.tools[0].extra"),
        ([{"type": "function", "description": "no name"}], "missing_required_parameter", None),
        ([{"type": "web_search"}], "unsupported", "session.tools[0].type"),
    ],
)
def test_bad_tool_definitions_get_clear_errors(tools: list, code: str, param: str | None) -> None:
    err = refused(
        {
            "type": "session.update",
            "event_id": "ev1",
            "session": {"type": "realtime", "tools": tools},
        }
    )
    assert err.code == code, err.message
    assert err.event_id == "ev1"
    if param is not None:
        assert err.param == param


def test_bad_tool_choice_is_refused() -> None:
    assert refused(
        {"type": "session.update", "session": {"tools": [WEATHER], "tool_choice": "always"}}
    ).param == ("session.tool_choice")
    err = refused(
        {
            "type": "session.update",
            "session": {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
        }
    )
    assert err.param == "session.tool_choice" and "nope" in err.message


def test_function_items_parse_and_bad_ones_are_refused() -> None:
    e = parse(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"t": 20}'},
        }
    )
    assert isinstance(e, ItemCreate) and isinstance(e.item, FunctionCallOutputItem)
    assert e.to_dict()["item"]["call_id"] == "call_1"
    no_call_id = {"type": "function_call_output", "output": "x"}
    err = refused({"type": "conversation.item.create", "item": no_call_id})
    assert err.code == "missing_required_parameter" and err.param == "item.call_id"
    bad_args = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}
    err = refused({"type": "conversation.item.create", "item": bad_args})
    assert err.param == "item.arguments"


# --- the session's registry ------------------------------------------------------------------


def test_calls_are_announced_in_order_and_kept_in_history_with_their_outputs() -> None:
    events: list[dict] = []
    tools = SessionTools(events.append)
    tools.update(session_update(tools=[WEATHER], tool_choice="required").tool_options)
    assert tools.describe()["tool_choice"] == "required"
    use = tools.use_for_reply()
    assert use is not None and use.forced
    conv = Conversation()
    conv.add(Item("u1", "user", "Weather in Paris?"))
    # pieces of one call, as a server streams them
    tools.on_delta("resp_1", ToolCallDelta(0, call_id="call_a", name="get_weather"))
    tools.on_delta("resp_1", ToolCallDelta(0, arguments='{"city":'))
    tools.on_delta("resp_1", ToolCallDelta(0, arguments='"Paris"}'))
    items = tools.finish("resp_1", conv, 1)
    types = [e["type"] for e in events]
    assert types == [
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
    ]
    done = events[3]
    assert done["call_id"] == "call_a" and done["name"] == "get_weather"
    assert json.loads(done["arguments"]) == {"city": "Paris"}
    assert items[0]["type"] == "function_call" and items[0]["status"] == "completed"
    assert valid_arguments(tools.tools[0], done["arguments"])

    out = tools.add_item(conv, FunctionCallOutputItem("call_a", '{"temp_c": 21}'))
    conv.add(out)
    conv.add(Item("a2", "assistant", "It is 21 degrees."))
    msgs = conv.messages("Be brief.", 20)
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    assert msgs[2].tool_calls[0].call_id == "call_a" and msgs[3].tool_call_id == "call_a"
    wire = openai_messages(msgs)
    assert wire[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert wire[3] == {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 21}'}
    # small templates: plain text turns, in the same order
    plain = plain_messages(msgs)
    assert [m.role for m in plain] == ["system", "user", "assistant", "user", "assistant"]
    assert plain[3].text.startswith("Result of get_weather:")


def test_outputs_without_a_call_or_twice_are_refused() -> None:
    tools = SessionTools(lambda e: None)
    conv = Conversation()
    with pytest.raises(InvalidEvent) as info:
        tools.add_item(conv, FunctionCallOutputItem("call_nope", "x"))
    assert info.value.code == "unknown_call_id" and info.value.param == "item.call_id"
    tools.on_delta("r", ToolCallDelta(0, call_id="c1", name="get_time", arguments="{}"))
    tools.finish("r", conv, 1)
    conv.add(tools.add_item(conv, FunctionCallOutputItem("c1", "noon")))
    with pytest.raises(InvalidEvent) as info:
        tools.add_item(conv, FunctionCallOutputItem("c1", "again"))
    assert info.value.code == "duplicate_call_output"


def test_a_cancelled_reply_announces_no_call() -> None:
    events: list[dict] = []
    tools = SessionTools(events.append)
    tools.on_delta("r", ToolCallDelta(0, call_id="c1", name="get_time", arguments="{}"))
    tools.discard("r")
    assert tools.finish("r", Conversation(), 1) == [] and events == []


def test_response_override_applies_to_one_response_and_named_choice_is_checked() -> None:
    tools = SessionTools(lambda e: None)
    tools.update(session_update(tools=[WEATHER, TIME], tool_choice="required").tool_options)
    tools.next_response(ToolOptions(tool_choice="none"))
    assert tools.use_for_reply() is None  # this response: no tools
    use = tools.use_for_reply()  # the next: the session's again
    assert use is not None and use.choice == "required"
    with pytest.raises(InvalidEvent) as info:
        tools.check(ToolOptions(tools=(ToolSpec("other"),)))  # required stays, fine
        tools.check(ToolOptions(tool_choice="missing"))
    assert info.value.param == "session.tool_choice"


# --- filler timing (pure, fake clock) ----------------------------------------------------------


def test_filler_is_said_once_after_a_second_and_never_for_a_fast_tool() -> None:
    slow = Filler(after_s=1.0)
    slow.start(now=10.0)
    assert slow.deadline == 11.0
    assert [slow.due(t) for t in (10.2, 10.99, 11.0, 11.5, 30.0)] == [
        False,
        False,
        True,
        False,
        False,
    ]
    assert slow.deadline is None
    fast = Filler(after_s=1.0)
    fast.start(now=0.0)
    assert not fast.due(0.5)
    fast.answered()
    assert not fast.due(5.0) and fast.deadline is None


# --- the model side --------------------------------------------------------------------------


def test_call_schema_accepts_only_valid_calls_of_the_allowed_tools() -> None:
    params: dict = WEATHER["parameters"]  # type: ignore[assignment]
    specs = (ToolSpec("get_weather", "", params), ToolSpec("get_time", "", {}))
    schema = call_schema(ToolUse(specs, "required"))
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Paris"}}, schema)
    for bad in (
        {"name": "get_weather", "arguments": {}},  # city is required
        {"name": "nope", "arguments": {}},
        {"name": "get_weather", "arguments": {"city": "x" * 1000}},  # bounded for the grammar
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    named = call_schema(ToolUse(specs, "get_time"))
    assert named["properties"]["name"] == {"const": "get_time"}


def test_openai_request_fields_and_streamed_deltas() -> None:
    use = ToolUse((ToolSpec("get_time", "now", {"type": "object"}),), "get_time", False)
    fields = openai_tool_fields(use)
    assert fields["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert fields["tools"][0]["function"]["name"] == "get_time"
    assert fields["parallel_tool_calls"] is False
    chunk = {
        "choices": [
            {
                "delta": {
                    "tool_calls": [
                        {"index": 0, "id": "c1", "function": {"name": "get_time", "arguments": ""}},
                        {"index": 1, "function": {"arguments": '{"a"'}},
                        "junk",
                    ]
                }
            }
        ]
    }
    assert tool_call_deltas(chunk) == [
        ToolCallDelta(0, "c1", "get_time", ""),
        ToolCallDelta(1, None, None, '{"a"'),
    ]
    assert tool_call_deltas({"choices": [{"delta": {"content": "hi"}}]}) == []


def test_a_tool_message_names_its_call() -> None:
    with pytest.raises(ValueError):
        ChatMessage("tool", "x")
    with pytest.raises(ValueError):
        ChatMessage("user", "x", tool_call_id="c")
