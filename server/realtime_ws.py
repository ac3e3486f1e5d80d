"""``/v1/realtime``: the WebSocket API that speaks the OpenAI Realtime protocol.

Thin glue between a socket and a :class:`~conversation.session.Session` in ``push`` playout.
:func:`add_realtime_routes` adds the route to the app of :func:`server.app.create_app` and
shares its engine, authenticator, metrics and session limit (its ``peers`` table). One
:class:`RealtimeConnection` per socket owns three tasks in a TaskGroup:

- *receive*: text or binary frames -> :func:`~conversation.protocol.parse_client_event` ->
  appends decoded (pcm16 24 kHz, G.711 mu-law/A-law 8 kHz) into ``session.push_audio``;
  ``seetalk.input_image.append`` frames into ``session.push_video``; everything else into
  ``session.handle_client_event``. Limits: messages above ``max_message_bytes`` are answered
  with an ``error`` and skipped, above ``close_message_bytes`` the socket closes with 1009;
  token buckets on appended audio seconds and on messages (overflow: refuse the event with
  ``rate_limit_exceeded``; nothing queues).
- *send*: ``session.events`` and ``session.audio_out.read()`` chunks (as
  ``response.output_audio.delta``, base64 in the client's output format) and the
  connection's own errors, written by this one task. Audio queued before an event is sent
  before it; chunks of a finished response are dropped. Local errors wait in a bounded
  outbox (overflow: drop the newest, counted).
- *watch*: ends the connection when asked (:meth:`RealtimeConnection.close`) or when the
  client is idle past ``idle_timeout_s``.

On any end, the tasks are cancelled and awaited and the session is closed; cancellation of
the connection is propagated, never swallowed. See docs/realtime.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from seetalk.config import SessionSettings
from seetalk.errors import BadImage, InvalidEvent, SeetalkError, Unauthorized
from conversation import events
from server.auth import bearer
from conversation.protocol import (
    ClientEvent,
    ImageAppend,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    ItemCreate,
    ItemRetrieve,
    ItemTruncate,
    SessionUpdate,
    TurnDetection,
    parse_client_event,
)
from server.ratelimit import TokenBucket
from server.realtime_codec import PCM16, PCM_RATE, AudioEncoder, AudioFormat, decode_audio
from voice.audio import float_to_s16, resample

log = logging.getLogger("seetalk.realtime")

PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # browsers cannot set headers on a WebSocket
ITEM_MIRROR = 256  # conversation items kept for retrieve (overflow: forget the oldest)
FINISHED_RESPONSES = 64  # ids remembered to drop their late audio (overflow: oldest)


@dataclass(frozen=True)
class RealtimeLimits:
    """Per-connection limits.

    - ``max_message_bytes``: larger messages get an ``error`` (``message_too_large``).
    - ``close_message_bytes``: larger messages close the socket with 1009 (uvicorn's own
      ``ws_max_size``, 16 MiB by default, closes above that before we see the message).
    - ``audio_rate_s`` / ``audio_burst_s``: appended audio, in seconds of audio per second
      and at most in one burst (an append that does not fit is refused whole).
    - ``events_per_s`` / ``events_burst``: client messages of any kind.
    - ``outbox``: the connection's own error events waiting to be sent.
    - ``idle_timeout_s``: no client message for this long closes the socket.
    """

    max_message_bytes: int = 4 * 1024 * 1024
    close_message_bytes: int = 16 * 1024 * 1024
    audio_rate_s: float = 4.0
    audio_burst_s: float = 60.0
    events_per_s: float = 200.0
    events_burst: float = 400.0
    outbox: int = 64
    idle_timeout_s: float = 300.0


class _Closed(Exception):
    """Raised inside the connection's TaskGroup to end it."""


class RealtimeConnection:
    """One WebSocket client and its session. Peer-like: ``id``, ``close()``, ``stats()``,
    ``close_reason``, ``on_closed`` (so the server lists, limits and ends it with the
    WebRTC peers)."""

    def __init__(
        self,
        ws: WebSocket,
        session: Any,
        *,
        model: str = "seetalk",
        limits: RealtimeLimits | None = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ws = ws
        self.session = session
        self.id: str = session.id
        self.model = model
        self.limits = limits or RealtimeLimits()
        self.metrics = metrics
        self.clock = clock
        self.close_reason: str | None = None
        self.close_code = 1000
        self.on_closed: list[Callable[[Any], None]] = []
        self.counters: Counter[str] = Counter()
        self.in_format: AudioFormat = PCM16
        self.out_format: AudioFormat = PCM16
        self.last_client_event = clock()
        now = clock()
        self._audio_bucket = TokenBucket(
            self.limits.audio_rate_s, self.limits.audio_burst_s, now=now
        )
        self._event_bucket = TokenBucket(
            self.limits.events_per_s, self.limits.events_burst, now=now
        )
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.limits.outbox)
        self._encoder = AudioEncoder(PCM16)
        self._encoder_item: str | None = None
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sent_ms: OrderedDict[str, float] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._audio_done: OrderedDict[str, None] = OrderedDict()
        self._manual_samples = 0  # turn detection off: samples appended since commit/clear
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._disconnected = False

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until either side ends it, then close the session.

        Cancelling it is safe: the tasks and the session are closed, then the cancellation
        propagates."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive_loop(), name=f"{self.id}:ws-receive")
                tg.create_task(self._send_loop(), name=f"{self.id}:ws-send")
                tg.create_task(self._watch(), name=f"{self.id}:ws-watch")
        except* _Closed:
            pass
        except* Exception as group:
            self.close_reason = self.close_reason or "internal_error"
            self.close_code = 1011
            log.error("realtime %s failed", self.id, exc_info=group)
        finally:
            await self._finish()

    async def close(self, reason: str = "closed", code: int = 1000) -> None:
        """Ask the connection to end and wait until it has. Idempotent."""
        if self.close_reason is None:
            self.close_reason = reason
            self.close_code = code
        self._stop.set()
        await self._done.wait()

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    def stats(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "transport": "websocket",
            "model": self.model,
            "input_format": self.in_format.type,
            "output_format": self.out_format.type,
            **self.counters,
        }

    async def _finish(self) -> None:
        if not self._disconnected:
            with contextlib.suppress(Exception):
                await self.ws.close(self.close_code, (self.close_reason or "")[:120])
        try:
            await self.session.aclose()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # not ours: a session task's cancellation leaked out of aclose (a session bug)
            log.error("realtime %s: session.aclose raised CancelledError", self.id)
        finally:
            self._done.set()
            for callback in self.on_closed:
                try:
                    callback(self)
                except Exception:
                    log.exception("realtime %s: on_closed callback failed", self.id)

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._stop.wait()
            if self._stop.is_set():
                raise _Closed
            if self.clock() - self.last_client_event > self.limits.idle_timeout_s:
                self.close_reason = self.close_reason or "idle_timeout"
                raise _Closed

    # --- client -> session -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.disconnect":
                self._disconnected = True
                self.close_reason = self.close_reason or "client_closed"
                raise _Closed
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            self.last_client_event = self.clock()
            self.counters["events_in"] += 1
            size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "replace"))
            if size > self.limits.close_message_bytes:
                self.close_reason, self.close_code = "message_too_large", 1009
                raise _Closed
            event_id: str | None = None
            try:
                if not self._event_bucket.take(1.0, self.clock()):
                    raise InvalidEvent("too many events: slow down", code="rate_limit_exceeded")
                event = parse_client_event(raw, max_bytes=self.limits.max_message_bytes)
                event_id = event.event_id
                await self._dispatch(event)
            except SeetalkError as exc:
                exc.event_id = exc.event_id or event_id
                self._error(exc.to_event_error())

    async def _dispatch(self, event: ClientEvent) -> None:
        try:
            await self._dispatch_one(event)
        except SeetalkError:
            raise
        except Exception as exc:  # a session bug must not end the connection silently
            log.exception("realtime %s failed on %s", self.id, event.type)
            raise SeetalkError(f"internal error: {exc}") from exc

    async def _dispatch_one(self, event: ClientEvent) -> None:
        if isinstance(event, InputAudioAppend):
            self._append(event)
        elif isinstance(event, ItemRetrieve):
            self._retrieve(event)
        elif isinstance(event, ImageAppend):
            await self._image(event)
        else:
            await self._forward(event)

    def _append(self, event: InputAudioAppend) -> None:
        samples = decode_audio(event.audio, self.in_format)
        seconds = len(samples) / self.in_format.rate
        if not self._audio_bucket.take(seconds, self.clock()):
            self.counters["audio_refused"] += 1
            raise InvalidEvent(
                f"audio arrives faster than {self.limits.audio_rate_s:g}x real time; "
                "this append was dropped",
                code="rate_limit_exceeded",
                param="audio",
            )
        if len(samples):
            self.session.push_audio(samples, self.in_format.rate, 1)
            self._manual_samples += len(samples)
            self.counters["audio_in_ms"] += round(seconds * 1000)

    async def _forward(self, event: ClientEvent) -> None:
        """Validate what only the transport knows, then hand the event to the session."""
        data = event.to_dict()
        manual = self._turn_mode() == "none"
        if isinstance(event, SessionUpdate):
            td = event.turn_detection
            if isinstance(td, TurnDetection) and td.create_response is False:
                raise InvalidEvent(
                    "create_response: false is not supported: seetalk answers every turn",
                    code="unsupported",
                    param="session.audio.input.turn_detection.create_response",
                )
            data = event.engine_dict()
        elif isinstance(event, InputAudioCommit) and manual and self._manual_samples == 0:
            raise InvalidEvent(
                "the input audio buffer is empty: append audio before commit",
                code="input_audio_buffer_commit_empty",
            )
        elif isinstance(event, ItemTruncate):
            sent = self._sent_ms.get(event.item_id)
            if sent is not None and event.audio_end_ms > sent + 1:
                raise InvalidEvent(
                    f"audio_end_ms {event.audio_end_ms} is past the {int(sent)} ms of audio "
                    f"sent for item {event.item_id!r}",
                    code="invalid_value",
                    param="audio_end_ms",
                )
        elif isinstance(event, ItemCreate):
            data = self._item_to_pcm16(data)
        await self.session.handle_client_event(data)
        if isinstance(event, InputAudioCommit | InputAudioClear):
            self._manual_samples = 0
        if isinstance(event, SessionUpdate):
            self.in_format = event.input_format or self.in_format
            if event.output_format is not None and event.output_format != self.out_format:
                self.out_format = event.output_format
                self._encoder = AudioEncoder(self.out_format)

    def _turn_mode(self) -> str:
        settings = getattr(self.session, "settings", None)
        return str(getattr(getattr(settings, "turn", None), "mode", "server_vad"))

    def _item_to_pcm16(self, data: dict[str, Any]) -> dict[str, Any]:
        """``input_audio`` content in G.711 becomes pcm16 24 kHz, as the session reads it."""
        if self.in_format == PCM16:
            return data
        for part in data["item"]["content"]:
            if part.get("type") == "input_audio" and "audio" in part:
                raw = base64.b64decode(part["audio"])
                samples = decode_audio(raw, self.in_format).astype(np.float32) / 32768.0
                pcm = float_to_s16(resample(samples, self.in_format.rate, PCM_RATE))
                part["audio"] = base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")
        return data

    def _retrieve(self, event: ItemRetrieve) -> None:
        item = self._items.get(event.item_id)
        if item is None:
            raise InvalidEvent(
                f"no item {event.item_id!r} in the conversation",
                code="item_not_found",
                param="item_id",
            )
        self._local(
            {
                "type": "conversation.item.retrieved",
                "event_id": events.new_id("event"),
                "item": item,
            }
        )

    async def _image(self, event: ImageAppend) -> None:
        push = getattr(self.session, "push_video", None)
        if push is None:
            raise InvalidEvent("this server has no camera input", code="unsupported")
        import cv2  # a heavy import, only camera clients need it

        buf = np.frombuffer(event.image, dtype=np.uint8)
        frame = await asyncio.to_thread(cv2.imdecode, buf, cv2.IMREAD_COLOR)
        if frame is None:
            raise BadImage("the image does not decode", param="image_url")
        push(frame, time.monotonic())
        self.counters["video_frames_in"] += 1

    def _error(self, err: dict[str, Any]) -> None:
        self.counters["errors"] += 1
        self._local(events.error(err))

    def _local(self, event: dict[str, Any]) -> None:
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            self.counters["outbox_dropped"] += 1

    # --- session -> client -------------------------------------------------------------------

    async def _send_loop(self) -> None:
        audio_out = self.session.audio_out
        sources: dict[str, Callable[[], Any]] = {
            "audio": audio_out.read,
            "event": self.session.events.get,
            "local": self._outbox.get,
        }
        pending: dict[str, asyncio.Task[Any]] = {}
        try:
            while True:
                for name, read in sources.items():
                    if name not in pending:
                        pending[name] = asyncio.ensure_future(read())
                await asyncio.wait(pending.values(), return_when=asyncio.FIRST_COMPLETED)
                # Audio queued before an event goes out before it (at most the short
                # output buffer; the session clears it on barge-in).
                for _ in range(256):
                    task = pending.get("audio")
                    if task is None and getattr(audio_out, "buffered_samples", 0) > 0:
                        pending["audio"] = task = asyncio.ensure_future(audio_out.read())
                    if task is None or (
                        not task.done() and getattr(audio_out, "buffered_samples", 0) <= 0
                    ):
                        break
                    await asyncio.wait([task])
                    del pending["audio"]
                    await self._send_audio(task.result())
                for name in ("local", "event"):
                    task = pending.get(name)
                    if task is not None and task.done():
                        del pending[name]
                        await self._send_event(task.result(), from_session=name == "event")
        finally:
            for task in pending.values():
                task.cancel()
            await asyncio.gather(*pending.values(), return_exceptions=True)

    async def _send_audio(self, chunk: Any) -> None:
        if chunk.reply_id in self._finished:
            self.counters["audio_chunks_dropped"] += 1
            return
        if chunk.item_id != self._encoder_item:
            self._encoder.reset()
            self._encoder_item = chunk.item_id
        data = self._encoder.encode(chunk.samples)
        end = (getattr(chunk, "start", 0) + len(chunk.samples)) * 1000 / PCM_RATE
        _remember(self._sent_ms, chunk.item_id, end, ITEM_MIRROR)
        self.counters["audio_out_ms"] += round(len(chunk.samples) * 1000 / PCM_RATE)
        await self._write(events.audio_delta(chunk.reply_id, chunk.item_id, _b64(data)))

    async def _send_event(self, event: dict[str, Any], *, from_session: bool) -> None:
        if from_session:
            if self.metrics is not None:
                self.metrics.observe_event(event)
            for extra in self._observe(event):
                await self._write(extra)
        await self._write(event)

    def _observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Keep the transport's view of the conversation; adjust session events in place.
        Returns events to send before this one."""
        kind = event.get("type")
        before: list[dict[str, Any]] = []
        if kind in ("session.created", "session.updated"):
            event["session"] = self._session_object(event.get("session") or {})
        elif kind in ("conversation.item.added", "conversation.item.done"):
            item = event.get("item") or {}
            if isinstance(item.get("id"), str):
                _remember(self._items, item["id"], item, ITEM_MIRROR)
        elif kind == "conversation.item.truncated":
            item = self._items.get(str(event.get("item_id")))
            if item is not None and item.get("content"):
                item["content"][0]["transcript"] = event.get("transcript")
        elif kind == "conversation.item.deleted":
            self._items.pop(str(event.get("item_id")), None)
        elif kind == "input_audio_buffer.committed":
            self._manual_samples = 0
        elif kind == "response.output_audio.done":
            _remember(self._audio_done, str(event.get("response_id")), None, FINISHED_RESPONSES)
        elif kind == "response.output_audio_transcript.done":
            rid, item_id = str(event.get("response_id")), str(event.get("item_id"))
            if item_id == self._encoder_item:  # the resampler's tail (G.711 output)
                self._encoder_item = None
                tail = self._encoder.flush()
                if tail:
                    before.append(events.audio_delta(rid, item_id, _b64(tail)))
            if rid not in self._audio_done:  # clients wait for it; the session sends none
                _remember(self._audio_done, rid, None, FINISHED_RESPONSES)
                before.append(events.audio_done(rid, item_id))
        elif kind == "response.done":
            rid = str((event.get("response") or {}).get("id"))
            _remember(self._finished, rid, None, FINISHED_RESPONSES)
        return before

    def _session_object(self, session: dict[str, Any]) -> dict[str, Any]:
        s = dict(session)
        s["model"] = self.model
        audio = {k: dict(v) for k, v in (s.get("audio") or {}).items()}
        audio.setdefault("input", {})["format"] = self.in_format.to_dict()
        audio.setdefault("output", {})["format"] = self.out_format.to_dict()
        s["audio"] = audio
        return s

    async def _write(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send_text(json.dumps(event))
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._disconnected = True
            self.close_reason = self.close_reason or "client_closed"
            raise _Closed from None
        self.counters["events_out"] += 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _remember(table: OrderedDict[str, Any], key: str, value: Any, bound: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > bound:
        table.popitem(last=False)


# --- the route ---------------------------------------------------------------------------


def credentials(ws: WebSocket) -> tuple[str | None, str | None]:
    """``(credential, subprotocol to accept)``: the Bearer header, or for browsers the
    ``openai-insecure-api-key.<credential>`` subprotocol offered beside ``realtime``."""
    offered = [
        p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()
    ]
    credential = bearer(ws.headers.get("authorization"))
    for p in offered:
        if credential is None and p.startswith(KEY_SUBPROTOCOL):
            credential = p[len(KEY_SUBPROTOCOL) :] or None
    return credential, (SUBPROTOCOL if SUBPROTOCOL in offered else None)


async def _deny(ws: WebSocket, status: int, code: str, message: str, type_: str) -> None:
    body = {"error": {"type": type_, "code": code, "message": message}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=status, headers=headers))
    except RuntimeError:  # the server lacks the denial-response extension
        await ws.close(1008 if status == 401 else 1013, message[:120])


def add_realtime_routes(
    app: FastAPI,
    *,
    path: str = PATH,
    limits: RealtimeLimits | None = None,
    settings: SessionSettings | None = None,
) -> None:
    """Add the WebSocket route to an app of :func:`server.app.create_app`.

    Uses ``app.state.seetalk`` (the engine, ``auth``, ``metrics``, ``cfg``, ``peers``):
    WebSocket sessions count against the same ``max_sessions`` as WebRTC ones and are
    listed, ended and shut down with them.
    """

    @app.websocket(path)
    async def realtime(ws: WebSocket) -> None:
        state = ws.app.state.seetalk
        cfg = state.cfg
        lim = limits or RealtimeLimits(
            max_message_bytes=cfg.max_ws_message_bytes,
            close_message_bytes=max(cfg.max_ws_message_bytes, 16 * 1024 * 1024),
            idle_timeout_s=cfg.idle_timeout_s,
        )
        credential, subprotocol = credentials(ws)
        try:
            state.auth.check_offer(credential, state.clock())
        except Unauthorized as exc:
            state.metrics.session_rejected("unauthorized")
            await _deny(ws, 401, exc.code, exc.message, exc.type)
            return
        if state.engine is None:
            why = f"failed to load: {state.engine_error}" if state.engine_error else "loading"
            await _deny(ws, 503, "not_ready", f"the models are {why}; see /healthz", "server_error")
            return
        if len(state.peers) + state.starting >= cfg.max_sessions:
            state.metrics.session_rejected("capacity")
            await _deny(
                ws,
                503,
                "session_limit",
                f"the server holds its maximum of {cfg.max_sessions} sessions; try again later",
                "server_error",
            )
            return
        state.starting += 1
        try:
            base = settings or SessionSettings()
            session = state.engine.new_session(replace(base, output_rate=PCM_RATE), playout="push")
            try:
                await session.start()
                await ws.accept(subprotocol=subprotocol)
            except BaseException:
                await session.aclose()
                raise
            conn = RealtimeConnection(
                ws,
                session,
                model=ws.query_params.get("model") or "seetalk",
                limits=lim,
                metrics=state.metrics,
                clock=state.clock,
            )
            state.peers[conn.id] = conn
        finally:
            state.starting -= 1
        state.metrics.session_started()

        def forget(c: Any) -> None:
            if state.peers.get(c.id) is c:
                del state.peers[c.id]
                state.metrics.session_ended(c.close_reason or "closed")

        conn.on_closed.append(forget)
        log.info("realtime %s open (model=%s)", conn.id, conn.model)
        await conn.run()
        log.info("realtime %s closed: %s", conn.id, conn.close_reason)
