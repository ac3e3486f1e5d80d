"""Two loose ends of tool use (docs/tools.md, "One name, one tool" and "tool_choice").

- **Name clashes**: a client's function tool may not take the name of a tool the session
  runs itself: a switched-on built-in (``get_current_time``, ``look``) or a tool of an MCP
  server offered to the session (``LABEL__...``, the whole prefix, listed or not). The
  ``session.update`` / ``response.create`` is refused whole (``duplicate_tool_name``, the
  param names the tool), nothing changes, and the session goes on. Two MCP servers never
  offer one name: their tools are prefixed by their labels, which are unique.
- **tool_choice naming an MCP tool** (``{"type": "mcp", "server_label", "name"?}``, the GA
  shape): parsed by the one parser, checked against the session's MCP servers, and forced
  the way a named function is: the model gets the named ``LABEL__tool`` choice (passed on as
  ``tool_choice`` to an OpenAI-compatible server, grammar-constrained for the local model),
  or ``required`` over the server's tools when no name is given.

A real FastMCP server (tests/test_tools_mcp.py's script) over stdio, the official ``openai``
client over the WebSocket, and a scripted model that records what it was offered: what is
tested is the pipeline. One test runs the real local model and asserts only that its forced
call is a valid call of the chosen tool.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from test_tools_mcp import SERVER
from test_tools_mcp_protocol import (
    LIMIT_S,
    QUESTION,
    Client,
    _connect,
    _free_port,
    _listening,
    local_model_calls_get_weather,
)

from conversation.mcp import McpRegistry, python_command
from conversation.protocol import parse_client_object
from conversation.session import Sessions
from conversation.tool_schema import McpChoice
from llm.backend import ChatMessage, GenerationSettings
from llm.tools import ToolCallDelta, ToolUse, openai_tool_fields
from seetalk.config import BuiltinTools, McpConfig, ServerConfig
from seetalk.errors import ConfigError, InvalidEvent

WEATHER_FN = {
    "type": "function",
    "name": "weather_report",
    "description": "A weather report.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ANSWER = "Here is what I found."


@pytest.fixture
def mcp_script(tmp_path):
    path = tmp_path / "weather_server.py"
    path.write_text(SERVER)
    return str(path)


class RecordingModel:
    """Records each reply's :class:`ToolUse`; when a call is forced and the person spoke
    last, calls the first tool it may call (with a city); otherwise answers in words."""

    name = "scripted"
    supports_images = False

    def __init__(self) -> None:
        self.uses: list[ToolUse | None] = []

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncIterator[str]:
        self.uses.append(None)
        yield ANSWER

    async def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncIterator[str | ToolCallDelta]:
        self.uses.append(tools)
        if tools.forced and messages[-1].role == "user":
            yield ToolCallDelta(0, name=tools.callable[0].name, arguments='{"city": "Paris"}')
        else:
            yield ANSWER

    async def aclose(self) -> None:
        return None


async def _server(realtime_server, engine, model: Any, cfg: ServerConfig) -> Any:
    eng = copy.copy(engine)
    eng.backend = model
    srv = await realtime_server(Sessions(eng, cfg.tools), cfg)  # built-ins as serve gives them
    await asyncio.wait_for(_listening(srv.port), LIMIT_S)  # the lifespan started the servers
    return srv


def _weather(script: str, **kw: Any) -> ServerConfig:
    return ServerConfig(
        mcp=McpConfig(servers=(f"weather={' '.join(python_command(script))}",), **kw),
        tools=BuiltinTools(("time", "look")),
    )


async def _refused(c: Client, session: dict[str, Any]) -> dict[str, Any]:
    answer = await c.update(session)
    assert answer["type"] == "error", answer
    return answer["error"]


# --- name clashes ----------------------------------------------------------------------------


async def test_a_function_named_like_a_builtin_or_an_mcp_tool_is_refused_and_nothing_changes(
    realtime_server, engine, mcp_script
):
    model = RecordingModel()
    cfg = _weather(mcp_script, allow_urls=("http://127.0.0.1:1/",))
    srv = await _server(realtime_server, engine, model, cfg)
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("mcp_list_tools.completed")
        first = await c.update({"tools": [WEATHER_FN], "tool_choice": "auto"})
        assert first["type"] == "session.updated", first
        before = first["session"]["tools"]

        clashes = [
            ([{**WEATHER_FN, "name": "get_current_time"}], "session.tools[0].name", "built-in"),
            ([WEATHER_FN, {**WEATHER_FN, "name": "look"}], "session.tools[1].name", "built-in"),
            (  # a tool the deployment's MCP server lists
                [{**WEATHER_FN, "name": "weather__get_weather"}],
                "session.tools[0].name",
                "'weather'",
            ),
            (  # any name in its namespace, listed or not
                [{**WEATHER_FN, "name": "weather__anything"}],
                "session.tools[0].name",
                "weather__TOOL",
            ),
            (  # a session's own server, declared in the same update (not listed yet)
                [
                    {"type": "mcp", "server_label": "web", "server_url": "http://127.0.0.1:1/m"},
                    {**WEATHER_FN, "name": "web__search"},
                ],
                "session.tools[1].name",
                "'web'",
            ),
        ]
        for tools, param, says in clashes:
            mark = len(c.seen)
            err = await _refused(c, {"tools": tools, "instructions": "Be brief."})
            assert (err["code"], err["param"]) == ("duplicate_tool_name", param), err
            assert says in err["message"], err
            assert not c.of("session.updated", mark) and not c.of(
                "mcp_list_tools.in_progress", mark
            )

        # response.create is refused whole too: no response starts
        mark = len(c.seen)
        await conn.response.create(response={"tools": [{**WEATHER_FN, "name": "look"}]})
        err = (await c.type("error"))["error"]
        assert (err["code"], err["param"]) == ("duplicate_tool_name", "response.tools[0].name")
        assert not c.of("response.created", mark)

        # nothing changed; the session goes on, and the model sees each name once
        again = await c.update({"tool_choice": "auto"})
        assert again["type"] == "session.updated"
        assert again["session"]["tools"] == before
        assert again["session"]["instructions"] != "Be brief."
        await c.ask(QUESTION)
        await c.spoken_answer()
        use = model.uses[-1]
        assert use is not None
        names = [t.name for t in use.tools]
        assert len(names) == len(set(names))
        assert {"weather_report", "get_current_time", "look", "weather__get_weather"} <= set(names)


def test_the_one_parser_still_refuses_two_functions_of_one_name_and_reads_mcp_choices():
    def parse(session: dict[str, Any]) -> Any:
        return parse_client_object({"type": "session.update", "session": session})

    with pytest.raises(InvalidEvent) as bad:
        parse({"tools": [WEATHER_FN, {**WEATHER_FN, "description": "again"}]})
    assert (bad.value.code, bad.value.param) == ("duplicate_tool_name", "session.tools[1].name")

    opts = parse({"tool_choice": {"type": "mcp", "server_label": "weather"}}).tool_options
    assert opts.tool_choice == McpChoice("weather")
    assert opts.to_dict()["tool_choice"] == {"type": "mcp", "server_label": "weather"}
    named = {"type": "mcp", "server_label": "weather", "name": "get_weather"}
    opts = parse({"tool_choice": named}).tool_options
    assert opts.tool_choice == McpChoice("weather", "get_weather")
    assert opts.to_dict()["tool_choice"] == named
    null = parse({"tool_choice": {**named, "name": None}}).tool_options
    assert null.tool_choice == McpChoice("weather")

    for choice, code, param in [
        ({"type": "mcp"}, "missing_required_parameter", "session.tool_choice.server_label"),
        ({**named, "extra": 1}, "unknown_parameter", "session.tool_choice.extra"),
        ({**named, "name": 5}, "invalid_type", "session.tool_choice.name"),
        ({"type": "web_search"}, "invalid_value", "session.tool_choice.type"),
    ]:
        with pytest.raises(InvalidEvent) as bad:
            parse({"tool_choice": choice})
        assert (bad.value.code, bad.value.param) == (code, param), bad.value.message

    # a label ending in '_' could give another server's name (a_ + __ + b == a + __ + _b)
    with pytest.raises(InvalidEvent) as bad:
        parse({"tools": [{"type": "mcp", "server_label": "a_"}]})
    assert bad.value.param == "session.tools[0].server_label"


async def test_a_deployment_server_name_ending_in_underscore_is_refused():
    registry = McpRegistry(McpConfig(servers=("w_=python never_started.py",)))
    with pytest.raises(ConfigError) as bad:
        await registry.start()
    assert "w_" in bad.value.message and not registry.servers


# --- tool_choice naming an MCP tool ----------------------------------------------------------


async def test_tool_choice_mcp_forces_the_tool_like_a_named_function(
    realtime_server, engine, mcp_script
):
    model = RecordingModel()
    srv = await _server(realtime_server, engine, model, _weather(mcp_script))
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("mcp_list_tools.completed")
        decl = {"type": "mcp", "server_label": "weather", "require_approval": "never"}
        choice = {"type": "mcp", "server_label": "weather", "name": "get_weather"}
        updated = await c.update({"tools": [WEATHER_FN, decl], "tool_choice": choice})
        assert updated["type"] == "session.updated", updated
        assert updated["session"]["tool_choice"] == choice

        # the reply must call weather__get_weather: a named choice, as for a function
        mark = len(c.seen)
        await c.ask(QUESTION)
        completed = await c.type("response.mcp_call.completed")
        await c.spoken_answer()
        forced = next(u for u in model.uses if u is not None and u.forced)
        assert forced.choice == "weather__get_weather"
        assert [t.name for t in forced.callable] == ["weather__get_weather"]
        assert "weather_report" in [t.name for t in forced.tools]  # the others stay offered
        fields = openai_tool_fields(forced)  # what an OpenAI-compatible server is sent
        assert fields["tool_choice"] == {
            "type": "function",
            "function": {"name": "weather__get_weather"},
        }
        call = next(
            e["item"]
            for e in c.of("response.output_item.done", mark)
            if e["item"]["id"] == completed["item_id"]
        )
        assert (call["server_label"], call["name"]) == ("weather", "get_weather")
        assert call["output"] == "Sunny and 21 degrees in Paris."
        assert model.uses[-1] is None or not model.uses[-1].active  # the answer: no call
        assert not c.of("error", mark)

        # a server without a name: required, over that server's tools only
        model.uses.clear()
        mark = len(c.seen)
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": QUESTION}],
            }
        )
        await conn.response.create(
            response={"tool_choice": {"type": "mcp", "server_label": "weather"}}
        )
        await c.type("response.mcp_call.completed")
        await c.spoken_answer()
        forced = model.uses[0]
        assert forced is not None and forced.choice == "required"
        assert sorted(t.name for t in forced.tools) == [
            "weather__get_weather",
            "weather__slow_lookup",
        ]
        assert openai_tool_fields(forced)["tool_choice"] == "required"

        # a choice the session cannot honour is refused whole; nothing changes
        bad = [
            ({"tool_choice": {"type": "mcp", "server_label": "nobody"}}, "server_label"),
            ({"tool_choice": {**choice, "name": "no_such_tool"}}, "name"),
            (  # a tool the declaration does not allow
                {"tools": [{**decl, "allowed_tools": ["slow_lookup"]}], "tool_choice": choice},
                "name",
            ),
            (  # a function choice does not name an MCP tool
                {"tool_choice": {"type": "function", "name": "weather__get_weather"}},
                None,
            ),
        ]
        for session, field in bad:
            err = await _refused(c, {**session, "instructions": "Be brief."})
            assert err["code"] == "invalid_value", err
            assert err["param"] == "session.tool_choice" + (f".{field}" if field else ""), err
        await conn.response.create(
            response={"tool_choice": {"type": "mcp", "server_label": "nobody"}}
        )
        err = (await c.type("error"))["error"]
        assert err["param"] == "response.tool_choice.server_label"
        same = await c.update({"parallel_tool_calls": True})
        assert same["session"]["tool_choice"] == choice
        assert same["session"]["instructions"] != "Be brief."


async def test_a_forced_tool_of_a_server_that_failed_to_list_is_an_error_and_the_reply_goes_on(
    realtime_server, engine
):
    model = RecordingModel()
    url = f"http://127.0.0.1:{_free_port()}/mcp"  # nothing listens there
    cfg = ServerConfig(mcp=McpConfig(allow_urls=(url,)))
    srv = await _server(realtime_server, engine, model, cfg)
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("session.created")
        decl = {"type": "mcp", "server_label": "web", "server_url": url}
        choice = {"type": "mcp", "server_label": "web", "name": "search"}
        updated = await c.update({"tools": [decl], "tool_choice": choice})
        assert updated["type"] == "session.updated", updated  # not listed yet: accepted
        await c.type("mcp_list_tools.failed")
        await c.ask(QUESTION)
        err = await c.until(
            lambda e: e["type"] == "error" and e["error"]["code"] == "mcp_tool_unavailable",
            "the unavailable tool's error",
        )
        assert "web__search" in err["error"]["message"]
        await c.spoken_answer()  # the reply chose freely
        assert all(u is None or not u.forced for u in model.uses)


async def test_the_local_model_makes_a_valid_call_of_the_chosen_mcp_tool(
    realtime_server, engine, mcp_script
):
    """The default local model, forced by ``tool_choice: {"type": "mcp", ...}`` while the
    server offers two tools, calls the chosen one with arguments that match its schema
    (grammar-constrained). What it says is not asserted."""
    decl = {"type": "mcp", "server_label": "weather", "require_approval": "never"}
    choice = {"type": "mcp", "server_label": "weather", "name": "get_weather"}
    await local_model_calls_get_weather(
        realtime_server, engine, mcp_script, {"tools": [decl], "tool_choice": choice}
    )
