"""MCP in the Realtime protocol, as a client sees it (docs/tools.md, "MCP servers").

A real FastMCP server (tests/test_tools_mcp.py's script) is configured at start-up
(``ServerConfig.mcp``, what ``seetalk serve --mcp`` sets), started by the app's lifespan,
listed, and called by a session that the official ``openai`` client drives over the
WebSocket: ``mcp_list_tools`` items, then the ``mcp_call`` item's events in order, then the
spoken answer. The approval flow (approve, deny, unknown and second answers), a FastMCP
server in streamable-HTTP mode reached through an allowed ``server_url``, and bad
definitions (each a clear error, the session alive) are tested the same way.

The model is scripted (tests/test_tools_mcp.py's ``ScriptedModel``): it calls the tool when
the person spoke last, and answers in words otherwise. What is tested is the pipeline
around the call, not what a small model decides.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from test_tools_mcp import SERVER, ScriptedModel

from conversation.mcp import McpRegistry, parse_mcp_flag, python_command
from conversation.protocol import parse_client_object
from seetalk.config import McpConfig, ServerConfig
from seetalk.errors import ConfigError, InvalidEvent

LIMIT_S = 300  # a guard against a hang on a loaded 2-core machine, not a latency target
QUESTION = "What is the weather in Paris?"


@pytest.fixture
def mcp_script(tmp_path):
    path = tmp_path / "weather_server.py"
    path.write_text(SERVER)
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _listening(port: int) -> None:
    """Until something accepts connections on the loopback ``port``."""
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


HTTP_SERVER = textwrap.dedent(
    """
    import sys
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("search")

    @app.tool()
    def get_weather(city: str) -> str:
        \"\"\"The current weather in a city.\"\"\"
        return f"Rain and 12 degrees in {city}."

    if __name__ == "__main__":
        app.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
    """
)


@pytest.fixture
async def http_mcp(tmp_path):
    """A FastMCP server in streamable-HTTP mode on a free loopback port: its URL."""
    path = tmp_path / "search_server.py"
    path.write_text(HTTP_SERVER)
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(path),
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(_listening(port), LIMIT_S)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        await proc.wait()


class Client:
    """The official ``openai`` client on a seetalk server; every event kept, in order."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seen: list[dict[str, Any]] = []

    async def until(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            async for event in self.conn:
                self.seen.append(event.model_dump(exclude_none=False))
                if pred(self.seen[-1]):
                    return self.seen[-1]
            raise AssertionError(f"connection closed before {what}")

        try:
            return await asyncio.wait_for(read(), LIMIT_S)
        except TimeoutError:
            raise AssertionError(f"no {what}; events: {self.types()}") from None

    async def type(self, type_: str) -> dict[str, Any]:
        return await self.until(lambda e: e["type"] == type_, type_)

    def types(self, since: int = 0) -> list[str]:
        return [e["type"] for e in self.seen[since:]]

    def of(self, type_: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.seen[since:] if e["type"] == type_]

    async def ask(self, text: str) -> None:
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        await self.conn.conversation.item.create(item=item)
        await self.conn.response.create()

    async def update(self, session: dict[str, Any]) -> dict[str, Any]:
        """``session.update``: ``session.updated``, or the ``error`` that refused it."""
        await self.conn.session.update(session={"type": "realtime", **session})
        return await self.until(lambda e: e["type"] in ("session.updated", "error"), "an answer")

    async def spoken_answer(self) -> dict[str, Any]:
        """Until a response with spoken words is done: its ``response.done``."""
        spoken = await self.until(
            lambda e: e["type"] == "response.output_audio_transcript.done" and e["transcript"],
            "a spoken answer",
        )
        return await self.until(
            lambda e: e["type"] == "response.done" and e["response"]["id"] == spoken["response_id"],
            "the spoken answer's response.done",
        )


async def _server(realtime_server, engine, model: ScriptedModel, mcp: McpConfig) -> Any:
    eng = copy.copy(engine)
    eng.backend = model
    srv = await realtime_server(eng, ServerConfig(mcp=mcp))
    await asyncio.wait_for(_listening(srv.port), LIMIT_S)  # the lifespan started the servers
    return srv


def _connect(srv: Any) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key="x", websocket_base_url=srv.ws).realtime.connect(model="seetalk")


def _in_order(types: list[str], expected: list[str]) -> None:
    """``expected`` occur in ``types`` in this order (other events between them)."""
    at = 0
    for t in expected:
        assert t in types[at:], f"{t} missing after {expected[: expected.index(t)]}: {types}"
        at = types.index(t, at) + 1


# --- a start-up server over stdio, listed and called -----------------------------------------


async def test_startup_server_is_listed_and_called_and_the_answer_spoken(
    realtime_server, engine, mcp_script
):
    model = ScriptedModel("weather__get_weather", {"city": "Paris"})
    cfg = McpConfig(servers=(f"weather={' '.join(python_command(mcp_script))}",))
    srv = await _server(realtime_server, engine, model, cfg)
    assert sorted(t.spec.name for t in srv.state.mcp.servers["weather"].tools) == [
        "weather__get_weather",
        "weather__slow_lookup",
    ]
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("session.created")
        listed = await c.type("mcp_list_tools.completed")
        item = await c.until(
            lambda e: (
                e["type"] == "conversation.item.done" and e["item"]["id"] == listed["item_id"]
            ),
            "the listing item",
        )
        assert item["item"]["type"] == "mcp_list_tools"
        assert item["item"]["server_label"] == "weather"
        names = sorted(t["name"] for t in item["item"]["tools"])
        assert names == ["get_weather", "slow_lookup"]
        schema = next(t for t in item["item"]["tools"] if t["name"] == "get_weather")
        assert schema["input_schema"]["required"] == ["city"]
        _in_order(
            c.types(),
            ["conversation.item.added", "mcp_list_tools.in_progress", "mcp_list_tools.completed"],
        )

        mark = len(c.seen)
        await c.ask(QUESTION)
        first = await c.until(
            lambda e: (
                e["type"] == "response.done"
                and any(o["type"] == "mcp_call" for o in e["response"]["output"])
            ),
            "the response with the call",
        )
        await c.spoken_answer()
        call = next(o for o in first["response"]["output"] if o["type"] == "mcp_call")
        assert call["server_label"] == "weather" and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris"}
        assert call["output"] == "Sunny and 21 degrees in Paris." and call["error"] is None
        rid = first["response"]["id"]
        mine = [
            e
            for e in c.seen[mark:]
            if e.get("item_id") == call["id"]
            or (e.get("item") or {}).get("id") == call["id"]
            or (e["type"] == "response.done" and e["response"]["id"] == rid)
        ]
        assert [e["type"] for e in mine] == [
            "response.output_item.added",
            "conversation.item.added",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            "response.mcp_call.completed",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        assert mine[0]["response_id"] == rid and mine[3]["arguments"] == call["arguments"]
        assert mine[6]["item"]["output"] == call["output"]
        # the spoken answer is a response of its own, after the call's
        _in_order(c.types(mark), ["response.done", "response.created", "response.done"])
        assert not c.of("error", mark)
        # the model saw the call and its result, in order, after the question
        roles = [m.role for m in model.calls[-1]]
        assert roles[-3:] == ["user", "assistant", "tool"]
        assert model.calls[-1][-1].text == "Sunny and 21 degrees in Paris."
        assert model.calls[-1][-2].tool_calls[0].name == "weather__get_weather"


# --- approvals -------------------------------------------------------------------------------


async def _approval_request(c: Client) -> dict[str, Any]:
    await c.ask(QUESTION)
    done = await c.until(
        lambda e: (
            e["type"] == "response.done"
            and any(o["type"] == "mcp_approval_request" for o in e["response"]["output"])
        ),
        "an approval request",
    )
    return next(o for o in done["response"]["output"] if o["type"] == "mcp_approval_request")


async def test_approval_approve_runs_the_call_and_deny_tells_the_model(
    realtime_server, engine, mcp_script
):
    model = ScriptedModel("weather__get_weather", {"city": "Oslo"})
    cfg = McpConfig(servers=(f"weather={' '.join(python_command(mcp_script))}",))
    srv = await _server(realtime_server, engine, model, cfg)
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("mcp_list_tools.completed")
        tool = {
            "type": "mcp",
            "server_label": "weather",
            "allowed_tools": {"tool_names": ["get_weather"]},
            "require_approval": {"never": {"tool_names": ["slow_lookup"]}},
        }
        updated = await c.update({"tools": [tool]})
        assert updated["type"] == "session.updated", updated
        assert updated["session"]["tools"][0]["server_label"] == "weather"
        listing = await c.type("conversation.item.done")  # the declaration's listing
        assert [t["name"] for t in listing["item"]["tools"]] == ["get_weather"]

        # approve: the call runs (its item names the request), then the answer is spoken
        request = await _approval_request(c)
        assert request["server_label"] == "weather" and request["name"] == "get_weather"
        assert json.loads(request["arguments"]) == {"city": "Oslo"}
        assert not c.of("response.mcp_call.in_progress")  # nothing ran yet
        answer = {"type": "mcp_approval_response", "approval_request_id": request["id"]}
        await conn.conversation.item.create(item={**answer, "approve": True})
        await c.until(
            lambda e: (
                e["type"] == "conversation.item.done"
                and e["item"]["type"] == "mcp_approval_response"
            ),
            "the approval in the conversation",
        )
        mark = len(c.seen)
        await conn.response.create()
        completed = await c.type("response.mcp_call.completed")
        await c.spoken_answer()
        done = [
            e
            for e in c.of("response.output_item.done", mark)
            if e["item"]["id"] == completed["item_id"]
        ][0]
        assert done["item"]["approval_request_id"] == request["id"]
        assert done["item"]["output"] == "Sunny and 21 degrees in Oslo."
        assert model.calls[-1][-1].role == "tool"

        # a second answer to the same request, and an unknown request: clear errors
        await conn.conversation.item.create(item={**answer, "approve": False})
        err = await c.type("error")
        assert err["error"]["code"] == "duplicate_approval_response"
        await conn.conversation.item.create(
            item={"type": "mcp_approval_response", "approval_request_id": "nope", "approve": True}
        )
        err = await c.type("error")
        assert err["error"]["code"] == "unknown_approval_request_id"
        assert err["error"]["param"] == "item.approval_request_id"

        # deny: nothing runs; the model is told and answers
        calls_before = len(c.of("response.mcp_call.in_progress"))
        request = await _approval_request(c)
        await conn.conversation.item.create(
            item={
                "type": "mcp_approval_response",
                "approval_request_id": request["id"],
                "approve": False,
                "reason": "not now",
            }
        )
        mark = len(c.seen)
        await conn.response.create()
        await c.spoken_answer()
        assert len(c.of("response.mcp_call.in_progress")) == calls_before
        told = model.calls[-1]
        assert told[-1].role == "tool" and "did not approve" in told[-1].text
        assert "not now" in told[-1].text
        assert not c.of("error", mark)


# --- a session's own server over streamable HTTP ---------------------------------------------


async def test_allowed_server_url_is_reached_over_streamable_http(
    realtime_server, engine, http_mcp
):
    model = ScriptedModel("web__get_weather", {"city": "Bergen"})
    prefix = http_mcp.rsplit("/", 1)[0] + "/"
    srv = await _server(realtime_server, engine, model, McpConfig(allow_urls=(prefix,)))
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("session.created")
        tool = {
            "type": "mcp",
            "server_label": "web",
            "server_url": http_mcp,
            "require_approval": "never",
            "headers": {"X-Test": "1"},
        }
        updated = await c.update({"tools": [tool]})
        assert updated["type"] == "session.updated", updated
        assert updated["session"]["tools"][0]["headers"] is None  # secrets are not echoed
        listed = await c.until(
            lambda e: e["type"] in ("mcp_list_tools.completed", "mcp_list_tools.failed"),
            "the listing",
        )
        assert listed["type"] == "mcp_list_tools.completed", c.of("error")
        await c.ask(QUESTION)
        completed = await c.until(
            lambda e: e["type"] in ("response.mcp_call.completed", "response.mcp_call.failed"),
            "the call",
        )
        assert completed["type"] == "response.mcp_call.completed"
        await c.spoken_answer()
        call = [
            e["item"]
            for e in c.of("response.output_item.done")
            if e["item"]["id"] == completed["item_id"]
        ][0]
        assert call["server_label"] == "web" and call["output"] == "Rain and 12 degrees in Bergen."


async def test_a_startup_url_server_and_the_url_allow_list(http_mcp):
    registry = McpRegistry(McpConfig(servers=(f"web={http_mcp}",)))
    try:
        await asyncio.wait_for(registry.start(), LIMIT_S)
        tool = registry.servers["web"].tools[0]
        assert tool.spec.name == "web__get_weather"
        assert await tool.call({"city": "Oslo"}) == "Rain and 12 degrees in Oslo."
    finally:
        await registry.aclose()
    allow = McpRegistry(McpConfig(allow_urls=("https://mcp.example", "http://10.0.0.1:9/")))
    assert allow.url_allowed("https://mcp.example/mcp")
    assert allow.url_allowed("https://mcp.example")
    assert allow.url_allowed("http://10.0.0.1:9/x")
    assert not allow.url_allowed("https://mcp.example.evil.com/mcp")
    assert not allow.url_allowed("https://mcp.example@evil.com/")
    assert not allow.url_allowed("http://169.254.169.254/latest")
    assert parse_mcp_flag("w=https://a.example/mcp") == ("w", "https://a.example/mcp")
    assert parse_mcp_flag("w=python s.py --x") == ("w", ["python", "s.py", "--x"])
    with pytest.raises(ConfigError):
        McpConfig(servers=("no-command",))
    with pytest.raises(ConfigError):
        McpConfig(allow_urls=("file:///",))


async def test_a_startup_server_that_fails_fails_start_up(tmp_path):
    from fakes import RealtimeFakeEngine

    from server.app import create_app

    missing = tmp_path / "no_such_server"
    cfg = ServerConfig(mcp=McpConfig(servers=(f"broken={missing}",)))
    app = create_app(RealtimeFakeEngine(), cfg)
    with pytest.raises(ConfigError) as failed:
        async with app.router.lifespan_context(app):
            pass
    assert "--mcp broken" in failed.value.message and "did not start" in failed.value.message
    assert app.state.seetalk.startup_error == failed.value.message


# --- bad definitions: clear errors, the session goes on --------------------------------------


BAD = [
    ({"type": "mcp"}, "missing_required_parameter", "session.tools[0].server_label"),
    (
        {"type": "mcp", "server_label": "x", "server_url": "http://169.254.169.254/mcp"},
        "mcp_url_not_allowed",
        "session.tools[0].server_url",
    ),
    (
        {"type": "mcp", "server_label": "nobody"},
        "mcp_server_not_found",
        "session.tools[0].server_label",
    ),
    (
        {"type": "mcp", "server_label": "weather", "allowed_tools": "get_weather"},
        "invalid_type",
        "session.tools[0].allowed_tools",
    ),
    (
        {"type": "mcp", "server_label": "weather", "require_approval": "sometimes"},
        "invalid_value",
        "session.tools[0].require_approval",
    ),
    (
        {"type": "mcp", "server_label": "weather", "require_approval": {"never": ["get_weather"]}},
        "invalid_type",
        "session.tools[0].require_approval.never",
    ),
    (
        {"type": "mcp", "server_label": "weather", "connector_id": "connector_gmail"},
        "unsupported",
        "session.tools[0].connector_id",
    ),
    (
        [
            {"type": "mcp", "server_label": f"u{i}", "server_url": f"http://127.0.0.1:1/{i}"}
            for i in range(2)
        ],
        "too_many_mcp_servers",  # this server allows one per session
        "session.tools[1].server_url",
    ),
]


async def test_bad_mcp_definitions_get_clear_errors_and_the_session_goes_on(
    realtime_server, engine, mcp_script
):
    model = ScriptedModel("weather__get_weather", {"city": "Paris"})
    cfg = McpConfig(servers=(f"weather={' '.join(python_command(mcp_script))}",), max_per_session=1)
    srv = await _server(realtime_server, engine, model, cfg)
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("mcp_list_tools.completed")
        for tool, code, param in BAD:
            err = await c.update({"tools": tool if isinstance(tool, list) else [tool]})
            assert err["type"] == "error", (tool, err)
            assert (err["error"]["code"], err["error"]["param"]) == (code, param), err
            assert err["error"]["message"]
        # response.create refuses a server_url (declared in session.update only)
        url = {"type": "mcp", "server_label": "y", "server_url": "http://127.0.0.1:1/mcp"}
        await conn.response.create(response={"tools": [url]})
        err = await c.type("error")
        assert err["error"]["param"] == "response.tools[0].server_url"
        # the session is alive and takes a good definition
        good = {"type": "mcp", "server_label": "weather", "require_approval": "never"}
        updated = await c.update({"tools": [good]})
        assert updated["type"] == "session.updated"
        await c.ask(QUESTION)
        await c.type("response.mcp_call.completed")
        await c.spoken_answer()


def test_the_one_parser_reads_the_mcp_tool_and_the_approval_item():
    event = parse_client_object(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "tools": [
                    {"type": "function", "name": "f", "parameters": {"type": "object"}},
                    {
                        "type": "mcp",
                        "server_label": "docs",
                        "server_url": "https://mcp.example/mcp",
                        "allowed_tools": ["search"],
                        "require_approval": {"never": {"tool_names": ["search"]}},
                        "authorization": "secret",
                    },
                ],
            },
        }
    )
    opts = event.tool_options  # type: ignore[attr-defined]
    assert [t.name for t in opts.tools] == ["f"]
    (mcp,) = opts.mcp
    assert mcp.server_label == "docs" and mcp.allowed_tools == ("search",)
    assert not mcp.needs_approval("search") and mcp.needs_approval("write")
    assert "secret" not in json.dumps(opts.to_dict())
    with pytest.raises(InvalidEvent) as bad:
        parse_client_object(
            {
                "type": "session.update",
                "session": {
                    "tools": [
                        {"type": "mcp", "server_label": "a"},
                        {"type": "mcp", "server_label": "a"},
                    ]
                },
            }
        )
    assert bad.value.code == "duplicate_tool_name"
    item = parse_client_object(
        {
            "type": "conversation.item.create",
            "item": {"type": "mcp_approval_response", "approval_request_id": "r", "approve": True},
        }
    )
    assert item.item.to_dict()["approve"] is True  # type: ignore[attr-defined]
    with pytest.raises(InvalidEvent) as bad:
        parse_client_object(
            {
                "type": "conversation.item.create",
                "item": {"type": "mcp_approval_response", "approval_request_id": "r"},
            }
        )
    assert bad.value.param == "item.approve"


async def test_the_local_model_makes_a_valid_mcp_call(realtime_server, engine, mcp_script):
    """The default local model (grammar-constrained), told it must call a tool, calls the
    MCP server's tool with arguments that match its schema, and the call runs. What it says
    is not asserted."""
    tool = {
        "type": "mcp",
        "server_label": "weather",
        "allowed_tools": ["get_weather"],
        "require_approval": "never",
    }
    await local_model_calls_get_weather(
        realtime_server, engine, mcp_script, {"tools": [tool], "tool_choice": "required"}
    )


async def local_model_calls_get_weather(
    realtime_server: Any, engine: Any, mcp_script: Any, session: dict[str, Any]
) -> None:
    """A server with the ``weather`` MCP server at start-up; ``session`` (tools and a
    tool_choice that forces a call) is applied and a question asked: the default local model
    calls ``get_weather`` with arguments that match its schema, and the call completes."""
    import jsonschema

    srv = await realtime_server(
        engine,
        ServerConfig(mcp=McpConfig(servers=(f"weather={' '.join(python_command(mcp_script))}",))),
    )
    await asyncio.wait_for(_listening(srv.port), LIMIT_S)
    schema = next(
        t.spec.parameters
        for t in srv.state.mcp.servers["weather"].tools
        if t.remote_name == "get_weather"
    )
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("mcp_list_tools.completed")
        updated = await c.update({**session, "max_output_tokens": 40})
        assert updated["type"] == "session.updated", updated
        await c.ask(QUESTION)
        ended = await c.until(
            lambda e: e["type"] in ("response.mcp_call.completed", "response.mcp_call.failed"),
            "the model's call",
        )
        assert ended["type"] == "response.mcp_call.completed", c.of("error")
        done = await c.until(
            lambda e: (
                e["type"] == "response.output_item.done" and e["item"]["id"] == ended["item_id"]
            ),
            "the call's item",
        )
        call = done["item"]
        assert call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), schema)
        assert call["output"].startswith("Sunny and 21 degrees in ")
        # (the spoken answer that follows is the scripted tests' subject: not waited for)


def test_serve_flags_reach_the_settings(capsys):
    from seetalk.cli import _parser, main

    args = _parser().parse_args(
        ["serve", "--mcp", "w=python s.py", "--mcp", "h=https://a.example/mcp"]
        + ["--mcp-allow-url", "https://b.example/"]
    )
    assert args.mcp == ["w=python s.py", "h=https://a.example/mcp"]
    assert args.mcp_allow_url == ["https://b.example/"]
    assert main(["serve", "--mcp", "no-command"]) == 2  # refused before anything starts
    assert "--mcp takes NAME=COMMAND or NAME=URL" in capsys.readouterr().err


async def test_a_failing_mcp_call_is_the_items_error_and_the_session_goes_on(
    realtime_server, engine, mcp_script
):
    model = ScriptedModel("weather__get_weather", {"town": "Paris"})  # not its schema
    cfg = McpConfig(servers=(f"weather={' '.join(python_command(mcp_script))}",))
    srv = await _server(realtime_server, engine, model, cfg)
    async with _connect(srv) as conn:
        c = Client(conn)
        await c.type("mcp_list_tools.completed")
        await c.ask(QUESTION)
        failed = await c.until(
            lambda e: e["type"] in ("response.mcp_call.completed", "response.mcp_call.failed"),
            "the call's end",
        )
        assert failed["type"] == "response.mcp_call.failed"
        done = await c.until(
            lambda e: (
                e["type"] == "response.output_item.done" and e["item"]["id"] == failed["item_id"]
            ),
            "the call's item",
        )
        assert done["item"]["output"] is None
        assert done["item"]["error"]["type"] == "tool_execution_error"
        assert done["item"]["error"]["message"]
        assert [e["error"]["code"] for e in c.of("error")] == ["tool_failed"]
        await c.spoken_answer()  # the model is told and answers
        assert "error" in model.calls[-1][-1].text
