"""A function tool's whole round trip on the real default models, as a client sees it:
the official ``openai`` client over the WebSocket API, and an aiortc peer over the data
channel. The client declares a tool with ``tool_choice: required``; the default local model
(SmolLM2-135M, grammar-constrained) calls it with JSON arguments that match the schema; the
client returns an output and asks for a response; the answer is spoken. What the model says
is not asserted, only that the pipeline did each step."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import numpy as np
import pytest

pytestmark = pytest.mark.models

PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": PARAMS,
}
SESSION = {
    "type": "realtime",
    "instructions": "You are a helpful voice assistant. Answer in one short sentence.",
    "tools": [WEATHER],
    "tool_choice": "required",
    "max_output_tokens": 40,
}
QUESTION = "What is the weather in Paris right now?"
OUTPUT = json.dumps({"city": "Paris", "temperature": 21, "unit": "celsius", "sky": "sunny"})
LIMIT_S = 600  # a guard against a hang on a loaded 2-core machine, not a latency target


def check_call(done: dict[str, Any]) -> dict[str, Any]:
    """``response.done`` of the first response: one function_call, valid arguments."""
    assert done["response"]["status"] == "completed", done
    calls = [o for o in done["response"]["output"] if o["type"] == "function_call"]
    assert len(calls) == 1, done
    call = calls[0]
    assert call["name"] == "get_weather" and call["call_id"]
    jsonschema.validate(json.loads(call["arguments"]), PARAMS)
    return call


async def test_openai_client_declares_a_tool_gets_a_call_and_hears_the_answer(
    realtime_server, engine
):
    await openai_round_trip(await realtime_server(engine))


async def openai_round_trip(srv: Any) -> None:
    """The official ``openai`` client on ``srv`` (a ``realtime_server``) declares the weather
    tool with ``tool_choice: required``, gets one valid call, returns its output and hears the
    answer (tests/test_tools_live_server.py runs it against a live model server too)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="x", websocket_base_url=srv.ws)
    seen: list[dict[str, Any]] = []

    async def until(type_: str) -> dict[str, Any]:
        async for event in conn:
            seen.append(event.model_dump())
            if event.type == "error":
                raise AssertionError(f"error event: {seen[-1]}")
            if event.type == type_:
                return seen[-1]
        raise AssertionError(f"connection closed before {type_}")

    async with client.realtime.connect(model="seetalk") as conn:
        await until("session.created")
        await conn.session.update(session=SESSION)  # type: ignore[arg-type]
        updated = await until("session.updated")
        assert updated["session"]["tools"][0]["name"] == "get_weather"
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": QUESTION}],
            }
        )
        await conn.response.create()
        done = await asyncio.wait_for(until("response.done"), LIMIT_S)
        call = check_call(done)
        added = [
            e
            for e in seen
            if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"
        ]
        assert added and added[0]["item"]["call_id"] == call["call_id"]
        args_done = [e for e in seen if e["type"] == "response.function_call_arguments.done"]
        assert args_done[0]["arguments"] == call["arguments"]

        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": call["call_id"], "output": OUTPUT}
        )
        await until("conversation.item.done")
        mark = len(seen)
        await conn.response.create(response={"tool_choice": "none"})
        answer = await asyncio.wait_for(until("response.done"), LIMIT_S)
        assert answer["response"]["status"] == "completed", answer
        later = seen[mark:]
        audio = [e for e in later if e["type"] == "response.output_audio.delta"]
        assert audio, "the answer was not spoken"
        spoken = [e for e in later if e["type"] == "response.output_audio_transcript.done"]
        assert spoken and spoken[0]["transcript"].strip()
        assert not [o for o in answer["response"]["output"] if o["type"] == "function_call"]


async def test_aiortc_peer_does_the_same_round_trip_over_the_data_channel(
    seetalk_server, engine, webrtc_client_module
):
    srv = await seetalk_server(engine)
    async with webrtc_client_module.Client(srv.url) as client:
        await client.wait_for("session.created", 30)
        client.mic.say(np.zeros(4_800, np.int16))
        client.send({"type": "session.update", "session": SESSION})
        await client.wait_for("session.updated", 30)
        client.say_text(QUESTION)
        done = await client.wait_for("response.done", LIMIT_S)
        call = check_call(done)
        assert client.of_type("response.function_call_arguments.done")
        client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": OUTPUT,
                },
            }
        )
        await client.wait_for("conversation.item.done", 30, where=_is_output)
        client.send({"type": "response.create", "response": {"tool_choice": "none"}})
        started = await client.wait_for("output_audio_buffer.started", LIMIT_S)
        answer = await client.wait_for(
            "response.done", LIMIT_S, where=lambda e: e["response"]["id"] == started["response_id"]
        )
        assert answer["response"]["status"] == "completed"
        heard = client.recorder.first_loud_after(started["_t"] - 1.0)
        assert heard is not None, "no reply audio arrived on the track"
        assert not client.of_type("error"), client.of_type("error")


def _is_output(event: dict[str, Any]) -> bool:
    return event["item"]["type"] == "function_call_output"
