"""A client that hoards memory, through the real server and the real session (issue 9, 2):
images in history are bounded by a byte budget, appended audio in manual turns by the
longest utterance, and the session goes on after both."""

from __future__ import annotations

import asyncio
import base64
import json

import cv2
import numpy as np
import pytest
from websockets.asyncio.client import connect

from conversation import turns

pytestmark = pytest.mark.models


class _Client:
    def __init__(self, ws):
        self.ws = ws

    async def send(self, event):
        await self.ws.send(json.dumps(event))

    async def until(self, type_, within=30.0):
        async with asyncio.timeout(within):
            while True:
                event = json.loads(await self.ws.recv())
                if event["type"] == type_:
                    return event


def _jpeg_data_url(seed: int, side: int = 900) -> tuple[str, int]:
    noise = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = jpeg.tobytes()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode(), len(data)


async def test_history_images_stay_within_the_budget(realtime_server, engine):
    server = await realtime_server(engine)
    async with connect(f"{server.ws}/realtime", max_size=None) as ws:
        client = _Client(ws)
        await client.until("session.created")
        session = next(iter(server.state.peers.values())).session
        url, size = _jpeg_data_url(0)
        budget = 4 * size + size // 2  # room for four images (32 MiB in service)
        session.conversation.max_image_bytes = budget
        for i in range(12):
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": f"photo {i}"},
                            {"type": "input_image", "image_url": url},
                        ],
                    },
                }
            )
            await client.until("conversation.item.done")
        assert session.conversation.image_bytes <= budget
        assert session.conversation.images_dropped >= 8
        texts = [item.text for item in session.conversation.items]
        assert texts == [f"photo {i}" for i in range(12)]  # the words stay, only images go
        # the session goes on
        await client.send({"type": "conversation.item.retrieve", "item_id": "nope"})
        assert (await client.until("error"))["error"]["code"] == "item_not_found"


async def test_manual_turn_audio_is_bounded(realtime_server, engine, monkeypatch):
    monkeypatch.setattr(turns, "MAX_UTTERANCE_S", 3.0)  # 120 s in service
    server = await realtime_server(engine)
    async with connect(f"{server.ws}/realtime", max_size=None) as ws:
        client = _Client(ws)
        await client.until("session.created")
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        await client.until("session.updated")
        second = np.zeros(24_000, np.int16).astype("<i2").tobytes()
        for _ in range(6):  # 6 s appended, twice the longest utterance
            await client.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(second).decode()}
            )
        err = await client.until("error")
        assert err["error"]["code"] == "input_audio_buffer_full"
        session = next(iter(server.state.peers.values())).session
        assert session._recognizer.audio_s <= 3.0 + 0.5  # never more than the longest utterance
        # the session goes on: the commit ends the turn, which is answered
        await client.send({"type": "input_audio_buffer.commit"})
        await client.until("input_audio_buffer.speech_stopped")
        await client.until("response.done")
