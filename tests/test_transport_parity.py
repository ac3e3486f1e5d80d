"""The WebSocket API and the WebRTC data channel speak one dialect: the same events, good and
bad, get the same answers (event types, error codes, params, event ids) on both.

Both transports run the real session on the embedded models (no reply is asked for, so no
model speaks); only the transport differs. After each event a sentinel (a retrieve of an
item that does not exist, answered by the session) marks the end of its answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamTrack
from websockets.asyncio.client import connect

from server.realtime_ws import RealtimeLimits

pytestmark = pytest.mark.models

PCM = base64.b64encode(b"\x01\x00" * 480).decode()


def _update(session: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {"type": "session.update", "event_id": event_id, "session": session}


def _ext(ext: dict[str, Any], event_id: str) -> dict[str, Any]:
    return _update({"type": "realtime", "seetalk": ext}, event_id)


def _item(role: str, content: list[dict[str, Any]], event_id: str, **item: Any) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "event_id": event_id,
        "item": {"type": "message", "role": role, "content": content, **item},
    }


def _bomb() -> str:
    ihdr = b"IHDR" + (30000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0"
    png = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + b"\0" * 4
    return "data:image/png;base64," + base64.b64encode(png).decode()


EVENTS: list[dict[str, Any] | str] = [
    "{not json",
    "[" * 100_000,
    '"just a string"',
    {"type": "no.such.event", "event_id": "e1"},
    _update({"type": "realtime", "bogus": 1}, "e2"),
    _update({"type": "realtime", "instructions": 3}, "e3"),
    _ext({"temperature": 5}, "e4"),
    _ext({"max_output_tokens": 0}, "e5"),
    _ext({"max_output_tokens": 10**9}, "e6"),
    _ext({"history_turns": -1}, "e7"),
    _ext({"camera_max_side": 0}, "e8"),
    _ext({"jpeg_quality": 1000}, "e9"),
    _ext({"max_keyframes": 9}, "e10"),
    _ext({"instructions": "x" * 100_001}, "e11"),
    _ext({"output_rate": 0}, "e12"),
    _ext({"output_rate": 24_000}, "e13"),
    _ext({"turn": {"silence_ms": "slow"}}, "e14"),
    _ext({"bogus": True}, "e15"),
    _ext({"temperature": 0.5, "history_turns": 4, "turn": {"min_speech_ms": 80}}, "e16"),
    _update({"type": "realtime", "audio": {"input": {"turn_detection": None}}}, "e17"),
    {"type": "input_audio_buffer.commit", "event_id": "e18"},
    _item("user", [{"type": "input_audio", "audio": PCM, "transcript": "hello"}], "e19"),
    _item("user", [{"type": "input_audio", "audio": PCM}], "e20"),
    _item(
        "assistant",
        [{"type": "output_audio", "transcript": "hi there"}],
        "e21",
        id="item_asst",
    ),
    _item("user", [{"type": "output_text", "text": "x"}], "e22"),
    {
        "type": "conversation.item.truncate",
        "event_id": "e23",
        "item_id": "item_nope",
        "content_index": 0,
        "audio_end_ms": 10,
    },
    {"type": "conversation.item.retrieve", "event_id": "e24", "item_id": "item_asst"},
    {"type": "conversation.item.retrieve", "event_id": "e25", "item_id": "item_nope"},
    {"type": "conversation.item.delete", "event_id": "e26", "item_id": "item_asst"},
    {"type": "seetalk.input_image.append", "event_id": "e27", "image_url": _bomb()},
    {"type": "response.cancel", "event_id": "e28"},
]


def _answer(event: dict[str, Any]) -> tuple[Any, ...]:
    """What must match across transports: the type, and for errors the code, param and
    event id; for items the role."""
    if event["type"] == "error":
        e = event["error"]
        return ("error", e["type"], e["code"], e["param"], e["event_id"])
    item = event.get("item")
    return (event["type"], item.get("role") if isinstance(item, dict) else None)


class _Silent(MediaStreamTrack):
    """A microphone that sends nothing: in manual turn mode any audio is input, and this
    test compares events, not audio."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


Send = Callable[[str], Awaitable[None]]
Next = Callable[[], Awaitable[dict[str, Any]]]


async def _ws(server: Any) -> tuple[Send, Next, Callable[[], Awaitable[None]]]:
    ws = await connect(f"{server.ws}/realtime", max_size=None)

    async def send(raw: str) -> None:
        await ws.send(raw)

    async def next_event() -> dict[str, Any]:
        return dict(json.loads(await ws.recv()))

    return send, next_event, ws.close


async def _rtc(server: Any, module: Any) -> tuple[Send, Next, Callable[[], Awaitable[None]]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    client = module.Client(server.url, on_event=queue.put_nowait)
    client.mic = _Silent()
    await client.connect()

    async def send(raw: str) -> None:
        client.send(raw)

    return send, queue.get, client.close


async def _answers(send: Send, next_event: Next, events: list[Any]) -> list[list[Any]]:
    """For each event, the sorted answers that came before its sentinel's."""
    async with asyncio.timeout(60):
        while (await next_event())["type"] != "session.created":
            pass
        out = []
        for i, event in enumerate(events):
            await send(event if isinstance(event, str) else json.dumps(event))
            sentinel = f"sentinel_{i}"
            await send(
                json.dumps(
                    {"type": "conversation.item.retrieve", "event_id": sentinel, "item_id": "s"}
                )
            )
            got = []
            while True:
                e = await next_event()
                if e["type"] == "error" and e["error"]["event_id"] == sentinel:
                    break
                got.append(_answer(e))
            out.append(sorted(got, key=repr))
        return out


async def test_the_same_events_get_the_same_answers(
    realtime_server, seetalk_server, engine, webrtc_client_module
):
    ws_server = await realtime_server(engine)
    rtc_server = await seetalk_server(engine)
    send, next_event, close = await _ws(ws_server)
    try:
        over_ws = await _answers(send, next_event, EVENTS)
    finally:
        await close()
    send, next_event, close = await _rtc(rtc_server, webrtc_client_module)
    try:
        over_rtc = await _answers(send, next_event, EVENTS)
    finally:
        await close()
    for event, a, b in zip(EVENTS, over_ws, over_rtc, strict=True):
        assert a == b, (str(event)[:120], a, b)
    # and the answers are the ones the protocol promises (a test that can fail)
    codes = [[x[2] for x in a if x[0] == "error"] for a in over_ws]
    assert codes[:4] == [
        ["invalid_json"],
        ["invalid_json"],
        ["invalid_event"],
        ["unknown_event_type"],
    ]
    assert [x[3] for a in over_ws[4:16] for x in a] == [
        "session.bogus",
        "session.instructions",
        "session.seetalk.temperature",
        "session.seetalk.max_output_tokens",
        "session.seetalk.max_output_tokens",
        "session.seetalk.history_turns",
        "session.seetalk.camera_max_side",
        "session.seetalk.jpeg_quality",
        "session.seetalk.max_keyframes",
        "session.seetalk.instructions",
        "session.seetalk.output_rate",
        "session.seetalk.output_rate",
    ]
    assert over_ws[18] == [("session.updated", None)]
    assert codes[20] == ["input_audio_buffer_commit_empty"]
    assert over_ws[21] == [("conversation.item.added", "user"), ("conversation.item.done", "user")]
    assert codes[22] == ["unsupported"]
    assert over_ws[26] == [("conversation.item.retrieved", "assistant")]
    assert codes[27] == ["item_not_found"] and codes[29] == ["invalid_image"]
    assert over_ws[30] == []  # nothing to cancel is not an error


async def test_the_same_rate_limits(realtime_server, seetalk_server, engine, webrtc_client_module):
    burst, rate = 6, 0.001  # six messages, then (practically) no refill
    ws_server = await realtime_server(
        engine, limits=RealtimeLimits(events_per_s=rate, events_burst=burst)
    )
    rtc_server = await seetalk_server(
        engine, peer_options={"events_per_s": rate, "events_burst": burst}
    )
    events = [
        json.dumps({"type": "conversation.item.retrieve", "event_id": f"b{i}", "item_id": "x"})
        for i in range(10)
    ]
    results = []
    for opened in (_ws(ws_server), _rtc(rtc_server, webrtc_client_module)):
        send, next_event, close = await opened
        try:
            async with asyncio.timeout(30):
                # session.created, conversation.created, then rate_limits.updated
                while (await next_event())["type"] != "rate_limits.updated":
                    pass
                for raw in events:
                    await send(raw)
                got = [_answer(await next_event()) for _ in events]
        finally:
            await close()
        results.append(sorted(got, key=repr))
    assert results[0] == results[1]
    codes = [x[2] for x in results[0]]
    assert codes.count("item_not_found") == burst and codes.count("rate_limit_exceeded") == 4
