"""Server-side tools: a real MCP server (written here with the SDK's MCPServer, the 2.x name
of FastMCP, started over stdio) is listed and called by seetalk; in a session on the real
voice models the model's call runs, its output enters history, and the answer is spoken; a
slow tool gives exactly one filler; a barge-in while a slow tool runs keeps the call and
its output in history and cancels the reply that would have followed; a failing tool
becomes the output plus an error event.

The model is scripted here (it calls the tool when the last message is the person's,
answers in words otherwise): what is tested is the pipeline around the call, not what a
135M model decides. The real model's calls are tested in tests/test_tools_realtime.py."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from session_run import LIMIT_S, SessionRun

from conversation.mcp import McpServer, python_command
from conversation.server_tools import FunctionTool, time_tool
from llm.backend import ChatMessage, GenerationSettings
from llm.tools import ToolCallDelta, ToolSpec, ToolUse

SERVER = textwrap.dedent(
    '''
    import asyncio
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("weather")

    @app.tool()
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"Sunny and 21 degrees in {city}."

    @app.tool()
    async def slow_lookup(query: str) -> str:
        """A lookup that takes a while."""
        await asyncio.sleep(float(query) if query.replace(".", "").isdigit() else 2.5)
        return f"found {query}"

    if __name__ == "__main__":
        app.run()
    '''
)


@pytest.fixture
def mcp_script(tmp_path):
    path = tmp_path / "weather_server.py"
    path.write_text(SERVER)
    return str(path)


class ScriptedModel:
    """Calls ``tool`` with ``arguments`` when the person spoke last; otherwise answers."""

    name = "scripted"
    supports_images = False

    def __init__(self, tool: str, arguments: dict[str, Any]) -> None:
        self.tool = tool
        self.arguments = json.dumps(arguments)
        self.calls: list[list[ChatMessage]] = []

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncIterator[str]:
        self.calls.append(list(messages))
        yield "Here is what I found."

    async def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncIterator[str | ToolCallDelta]:
        self.calls.append(list(messages))
        if messages[-1].role == "user" and any(t.name == self.tool for t in tools.tools):
            yield ToolCallDelta(0, name=self.tool, arguments=self.arguments)
        else:
            yield "Here is what I found."

    async def aclose(self) -> None:
        return None


async def test_mcp_server_is_listed_and_called_over_stdio(mcp_script):
    events: list[dict[str, Any]] = []
    server = McpServer("weather", python_command(mcp_script), emit=events.append)
    try:
        tools = await asyncio.wait_for(server.start(), LIMIT_S)
        names = sorted(t.spec.name for t in tools)
        assert names == ["weather__get_weather", "weather__slow_lookup"]
        spec = next(t.spec for t in tools if t.spec.name == "weather__get_weather")
        assert spec.parameters["required"] == ["city"] and spec.description
        assert [e["type"] for e in events] == [
            "mcp_list_tools.in_progress",
            "mcp_list_tools.completed",
        ]
        out = await next(t for t in tools if t.spec.name == spec.name).call({"city": "Oslo"})
        assert out == "Sunny and 21 degrees in Oslo."
    finally:
        await server.aclose()
    only = McpServer("w", python_command(mcp_script), allowed_tools=("get_weather",), prefix=False)
    try:
        assert [t.spec.name for t in await only.start()] == ["get_weather"]
    finally:
        await only.aclose()


class Run(SessionRun):
    """A session on the real voice models with a scripted model; events collected."""

    def spoken(self) -> list[str]:
        done = self.of("response.output_audio_transcript.done")
        return [e["transcript"] for e in done if e["transcript"]]  # calls-only: no words


def is_output(e: dict[str, Any]) -> bool:
    return e["type"] == "conversation.item.done" and e["item"]["type"] == "function_call_output"


async def test_session_calls_an_mcp_tool_and_speaks_the_answer(engine, mcp_script):
    model = ScriptedModel("weather__get_weather", {"city": "Paris"})
    server = McpServer("weather", python_command(mcp_script))
    try:
        tools = await asyncio.wait_for(server.start(), LIMIT_S)
        async with Run(engine, model) as run:
            run.session.add_server_tools(list(tools))
            await run.ask("What is the weather in Paris?")
            output = await run.wait(is_output, "function_call_output")
            assert output["item"]["output"] == "Sunny and 21 degrees in Paris."
            await run.wait(
                lambda e: e["type"] == "response.output_audio_transcript.done" and e["transcript"],
                "a spoken answer",
            )
            calls = run.of("response.function_call_arguments.done")
            assert calls[0]["name"] == "weather__get_weather"
            assert run.spoken() == ["Here is what I found."]  # no filler for a fast tool
            # the follow-up saw the call and its output, in order, after the question
            roles = [m.role for m in model.calls[-1]]
            assert roles[-3:] == ["user", "assistant", "tool"]
            kinds = [i.kind for i in run.session.conversation.items]
            assert kinds[-3:] == ["function_call", "function_call_output", "message"]
    finally:
        await server.aclose()


async def test_a_slow_tool_gives_one_filler(engine):
    async def slow(arguments: dict[str, Any]) -> str:
        await asyncio.sleep(3.0)
        return "done"

    tool = FunctionTool(ToolSpec("slow_lookup", "Slow.", {"type": "object"}), slow)
    async with Run(engine, ScriptedModel("slow_lookup", {})) as run:
        run.session.add_server_tools([tool])
        await run.ask("Look it up please.")
        await run.wait(is_output, "function_call_output")
        await run.wait(
            lambda e: (
                e["type"] == "response.output_audio_transcript.done"
                and e["transcript"] == "Here is what I found."
            ),
            "the answer after the filler",
        )
        assert run.spoken() == ["One moment.", "Here is what I found."]
        assert run.session.tool_runs.fillers_said == 1


async def test_barge_in_during_a_slow_tool_keeps_call_and_output_and_drops_the_follow_up(
    engine, timeline
):
    finished = asyncio.Event()

    async def slow(arguments: dict[str, Any]) -> str:
        await asyncio.sleep(4.0)
        finished.set()
        return "booked table 7"

    tool = FunctionTool(ToolSpec("book_table", "Book.", {"type": "object"}), slow)
    async with Run(engine, ScriptedModel("book_table", {})) as run:
        run.session.add_server_tools([tool])
        run.session.tool_runs.filler_after_s = 3600.0  # this test is about the barge-in
        await run.ask("Book a table please.")
        await run.wait(lambda e: e["type"] == "response.function_call_arguments.done", "the call")
        speech = timeline([(0.2, "Actually, wait a moment please.")], 2.5)
        run.session.push_audio(speech, 16_000)
        await run.wait(lambda e: e["type"] == "input_audio_buffer.speech_started", "speech")
        output = await run.wait(is_output, "function_call_output")
        assert output["item"]["output"] == "booked table 7" and finished.is_set()
        assert run.session.tool_runs.follow_ups_skipped == 1
        kinds = [i.kind for i in run.session.conversation.items]
        assert kinds.count("function_call") == 1 and kinds.count("function_call_output") == 1
        assert kinds.index("function_call") < kinds.index("function_call_output")
        assert "Here is what I found." not in run.spoken()[:1]


async def test_a_failing_tool_becomes_the_output_and_an_error_event(engine):
    async def broken(arguments: dict[str, Any]) -> str:
        raise RuntimeError("the booking system is down")

    tool = FunctionTool(ToolSpec("book_table", "Book.", {"type": "object"}), broken)
    async with Run(engine, ScriptedModel("book_table", {})) as run:
        run.session.add_server_tools([tool, time_tool("Europe/Paris")])
        await run.ask("Book a table please.")
        output = await run.wait(is_output, "function_call_output")
        assert "the booking system is down" in json.loads(output["item"]["output"])["error"]
        err = await run.wait(lambda e: e["type"] == "error", "an error event")
        assert err["error"]["code"] == "tool_failed"
        await run.wait(
            lambda e: e["type"] == "response.output_audio_transcript.done" and e["transcript"],
            "the answer",
        )


async def test_time_tool_says_the_time_in_the_zone():
    tool = time_tool("Asia/Tokyo", clock=lambda: 0.0)
    assert await tool.call({}) == "Thursday 01 January 1970, 09:00 (Asia/Tokyo)"
    assert np.isfinite(0.0)
