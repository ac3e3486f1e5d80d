"""Built-in tools a deployment switches on (``--tools time,look``): a session on the real
voice models (and the real scene describer) whose scripted model calls them. The calls'
outputs enter history and the answer is spoken; ``look`` takes the camera's sharpest recent
frame (scene notes for a text-only model, the frame itself for one that sees); the time is
told in the session's zone, which ``seetalk.timezone`` sets and a bad name is refused.

The model is scripted (it calls the named tools, one per user turn, then answers in words):
what is tested is the pipeline around the calls, not what a small model decides."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from session_run import SessionRun

from conversation.server_tools import NO_CAMERA
from llm.backend import ChatMessage, GenerationSettings
from llm.tools import ToolCallDelta, ToolUse
from seetalk.cli import main
from seetalk.config import BuiltinTools, builtin_tools_from_env
from seetalk.errors import ConfigError, InvalidEvent

ANSWER = "Here is what I found."


class CallingModel:
    """Calls ``tool`` when the person spoke last and the tool is offered; else answers."""

    name = "scripted"

    def __init__(self, tool: str, *, sees: bool = False) -> None:
        self.tool = tool
        self.supports_images = sees
        self.offered: list[tuple[str, ...]] = []
        self.calls: list[list[ChatMessage]] = []

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncIterator[str]:
        self.calls.append(list(messages))
        yield ANSWER

    async def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncIterator[str | ToolCallDelta]:
        self.calls.append(list(messages))
        self.offered.append(tuple(t.name for t in tools.tools))
        if messages[-1].role == "user" and self.tool in self.offered[-1]:
            yield ToolCallDelta(0, name=self.tool, arguments="{}")
        else:
            yield ANSWER

    async def aclose(self) -> None:
        return None


class Run(SessionRun):
    """A session with built-ins on the real voice models and a scripted model."""

    async def output(self) -> str:
        done = await self.wait(is_output, "function_call_output")
        await self.wait(spoken_answer, "the spoken answer")
        return str(done["item"]["output"])


def is_output(e: dict[str, Any]) -> bool:
    return e["type"] == "conversation.item.done" and e["item"]["type"] == "function_call_output"


def spoken_answer(e: dict[str, Any]) -> bool:
    return e["type"] == "response.output_audio_transcript.done" and e["transcript"] == ANSWER


async def test_time_builtin_answers_in_the_sessions_zone(engine):
    model = CallingModel("get_current_time")
    async with Run(engine, model, BuiltinTools(("time", "look"), "Asia/Tokyo")) as run:
        described = run.session.describe()["seetalk"]
        assert [t["name"] for t in described["server_tools"]] == ["get_current_time", "look"]
        assert described["timezone"] == "Asia/Tokyo"  # the deployment's default
        await run.send(
            {"type": "session.update", "session": {"seetalk": {"timezone": "Europe/Paris"}}}
        )
        updated = await run.wait(lambda e: e["type"] == "session.updated", "session.updated")
        assert updated["session"]["seetalk"]["timezone"] == "Europe/Paris"
        await run.ask("What time is it?")
        output = await run.output()
        assert re.fullmatch(r"\w+day \d\d \w+ \d{4}, \d\d:\d\d \(Europe/Paris\)", output), output
        assert model.offered[0] == ("get_current_time", "look")  # no client tools declared
        kinds = [i.kind for i in run.session.conversation.items]
        assert kinds[-3:] == ["function_call", "function_call_output", "message"]
        roles = [m.role for m in model.calls[-1]]  # the follow-up saw call and output
        assert roles[-3:] == ["user", "assistant", "tool"] and model.calls[-1][-1].text == output


async def test_look_builtin_gives_scene_notes_of_a_fresh_frame(engine, coffee_bgr):
    model = CallingModel("look")
    async with Run(engine, model, BuiltinTools(("look",))) as run:
        await run.ask("What do you see?")
        assert await run.output() == NO_CAMERA  # no camera yet: said, not failed
        run.session.push_video(coffee_bgr)
        mark = len(run.events)
        await run.ask("And now?")
        await run.wait(
            lambda e: e in run.events[mark:] and is_output(e), "a second function_call_output"
        )
        out = [e for e in run.events[mark:] if is_output(e)][0]["item"]["output"]
        assert out != NO_CAMERA and "red" in out.lower(), out  # the cup, by the scene notes
        assert not [e for e in run.events if e["type"] == "error"]


async def test_look_builtin_shows_the_frame_to_a_model_that_sees(engine, coffee_bgr):
    model = CallingModel("look", sees=True)
    async with Run(engine, model, BuiltinTools(("look",))) as run:
        run.session.push_video(coffee_bgr)
        await run.ask("What do you see?")
        await run.output()
        follow_up = model.calls[-1]
        assert follow_up[-2].role == "tool" and follow_up[-1].role == "user"
        assert len(follow_up[-1].images) == 1 and follow_up[-1].images[0][:2] == b"\xff\xd8"
        user_items = [e["item"] for e in run.events if e["type"] == "conversation.item.done"]
        assert any(i["type"] == "message" and i["role"] == "user" for i in user_items[-3:])


async def test_bad_time_zone_is_refused_and_the_session_goes_on(engine):
    async with Run(engine, CallingModel("get_current_time"), BuiltinTools(("time",))) as run:
        bad = {"type": "session.update", "session": {"seetalk": {"timezone": "Mars/Olympus"}}}
        with pytest.raises(InvalidEvent) as refused:  # the one parser: every transport alike
            await run.send(bad)
        err = refused.value.to_event_error()
        assert (err["code"], err["param"]) == ("invalid_value", "session.seetalk.timezone")
        assert "IANA" in err["message"]
        assert run.session.settings.timezone == "UTC"
        await run.ask("What time is it?")
        assert (await run.output()).endswith("(UTC)")


def test_deployment_switches_built_ins_on(monkeypatch):
    assert BuiltinTools().names == ()  # default off
    monkeypatch.setenv("SEETALK_TOOLS", "time, look")
    monkeypatch.setenv("SEETALK_TIMEZONE", "America/New_York")
    assert builtin_tools_from_env() == BuiltinTools(("time", "look"), "America/New_York")
    assert builtin_tools_from_env("look", "UTC") == BuiltinTools(("look",), "UTC")  # flags win
    with pytest.raises(ConfigError, match="unknown built-in tool 'weather'"):
        BuiltinTools(("weather",))
    with pytest.raises(ConfigError, match="IANA"):
        BuiltinTools(("time",), "Europe/Nowhere")
    monkeypatch.delenv("SEETALK_TOOLS")
    import server.app

    started: list[Any] = []
    monkeypatch.setattr(server.app, "serve", lambda models, cfg: started.append(cfg))
    assert main(["serve", "--tools", "time,look", "--timezone", "Asia/Tokyo"]) == 0
    assert started[0].tools == BuiltinTools(("time", "look"), "Asia/Tokyo")  # -> Sessions
    assert main(["serve", "--tools", "time,weather", "--port", "1"]) == 2  # refused at start
    assert main(["serve", "--tools", "time", "--timezone", "../etc/passwd", "--port", "1"]) == 2
