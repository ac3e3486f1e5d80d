"""The /v1/realtime WebSocket glue against a scripted fake engine (no models): framing,
formats, ordering, barge-in, limits, auth, bad input and cleanup. The spoken conversation on
the real models is tests/test_realtime_openai.py."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from seetalk.config import ServerConfig
from server.realtime_codec import PCMU, ULAW_DECODE, encode_samples
from server.realtime_ws import RealtimeLimits


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(event) if isinstance(event, dict) else event)

    async def until(self, type_: str, within: float = 5.0, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                event = json.loads(await self.ws.recv())
                self.seen.append(event)
                if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                    return event

    async def error(self, event_id: str | None = None) -> dict[str, Any]:
        return (await self.until("error"))["error"]

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["type"] == type_]


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


async def open_client(server: Any, query: str = "?model=seetalk-test", **kw: Any) -> Client:
    ws = await connect(f"{server.ws}/realtime{query}", max_size=None, **kw)
    client = Client(ws)
    return client


@pytest.fixture
async def fake(realtime_server, realtime_fake_engine):
    server = await realtime_server(realtime_fake_engine)
    return server, realtime_fake_engine


async def test_session_created_first_with_model_and_formats(fake):
    server, engine = fake
    c = await open_client(server)
    first = json.loads(await c.ws.recv())
    assert first["type"] == "session.created"
    s = first["session"]
    assert s["model"] == "seetalk-test"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert engine.sessions[0].settings.output_rate == 24000
    await c.ws.close()


async def test_append_decodes_pcm16_into_push_audio(fake):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    sent = (np.arange(4800) % 2000 - 1000).astype(np.int16)
    await c.send({"type": "input_audio_buffer.append", "audio": b64(sent[:2400])})
    await c.send({"type": "input_audio_buffer.append", "audio": b64(sent[2400:])})
    await c.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    await c.until("input_audio_buffer.committed")
    got = engine.sessions[0].pushed
    assert [(r, ch) for _, r, ch in got] == [(24000, 1), (24000, 1)]
    assert np.array_equal(np.concatenate([s for s, _, _ in got]), sent)
    await c.ws.close()


async def test_reply_audio_streams_before_its_done_events(fake):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    await c.send({"type": "response.create"})
    done = await c.until("response.done")
    assert done["response"]["status"] == "completed"
    types = [e["type"] for e in c.seen]
    deltas = c.of("response.output_audio.delta")
    assert len(deltas) == 10
    audio = np.concatenate([np.frombuffer(base64.b64decode(d["delta"]), "<i2") for d in deltas])
    assert len(audio) == 24000
    last_delta = max(i for i, t in enumerate(types) if t == "response.output_audio.delta")
    assert last_delta < types.index("response.output_audio.done")
    assert types.index("response.output_audio.done") < types.index("response.done")
    assert {d["item_id"] for d in deltas} == {done["response"]["output"][0]["id"]}
    await c.ws.close()


async def test_g711_formats_in_and_out(fake):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    fmt = {"type": "audio/pcmu"}
    await c.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"format": fmt}, "output": {"format": fmt}},
            },
        }
    )
    updated = await c.until("session.updated")
    assert updated["session"]["audio"]["input"]["format"] == fmt
    assert updated["session"]["audio"]["output"]["format"] == fmt
    tone = (8000 * np.sin(np.arange(800) / 5)).astype(np.int16)
    await c.send(
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(encode_samples(tone, PCMU)).decode(),
        }
    )
    await c.send({"type": "response.create"})
    await c.until("response.done")
    samples, rate, _ = engine.sessions[0].pushed[0]
    assert rate == 8000 and len(samples) == 800
    assert np.max(np.abs(samples.astype(int) - tone)) < 300  # mu-law quantisation
    out = b"".join(base64.b64decode(d["delta"]) for d in c.of("response.output_audio.delta"))
    assert len(out) == 8000  # 1 s at 8 kHz, one byte a sample, the filter tail flushed
    decoded = ULAW_DECODE[np.frombuffer(out, np.uint8)]
    assert np.sqrt(np.mean(decoded[1000:].astype(float) ** 2)) > 3000  # the tone survives
    await c.ws.close()


async def test_barge_in_stops_audio_and_truncate_cuts_the_item(fake):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    engine.sessions[0].reply_chunks = 40
    engine.sessions[0].hold = True  # however slow this machine, the reply is still open
    await c.send({"type": "response.create"})
    first = await c.until("response.output_audio.delta")
    loud = (20000 * np.sin(np.arange(2400) / 3)).astype(np.int16)
    await c.send({"type": "input_audio_buffer.append", "audio": b64(loud)})
    await c.until("input_audio_buffer.speech_started")
    done = await c.until("response.done")
    assert done["response"]["status"] == "cancelled"
    sent_ms = (
        sum(len(base64.b64decode(d["delta"])) // 2 for d in c.of("response.output_audio.delta"))
        * 1000
        // 24000
    )
    # no audio of the cancelled response after response.done
    await c.send(
        {"type": "conversation.item.retrieve", "item_id": first["item_id"], "event_id": "r1"}
    )
    await c.until("conversation.item.retrieved")
    types = [e["type"] for e in c.seen]
    assert "response.output_audio.delta" not in types[types.index("response.done") :]
    # truncating past what was sent is refused; within it, the item is cut
    await c.send(
        {
            "type": "conversation.item.truncate",
            "item_id": first["item_id"],
            "content_index": 0,
            "audio_end_ms": sent_ms + 500,
            "event_id": "t1",
        }
    )
    err = await c.error()
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "audio_end_ms", "t1")
    await c.send(
        {
            "type": "conversation.item.truncate",
            "item_id": first["item_id"],
            "content_index": 0,
            "audio_end_ms": 100,
            "event_id": "t2",
        }
    )
    truncated = await c.until("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 100 and truncated["transcript"] == "word0"
    await c.ws.close()


BAD_INPUT = [
    ("{not json", "invalid_json", None, None),
    ("[1, 2]", "invalid_event", None, None),
    ({"type": "input_audio_buffer.explode", "event_id": "e1"}, "unknown_event_type", "type", "e1"),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "x",
            "content_index": 0,
            "event_id": "e2",
        },
        "missing_required_parameter",
        "audio_end_ms",
        "e2",
    ),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "x",
            "content_index": 0,
            "audio_end_ms": "10",
            "event_id": "e3",
        },
        "invalid_type",
        "audio_end_ms",
        "e3",
    ),
    (
        {"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "e4"},
        "invalid_base64",
        "audio",
        "e4",
    ),
    (
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(b"abc").decode(),
            "event_id": "e5",
        },
        "invalid_audio",
        None,
        "e5",
    ),
    (
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(b"RIFF\0\0\0\0WAVEfmt ").decode(),
            "event_id": "e6",
        },
        "invalid_audio",
        None,
        "e6",
    ),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "item_nope",
            "content_index": 0,
            "audio_end_ms": 10,
            "event_id": "e7",
        },
        "item_not_found",
        "item_id",
        "e7",
    ),
    (
        {"type": "conversation.item.delete", "item_id": "item_nope", "event_id": "e8"},
        "item_not_found",
        "item_id",
        "e8",
    ),
    (
        {"type": "conversation.item.retrieve", "item_id": "item_nope", "event_id": "e9"},
        "item_not_found",
        "item_id",
        "e9",
    ),
    (
        {"type": "session.update", "session": {"type": "realtime", "bogus": 1}, "event_id": "e10"},
        "unknown_parameter",
        "session.bogus",
        "e10",
    ),
    (
        {
            "type": "conversation.item.create",
            "event_id": "e11",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_image", "image_url": "data:image/png;base64,aGVsbG8="}],
            },
        },
        "invalid_image",
        "item.content[0].image_url",
        "e11",
    ),
]


@pytest.mark.parametrize("raw,code,param,event_id", BAD_INPUT)
async def test_bad_input_is_an_error_event_and_the_session_goes_on(
    fake, raw, code, param, event_id
):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    await c.send(raw)
    err = await c.error()
    assert (err["type"], err["code"], err["param"], err["event_id"]) == (
        "invalid_request_error",
        code,
        param,
        event_id,
    ), err
    assert err["message"]
    await c.send({"type": "response.create"})  # and the session goes on
    assert (await c.until("response.done"))["response"]["status"] == "completed"
    await c.ws.close()


async def test_commit_of_an_empty_buffer(fake):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    await c.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        }
    )
    await c.until("session.updated")
    await c.send({"type": "input_audio_buffer.commit", "event_id": "c0"})
    err = await c.error()
    assert err["code"] == "input_audio_buffer_commit_empty" and err["event_id"] == "c0"
    assert engine.sessions[0].client_events[-1].type == "input_audio_buffer.commit"
    await c.send({"type": "input_audio_buffer.append", "audio": b64(np.ones(480, np.int16))})
    await c.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    await c.until("input_audio_buffer.committed")
    await c.ws.close()


async def test_message_size_limits(realtime_server, realtime_fake_engine):
    limits = RealtimeLimits(max_message_bytes=10_000, close_message_bytes=50_000)
    server = await realtime_server(realtime_fake_engine, limits=limits)
    c = await open_client(server)
    await c.until("session.created")
    big = {
        "type": "input_audio_buffer.append",
        "event_id": "big",
        "audio": b64(np.zeros(6000, np.int16)),
    }
    await c.send(big)
    err = await c.error()
    assert err["code"] == "message_too_large"
    await c.send({"type": "input_audio_buffer.append", "audio": b64(np.zeros(480, np.int16))})
    await c.send({"type": "response.create"})
    await c.until("response.done")  # goes on
    await c.send("x" * 60_000)
    with pytest.raises(websockets.ConnectionClosed) as info:
        await c.until("never")
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await asyncio.sleep(0.1)
    assert realtime_fake_engine.sessions[0].closed


async def test_append_rate_limit(realtime_server, realtime_fake_engine):
    limits = RealtimeLimits(audio_rate_s=1.0, audio_burst_s=2.0)
    server = await realtime_server(realtime_fake_engine, limits=limits)
    c = await open_client(server)
    await c.until("session.created")
    second = b64(np.zeros(24000, np.int16))
    for i in range(4):
        await c.send({"type": "input_audio_buffer.append", "audio": second, "event_id": f"a{i}"})
    err = await c.error()
    assert err["code"] == "rate_limit_exceeded" and err["event_id"] == "a2"
    pushed = realtime_fake_engine.sessions[0].pushed
    assert sum(len(s) for s, _, _ in pushed) == 2 * 24000  # the burst, no more
    await c.ws.close()


async def test_auth_bearer_subprotocol_and_token(realtime_server, realtime_fake_engine):
    import httpx

    server = await realtime_server(realtime_fake_engine, ServerConfig(api_key="sekret"))
    with pytest.raises(websockets.InvalidStatus) as info:
        await open_client(server)
    assert info.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        await open_client(server, additional_headers={"Authorization": "Bearer wrong"})
    c = await open_client(server, additional_headers={"Authorization": "Bearer sekret"})
    await c.until("session.created")
    await c.ws.close()
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{server.http}/session-token", headers={"Authorization": "Bearer sekret"}
        )
    token = r.json()["token"]
    c = await open_client(server, subprotocols=["realtime", f"openai-insecure-api-key.{token}"])
    assert c.ws.subprotocol == "realtime"
    await c.until("session.created")
    await c.ws.close()
    with pytest.raises(websockets.InvalidStatus):  # single use
        await open_client(server, additional_headers={"Authorization": f"Bearer {token}"})


async def test_session_limit_is_shared_and_freed(realtime_server, realtime_fake_engine):
    server = await realtime_server(realtime_fake_engine, ServerConfig(max_sessions=1))
    c = await open_client(server)
    await c.until("session.created")
    with pytest.raises(websockets.InvalidStatus) as info:
        await open_client(server)
    assert info.value.response.status_code == 503
    assert len(server.state.peers) == 1
    await c.ws.close()
    for _ in range(100):
        if not server.state.peers:
            break
        await asyncio.sleep(0.02)
    assert not server.state.peers
    c = await open_client(server)
    await c.until("session.created")
    await c.ws.close()


async def test_disconnect_mid_reply_leaks_nothing(fake):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    engine.sessions[0].reply_chunks = 100
    await c.send({"type": "response.create"})
    await c.until("response.output_audio.delta")
    sid = engine.sessions[0].id
    await c.ws.close()
    for _ in range(100):
        if engine.sessions[0].closed and not server.state.peers:
            break
        await asyncio.sleep(0.02)
    assert engine.sessions[0].closed and not server.state.peers
    await asyncio.sleep(0.05)
    leaked = [t for t in asyncio.all_tasks() if sid in t.get_name() and not t.done()]
    assert not leaked


async def test_server_side_close_ends_the_socket(fake):
    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    conn = next(iter(server.state.peers.values()))
    await asyncio.wait_for(conn.close("hangup"), 5)
    with pytest.raises(websockets.ConnectionClosed):
        await c.until("never")
    assert engine.sessions[0].closed and conn.stats()["transport"] == "websocket"


async def test_camera_frames_extension(fake):
    import cv2

    server, engine = fake
    c = await open_client(server)
    await c.until("session.created")
    ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
    await c.send({"type": "seetalk.input_image.append", "image_url": url})
    await c.send(
        {
            "type": "seetalk.input_image.append",
            "event_id": "i2",
            "image_url": "data:image/jpeg;base64,"
            + base64.b64encode(b"\xff\xd8\xff" + b"junk" * 10).decode(),
        }
    )
    err = await c.error()
    assert err["code"] == "invalid_image" and err["event_id"] == "i2"
    assert [shape for shape, _ in engine.sessions[0].video] == [(48, 64, 3)]
    await c.ws.close()


async def test_openai_package_drives_the_socket(fake):
    from openai import AsyncOpenAI

    server, engine = fake
    client = AsyncOpenAI(api_key="x", websocket_base_url=server.ws)
    async with client.realtime.connect(model="seetalk") as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.model == "seetalk"
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {"input": {"turn_detection": None}},
            }
        )
        updated = await conn.recv()
        assert updated.type == "session.updated"
        assert updated.session.audio.input.turn_detection is None
        await conn.input_audio_buffer.append(audio=b64(np.ones(4800, np.int16)))
        await conn.input_audio_buffer.commit()
        got: list[str] = []
        async for event in conn:
            got.append(event.type)
            if event.type == "response.done":
                break
        assert "response.output_audio.delta" in got and "input_audio_buffer.committed" in got
