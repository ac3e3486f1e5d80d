"""A scripted session for WebSocket transport tests, held to the transport contract.

It implements :class:`conversation.contract.TransportSession` (mypy checks it: ``make
typecheck`` includes this file), so a transport test cannot pass against a fake that the
real session would not satisfy. Settings, camera frames and item retrieval go through the
real parser's results and the real settings validation; replies are scripted:
``response.create`` (or a commit) speaks ``reply_chunks`` chunks of 100 ms at 24 kHz, one
word of transcript each; loud input (RMS > 3000) while it speaks is a barge-in
(``speech_started``, audio cleared, ``response.done`` cancelled). Every client event and
pushed audio is recorded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import numpy as np

from conversation import events
from conversation.contract import SessionSource, TransportSession
from conversation.playout import OutputChunk
from conversation.protocol import (
    ClientEvent,
    ImageAppend,
    InputAudioClear,
    InputAudioCommit,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    OutputAudioClear,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)
from conversation.settings import describe_session, settings_for
from seetalk.config import SessionSettings
from seetalk.errors import SeetalkError
from vision.images import decode_image_async


class RealtimeFakeAudioOut:
    """Push playout like ``conversation.playout.AudioOutput.read``; ``clear`` drops it all."""

    def __init__(self) -> None:
        self._queue: deque[OutputChunk] = deque()
        self._ready = asyncio.Event()
        self.buffered_samples = 0

    def write(self, chunk: OutputChunk) -> None:
        self._queue.append(chunk)
        self.buffered_samples += len(chunk.samples)
        self._ready.set()

    def pull(self, n: int) -> np.ndarray:
        raise AssertionError("the fake session is for push playout (the WebSocket API)")

    async def read(self) -> OutputChunk:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        chunk = self._queue.popleft()
        self.buffered_samples -= len(chunk.samples)
        return chunk

    def clear(self) -> None:
        self._queue.clear()
        self.buffered_samples = 0


class RealtimeFakeSession:
    reply_chunks = 10
    hold = False  # keep the reply open after its last chunk until it is cancelled

    def __init__(self, settings: SessionSettings) -> None:
        self.id = events.new_id("sess")
        self.settings = settings
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.audio_out = RealtimeFakeAudioOut()
        self.pushed: list[tuple[np.ndarray, int, int]] = []
        self.video: list[tuple[tuple[int, ...], float | None]] = []
        self.client_events: list[ClientEvent] = []
        self.closed = False
        self.buffered = 0
        self.items: dict[str, dict[str, Any]] = {}
        self._reply: tuple[str, str, asyncio.Task[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def emit(self, event: dict[str, Any]) -> None:
        self.events.put_nowait(event)

    def describe(self) -> dict[str, Any]:
        return describe_session(self.id, self.settings)

    async def start(self) -> None:
        self.emit(events.session_created(self.describe()))

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def push_audio(self, samples: np.ndarray, rate: int, channels: int = 1) -> None:
        self.pushed.append((samples, rate, channels))
        self.buffered += len(samples)
        data = np.asarray(samples, dtype=np.float64)
        rms = float(np.sqrt(np.mean(data**2))) if len(data) else 0.0
        if rms > 3000 and self._reply is not None:
            self.emit(events.speech_started(events.new_id("item"), 0))
            self._cancel("turn_detected")

    def push_video(self, frame: np.ndarray, t: float | None = None) -> None:
        self.video.append((tuple(frame.shape), t))

    def camera_stopped(self) -> None:
        self.video.clear()

    def _error(self, message: str, code: str, event: ClientEvent, param: str | None = None) -> None:
        err = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": event.event_id,
        }
        self.emit(events.error(err))

    async def handle_client_event(self, event: ClientEvent) -> None:
        self.client_events.append(event)
        try:
            await self._handle(event)
        except SeetalkError as exc:
            exc.event_id = exc.event_id or event.event_id
            self.emit(events.error(exc.to_event_error()))

    async def _handle(self, event: ClientEvent) -> None:
        match event:
            case SessionUpdate():
                self.settings = settings_for(self.settings, event)
                self.emit(events.session_updated(self.describe()))
            case ImageAppend():
                self.push_video(await decode_image_async(event.image), 0.0)
            case ItemRetrieve():
                item = self.items.get(event.item_id)
                if item is None:
                    return self._error("no such item", "item_not_found", event, "item_id")
                self.emit({"type": "conversation.item.retrieved", "event_id": "ev", "item": item})
            case InputAudioCommit():
                if not self.buffered:
                    return self._error("buffer empty", "input_audio_buffer_commit_empty", event)
                self.buffered = 0
                self.emit(events.input_committed(events.new_id("item"), None))
                self._start_reply()
            case InputAudioClear():
                self.buffered = 0
                self.emit(events.input_cleared())
            case ItemCreate():
                item = event.item.to_dict()
                item["id"] = item.get("id") or events.new_id("item")
                self.items[item["id"]] = item
                self.emit(events.item_added(item, None))
                self.emit(events.item_done(item, None))
            case ResponseCreate():
                self._start_reply()
            case ResponseCancel():
                self._cancel("client_cancelled")
            case ItemTruncate():
                found = self.items.get(event.item_id)
                if found is None or found.get("role") != "assistant":
                    return self._error("no such item", "item_not_found", event, "item_id")
                heard = " ".join(f"word{i}" for i in range(event.audio_end_ms // 100))
                self.emit(events.item_truncated(event.item_id, event.audio_end_ms, heard))
            case ItemDelete():
                if self.items.pop(event.item_id, None) is None:
                    return self._error("no such item", "item_not_found", event, "item_id")
                self.emit(events.item_deleted(event.item_id))
            case OutputAudioClear():
                self.audio_out.clear()
            case _:
                self._error(f"unknown {event.type}", "unknown_event_type", event, "type")
        return None

    def _start_reply(self) -> None:
        response_id, item_id = events.new_id("resp"), events.new_id("item")
        task = asyncio.get_running_loop().create_task(self._speak(response_id, item_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._reply = (response_id, item_id, task)

    async def _speak(self, response_id: str, item_id: str) -> None:
        item = events.assistant_item(item_id, "")
        self.items[item_id] = item
        self.emit(events.response_created(response_id))
        self.emit(events.output_item_added(response_id, item))
        self.emit(events.item_added(item, None))
        t = np.arange(2400) / 24000
        words = []
        for i in range(self.reply_chunks):
            samples = (8000 * np.sin(2 * np.pi * 300 * t + i)).astype(np.int16)
            self.audio_out.write(OutputChunk(response_id, item_id, samples, i * 2400, 24_000))
            words.append(f"word{i}")
            self.emit(events.audio_transcript_delta(response_id, item_id, f"word{i} "))
            await asyncio.sleep(0.02)
        if self.hold:
            await asyncio.Event().wait()  # until cancelled: the barge-in always lands
        text = " ".join(words)
        done = events.assistant_item(item_id, text, status="completed")
        self.items[item_id] = done
        self.emit(events.audio_transcript_done(response_id, item_id, text))
        self.emit(events.output_item_done(response_id, done))
        self.emit(events.item_done(done, None))
        self.emit(events.response_done(response_id, "completed", [done]))
        self._reply = None

    def _cancel(self, reason: str) -> None:
        if self._reply is None:
            return
        response_id, _item_id, task = self._reply
        self._reply = None
        task.cancel()
        self.audio_out.clear()
        self.emit(events.output_audio_cleared(response_id))
        self.emit(events.response_done(response_id, "cancelled", [], reason=reason))


class RealtimeFakeEngine:
    def __init__(self) -> None:
        self.sessions: list[RealtimeFakeSession] = []

    def new_session(
        self, settings: SessionSettings | None = None, *, playout: str = "paced"
    ) -> RealtimeFakeSession:
        assert playout == "push"
        session = RealtimeFakeSession(settings or SessionSettings())
        self.sessions.append(session)
        return session

    async def aclose(self) -> None:
        return None


def _keeps_the_contract(engine: RealtimeFakeEngine) -> None:
    """Never called: mypy checks here that the fake is what transports expect."""
    source: SessionSource = engine
    session: TransportSession = engine.new_session()
    del source, session
