"""``/v1/realtime``: the WebSocket API that speaks the OpenAI Realtime protocol.

Thin glue between a socket and a :class:`~conversation.session.Session` in ``push`` playout.
:func:`add_realtime_routes` adds the route to the app of :func:`server.app.create_app` and
shares its engine, authenticator, metrics and session limit (its ``peers`` table). One
:class:`RealtimeConnection` per socket owns three tasks in a TaskGroup:

- *receive*: text or binary frames -> :func:`~conversation.protocol.parse_client_event` (the
  one parser, shared with the data channel) -> appends decoded in the session's
  ``input_format`` (pcm16 24 kHz, G.711 mu-law/A-law 8 kHz) into ``session.push_audio``;
  every other typed event into ``session.handle_client_event``, as on the data channel.
  Limits: messages above ``max_message_bytes`` are answered
  with an ``error`` and skipped, above ``close_message_bytes`` the socket closes with 1009;
  token buckets on appended audio seconds and on messages (overflow: refuse the event with
  ``rate_limit_exceeded``; nothing queues).
- *send*: ``session.events`` and ``session.audio_out.read()`` chunks (as
  ``response.output_audio.delta``, base64 in the session's ``output_format``) and the
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

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from conversation import events
from conversation.contract import AudioChunk, TransportSession
from conversation.protocol import (
    FORMATS,
    ClientEvent,
    InputAudioAppend,
    ItemTruncate,
    ResponseCancel,
    parse_client_event,
)
from conversation.resume import Handover, ResumeRefused, ResumeRegistry, binding
from seetalk.config import SessionSettings
from seetalk.errors import InvalidEvent, SeetalkError, Unauthorized
from server.auth import bearer
from server.ratelimit import EVENTS_BURST, EVENTS_PER_S, MAX_MESSAGE_BYTES, TokenBucket
from server.realtime_codec import PCM16, PCM_RATE, AudioEncoder, AudioFormat, decode_audio

log = logging.getLogger("seetalk.realtime")

PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # browsers cannot set headers on a WebSocket
ITEM_MIRROR = 256  # items whose sent audio length is kept (overflow: forget the oldest)
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

    max_message_bytes: int = MAX_MESSAGE_BYTES
    close_message_bytes: int = 16 * 1024 * 1024
    audio_rate_s: float = 4.0
    audio_burst_s: float = 60.0
    events_per_s: float = EVENTS_PER_S
    events_burst: float = EVENTS_BURST
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
        session: TransportSession,
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
        self._sent_ms: OrderedDict[str, float] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._audio_done: OrderedDict[str, None] = OrderedDict()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._disconnected = False
        # resumption (conversation/resume.py): set by the route; a dropped socket parks
        # the session for ``resumes.window_s`` and a resuming socket is served in its place
        self.resumes: ResumeRegistry[RealtimeConnection] | None = None
        self.bound_to = ""
        self.handover: Handover[WebSocket] = Handover()
        self._handing_over = False
        self._parked = False
        self._socket_done: asyncio.Event | None = None  # the resuming request waits on it
        self._session_object: dict[str, Any] = {}

    @property
    def in_format(self) -> AudioFormat:
        """The client's input format: a session setting (``audio.input.format``)."""
        return FORMATS.get(self.session.settings.input_format, PCM16)

    @property
    def out_format(self) -> AudioFormat:
        return FORMATS.get(self.session.settings.output_format, PCM16)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until either side ends it, then close the session.

        Cancelling it is safe: the tasks and the session are closed, then the cancellation
        propagates. A resumable session outlives a dropped socket (``_next_socket``)."""
        try:
            while True:
                await self._serve()
                if not await self._next_socket():
                    break
        finally:
            await self._finish()

    async def _serve(self) -> None:
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

    def take_over(self) -> None:
        """A resume handed a new socket over (:attr:`handover`): end the current one (a
        parked session takes it at once)."""
        if not self._parked:
            self._handing_over = True
            self._stop.set()

    async def _next_socket(self) -> bool:
        """After a socket ended: the session goes on with a resuming one if the client
        comes back within the window (the socket dropped, or another took over)."""
        if self._socket_done is not None:
            self._socket_done.set()
        if self.resumes is None:
            return False
        if self._handing_over:
            self._handing_over = False
            with contextlib.suppress(Exception):
                await self.ws.close(4000, "resumed on another connection")
        elif self.close_reason != "dropped":
            return False  # closed cleanly, by the server, idle, too large: not resumable
        else:
            self.resumes.park(self, self.clock())
            # nobody hears the reply now; missed audio is never replayed
            await self.session.handle_client_event(ResponseCancel())
        self._stop.clear()
        self._parked = True
        try:
            taken = await self.handover.wait(self.resumes.window_s, self._stop)
        finally:
            self._parked = False
        if taken is None:
            return False
        self.ws, self._socket_done = taken
        self._disconnected, self.close_reason, self.close_code = False, None, 1000
        self.last_client_event = self.clock()
        self.counters["resumed"] += 1
        resumed = self._with_token(events.session_created(dict(self._session_object)))
        resumed["session"]["seetalk"]["resumed"] = True  # same id, conversation, settings
        self._local(resumed)
        log.info("realtime %s resumed", self.id)
        return True

    def _with_token(self, created: dict[str, Any]) -> dict[str, Any]:
        """``session.created`` with a new single-use resume token (``seetalk.resume_token``)."""
        if self.resumes is not None:
            token = self.resumes.issue(self, self.bound_to)
            session = created["session"]
            session["seetalk"] = dict(
                session.get("seetalk") or {},
                resume_token=token,
                resume_window_s=self.resumes.window_s,
            )
        return created

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
            if self.resumes is not None:
                self.resumes.forget(self)
            self.handover.release()
            if self._socket_done is not None:
                self._socket_done.set()
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
                # a close frame (any code) ends the session; a dropped connection (1006:
                # none came, the network went away) may be resumed
                dropped = message.get("code", 1000) == 1006
                self.close_reason = self.close_reason or ("dropped" if dropped else "client_closed")
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
            if isinstance(event, InputAudioAppend):
                self._append(event)
                return
            if isinstance(event, ItemTruncate):
                self._check_truncate(event)
            await self.session.handle_client_event(event)
        except SeetalkError:
            raise
        except Exception as exc:  # a session bug must not end the connection silently
            log.exception("realtime %s failed on %s", self.id, event.type)
            raise SeetalkError(f"internal error: {exc}") from exc

    def _append(self, event: InputAudioAppend) -> None:
        """The one thing only this transport does: audio in the client's format."""
        fmt = self.in_format
        samples = decode_audio(event.audio, fmt)
        seconds = len(samples) / fmt.rate
        if not self._audio_bucket.take(seconds, self.clock()):
            self.counters["audio_refused"] += 1
            raise InvalidEvent(
                f"audio arrives faster than {self.limits.audio_rate_s:g}x real time; "
                "this append was dropped",
                code="rate_limit_exceeded",
                param="audio",
            )
        if len(samples):
            self.session.push_audio(samples, fmt.rate, 1)
            self.counters["audio_in_ms"] += round(seconds * 1000)

    def _check_truncate(self, event: ItemTruncate) -> None:
        """The client cannot have heard audio this socket never sent."""
        sent = self._sent_ms.get(event.item_id)
        if sent is not None and event.audio_end_ms > sent + 1:
            raise InvalidEvent(
                f"audio_end_ms {event.audio_end_ms} is past the {int(sent)} ms of audio "
                f"sent for item {event.item_id!r}",
                code="invalid_value",
                param="audio_end_ms",
            )

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
                    if task is None and audio_out.buffered_samples > 0:
                        pending["audio"] = task = asyncio.ensure_future(audio_out.read())
                    if task is None or (not task.done() and audio_out.buffered_samples <= 0):
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

    async def _send_audio(self, chunk: AudioChunk) -> None:
        if chunk.reply_id in self._finished:
            self.counters["audio_chunks_dropped"] += 1
            return
        if self._encoder.fmt != self.out_format:  # session.update changed the format
            self._encoder, self._encoder_item = AudioEncoder(self.out_format), None
        if chunk.item_id != self._encoder_item:
            self._encoder.reset()
            self._encoder_item = chunk.item_id
        data = self._encoder.encode(chunk.samples)
        end = (chunk.start + len(chunk.samples)) * 1000 / PCM_RATE
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
        """Adjust session events in place for this socket; returns events to send before
        this one (the G.711 resampler's tail, and ``output_audio.done`` when missing)."""
        kind = event.get("type")
        before: list[dict[str, Any]] = []
        if kind in ("session.created", "session.updated"):
            event["session"] = dict(event.get("session") or {}, model=self.model)
            self._session_object = event["session"]
            if kind == "session.created":
                self._with_token(event)
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

    async def _write(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send_text(json.dumps(event))
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._disconnected = True
            # the receive side says how it closed (a close frame or a drop); if it does not
            # within a second, the connection is taken as dropped (resumable)
            await asyncio.sleep(1.0)
            self.close_reason = self.close_reason or "dropped"
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


async def _resume(
    ws: WebSocket,
    resumes: ResumeRegistry[RealtimeConnection],
    token: str,
    credential: str | None,
    subprotocol: str | None,
    auth: Any,
    clock: Callable[[], float],
) -> None:
    """Hand the session of ``token`` to this socket and serve it until it ends. Refused
    before the upgrade: 401 (credential), 404 (unknown or used token), 410 (expired), 403
    (a credential other than the one that opened the session)."""
    now = clock()
    try:
        grant = auth.verify(credential, now)
        bound = binding(credential, is_token=grant.nonce is not None)
        conn = resumes.claim(token, bound, now)
        auth.spend(grant, now)
    except Unauthorized as exc:
        await _deny(ws, 401, exc.code, exc.message, exc.type)
        return
    except ResumeRefused as exc:
        await _deny(ws, exc.status, exc.code, exc.message, "invalid_request_error")
        return
    await ws.accept(subprotocol=subprotocol)
    done = conn.handover.offer(ws)
    conn.take_over()
    await done.wait()  # the session's own task serves this socket meanwhile


async def _deny(
    ws: WebSocket,
    status: int,
    code: str,
    message: str,
    type_: str,
    retry_after: int | None = None,
) -> None:
    """Refuse the handshake with an HTTP ``status`` and a JSON error body (or, where the
    server cannot send one, close the socket with 1008 or 1013: 1013 is "try again later")."""
    body = {"error": {"type": type_, "code": code, "message": message}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=status, headers=headers))
    except RuntimeError:  # the server lacks the denial-response extension
        await ws.close(1008 if status in (401, 403) else 1013, message[:120])


def add_realtime_routes(
    app: FastAPI,
    *,
    path: str = PATH,
    limits: RealtimeLimits | None = None,
    settings: SessionSettings | None = None,
    resume_window_s: float = 60.0,
) -> None:
    """Add the WebSocket route to an app of :func:`server.app.create_app`.

    A dropped socket's session waits ``resume_window_s`` for its client: ``session.created``
    carries ``seetalk.resume_token``; a socket opened with ``?resume=<token>`` and the same
    credential gets the session back (:func:`_resume`).

    Uses ``app.state.seetalk``: its origin policy, and its admission (credential, readiness,
    ``max_sessions`` shared with WebRTC, the session table, metrics), so WebSocket sessions
    are admitted, listed, ended and shut down exactly as WebRTC ones are.
    """
    from server.admission import Refused  # here: the import block above is the connection's

    resumes: ResumeRegistry[RealtimeConnection] = ResumeRegistry(resume_window_s)

    @app.websocket(path)
    async def realtime(ws: WebSocket) -> None:
        state = ws.app.state.seetalk
        cfg = state.cfg
        lim = limits or RealtimeLimits(
            max_message_bytes=cfg.max_ws_message_bytes,
            close_message_bytes=max(cfg.max_ws_message_bytes, 16 * 1024 * 1024),
            idle_timeout_s=cfg.idle_timeout_s,
        )
        why = state.origin_refusal(ws.headers.get("origin"), ws.headers.get("host"), ws.url.scheme)
        if why is not None:
            state.admission.refuse("origin")
            await _deny(ws, 403, "forbidden_origin", why, "invalid_request_error")
            return
        credential, subprotocol = credentials(ws)
        auth = state.admission.auth
        token = ws.query_params.get("resume")
        if token is not None:  # a dropped session's client is back (conversation/resume.py)
            await _resume(ws, resumes, token, credential, subprotocol, auth, state.clock)
            return
        try:
            slot = state.admission.reserve(credential)
        except Refused as exc:
            await _deny(ws, exc.status, exc.code, exc.message, exc.type, exc.retry_after)
            return
        async with slot:
            base = settings or SessionSettings()
            session = slot.source.new_session(replace(base, output_rate=PCM_RATE), playout="push")
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
            conn.resumes = resumes
            conn.bound_to = binding(
                credential, is_token=credential is not None and not auth.is_api_key(credential)
            )
            slot.admit(conn)
        log.info("realtime %s open (model=%s)", conn.id, conn.model)
        await conn.run()
        log.info("realtime %s closed: %s", conn.id, conn.close_reason)
