"""Tool calls from a live OpenAI-compatible server: ``seetalk models serve --roles llm`` (its
app, in-process on a loopback port, the default SmolLM2-135M) takes ``tools``,
``tool_choice`` and ``parallel_tool_calls`` and answers with ``tool_calls``, streamed as
OpenAI streams them and whole, read here by the official ``openai`` client. Then the same
server is the language model of a seetalk server (``--llm-base-url``), and the ``openai``
Realtime client that declares a function tool with ``tool_choice: required`` gets a
``function_call`` with valid JSON arguments, returns the output and hears the answer.

What the model says is not asserted, only that each step of the pipeline happened and that
the call's arguments match the tool's schema (the server's grammar guarantees it)."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest
import uvicorn
from test_tools_realtime import LIMIT_S, PARAMS, QUESTION, WEATHER, openai_round_trip

pytestmark = pytest.mark.models

CHAT_TOOL: Any = {  # the realtime tests' weather tool, as chat completions take it
    "type": "function",
    "function": {k: v for k, v in WEATHER.items() if k != "type"},
}


@pytest.fixture
async def llm_server() -> AsyncIterator[str]:
    """``seetalk models serve --roles llm`` on a free loopback port: its base URL."""
    from models.serve import ServedModels, create_models_app
    from seetalk.config import ModelConfig

    models = await asyncio.to_thread(ServedModels.load, ModelConfig(), ["llm"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        create_models_app(models), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_models_serve_streams_tool_calls_as_openai_does(llm_server):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="x", base_url=llm_server)
    messages: Any = [{"role": "user", "content": QUESTION}]
    stream = await client.chat.completions.create(
        model="any",
        messages=messages,
        tools=[CHAT_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=64,
        stream=True,
    )
    pieces: list[Any] = []
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        pieces += choice.delta.tool_calls or []
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and pieces
    first = pieces[0]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function and first.function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    jsonschema.validate(json.loads(arguments), PARAMS)

    whole = await client.chat.completions.create(
        model="any",
        messages=messages,
        tools=[CHAT_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
    )
    assert whole.choices[0].finish_reason == "tool_calls"
    calls = whole.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    jsonschema.validate(json.loads(calls[0].function.arguments), PARAMS)  # type: ignore[union-attr]

    # the call and its output in the history; tool_choice none: an answer in words
    history = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature_c": 21}'},
    ]
    answer = await client.chat.completions.create(
        model="any", messages=history, tools=[CHAT_TOOL], tool_choice="none", max_tokens=24
    )
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


BAD_TOOLS: list[tuple[dict[str, Any], str | None]] = [
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
        "tools",
    ),
    ({"tools": [CHAT_TOOL], "tool_choice": "always"}, "tool_choice"),
    (
        {"tools": [CHAT_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
        "tool_choice",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [CHAT_TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "tool", "content": "21"}]}, None),  # a tool message names its call
]


async def test_models_serve_refuses_bad_tools_with_400(llm_server):
    async with httpx.AsyncClient(timeout=LIMIT_S) as http:
        for fields, param in BAD_TOOLS:
            body = {"messages": [{"role": "user", "content": "hi"}], **fields}
            resp = await http.post(f"{llm_server}/chat/completions", json=body)
            assert resp.status_code == 400, (fields, resp.text)
            assert resp.json()["error"]["param"] == param, fields
        ok = await http.post(
            f"{llm_server}/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert ok.status_code == 200  # the server goes on


async def test_realtime_client_round_trip_through_a_live_openai_compatible_server(
    llm_server, engine, realtime_server
):
    from llm.factory import make_backend
    from seetalk.config import ModelConfig

    eng = copy.copy(engine)  # the voice models loaded once; the LLM is the live server
    eng.backend = make_backend(ModelConfig(llm_base_url=llm_server), lambda cfg: None)  # type: ignore[arg-type,return-value]
    await openai_round_trip(await realtime_server(eng))
