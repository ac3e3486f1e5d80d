"""One WebRTC peer per session (aiortc): media in, paced audio out, events over data channels.

A :class:`Peer` owns an ``RTCPeerConnection`` and every task it starts (a registry; all are
cancelled and awaited by :meth:`Peer.close`). Data paths and their bounds:

- microphone track -> ``session.push_audio`` (frames as aiortc decodes them: 48 kHz, stereo).
- camera track -> :class:`~server.tracks.LatestFrame` (latest-wins) -> scaled BGR conversion in
  a worker thread at most ``video_fps`` times a second -> ``session.push_video``.
- ``session.audio_out.pull`` -> :class:`~server.tracks.PacedAudioTrack` (exact 20 ms frames).
- ``session.events`` -> ONE data channel as JSON text: the one the client last spoke on,
  else the first open one. Until a channel opens, events wait in a deque of
  ``PENDING_EVENTS`` (overflow: drop oldest). Above ``HIGH_WATER`` bytes buffered on it,
  transient events (deltas) are dropped. ``response.output_audio.delta`` is never sent: the
  audio travels on the media track. At most ``MAX_CHANNELS`` channels per peer; another is
  told why in an ``error`` event and closed.
- data channel messages -> :func:`~conversation.protocol.parse_client_event` (the parser of
  the WebSocket API, with its size and depth limits) -> a token bucket of
  ``events_per_s``/``events_burst`` (overflow: ``rate_limit_exceeded``) -> a queue of
  ``CLIENT_EVENTS`` (overflow: ``rate_limit_exceeded``) -> ``session.handle_client_event``.
  Nothing a client sends can raise into aiortc.

The peer ends when it is idle past ``idle_timeout_s``, when the client closes the connection
(a DTLS close: a hang-up), or when asked. When a connection that was up fails (ICE) or no
media arrives for ``media_timeout_s`` (the network went away), it ends too, unless it is
resumable (:attr:`Peer.resumes`, set by the server): then it is *parked*
(conversation/resume.py). Its ``session.created`` carried ``seetalk.resume_token``; on a drop
the media tasks and the connection go, the reply that was playing is cancelled where it was
heard (as on ``response.cancel``: its audio is never replayed), and the session waits
``resumes.window_s`` for an offer presenting the token (:meth:`Peer.resume`), which gets the
same session (conversation, settings, camera state) on a new connection. Events of the
session meanwhile wait in the pending deque (deltas are dropped); the resumed connection
gets a new ``session.created`` (``seetalk.resumed: true``, a new token) first, then those.
A parked peer stays in the server's session table (it counts against ``max_sessions``) until
it is resumed or its window passes (close reason ``resume_expired``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from conversation import events
from conversation.contract import TransportSession
from conversation.protocol import (
    ClientEvent,
    InputAudioAppend,
    ResponseCancel,
    parse_client_event,
)
from conversation.resume import ResumeRegistry
from seetalk.errors import InvalidEvent, SeetalkError
from server.metrics import Metrics
from server.ratelimit import EVENTS_BURST, EVENTS_PER_S, MAX_MESSAGE_BYTES, TokenBucket
from server.tracks import LatestFrame, PacedAudioTrack, frame_to_bgr

log = logging.getLogger("seetalk.webrtc")

PENDING_EVENTS = 256  # events before a channel opens (overflow: drop the oldest)
CLIENT_EVENTS = 64  # parsed client events waiting for the session (overflow: refuse)
HIGH_WATER = 1 << 20
MAX_CHANNELS = 4  # data channels per peer; more are closed with an error event
NEVER_SENT = frozenset({"response.output_audio.delta"})


def _transient(kind: str) -> bool:
    return kind.endswith(".delta")


def ice_configuration(ice_servers: tuple[dict[str, Any], ...]) -> RTCConfiguration:
    """``RTCConfiguration`` from the browser-style dicts of ``ServerConfig.ice_servers``."""
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
        if s.get("urls")
    ]
    return RTCConfiguration(iceServers=servers or None)


class Peer:
    """A session behind one ``RTCPeerConnection``. Create, then ``await accept(offer_sdp)``."""

    def __init__(
        self,
        session: TransportSession,
        *,
        metrics: Metrics,
        ice_servers: tuple[dict[str, Any], ...] = (),
        idle_timeout_s: float = 300.0,
        media_timeout_s: float = 20.0,
        connect_timeout_s: float = 30.0,
        video_fps: float = 10.0,
        video_max_side: int = 1280,
        video_executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        events_per_s: float = EVENTS_PER_S,
        events_burst: float = EVENTS_BURST,
    ) -> None:
        self.session = session
        self.id: str = session.id
        self.metrics = metrics
        self._ice = ice_configuration(ice_servers)
        self.pc = RTCPeerConnection(self._ice)
        self._live_pc: RTCPeerConnection | None = self.pc  # whose callbacks count
        self.idle_timeout_s = idle_timeout_s
        self.media_timeout_s = media_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.video_interval = 1.0 / video_fps if video_fps > 0 else 0.0
        self.video_max_side = min(session.settings.camera_max_side, video_max_side)
        self._executor = video_executor
        self._clock = clock
        self.created = clock()
        self.last_media: float | None = None
        self.last_client_event = self.created
        self.last_event = self.created  # the session's last event: speech, replies, errors
        self.close_reason: str | None = None
        self.channels: list[Any] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.max_message_bytes = max_message_bytes
        self._channel: Any = None  # where events go: the channel the client last spoke on
        self._event_bucket = TokenBucket(events_per_s, events_burst, now=self.created)
        self._pending: collections.deque[str] = collections.deque(maxlen=PENDING_EVENTS)
        self._inbox: asyncio.Queue[ClientEvent] = asyncio.Queue(CLIENT_EVENTS)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._media_tasks: set[asyncio.Task[Any]] = set()  # end with the connection
        self._close_task: asyncio.Task[None] | None = None
        self._connected = False
        self.on_closed: list[Callable[[Peer], None]] = []
        self.audio_track = PacedAudioTrack(session.audio_out.pull, session.settings.output_rate)
        self.latest_video = LatestFrame()
        # resumption: set by the server; a dropped connection parks the session
        self.resumes: ResumeRegistry[Peer] | None = None
        self.bound_to = ""
        self.parked_until: float | None = None
        self._switch = asyncio.Lock()  # one detach or attach at a time
        self._session_object: dict[str, Any] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    async def accept(self, offer_sdp: str) -> str:
        """Apply the offer, start the media and event tasks, and return the answer SDP.

        Raises ``ValueError`` for an SDP aiortc cannot use (the caller closes the peer)."""
        answer = await self._attach(offer_sdp)
        self._spawn(self._pump_events(), "events")
        self._spawn(self._serve_client_events(), "client-events")
        self._spawn(self._watchdog(), "watchdog")
        return answer

    async def _attach(self, offer_sdp: str) -> str:
        pc = self.pc
        pc.on("track", lambda track: self._on_track(pc, track))
        pc.on("datachannel", lambda channel: self._on_datachannel(pc, channel))
        pc.on("connectionstatechange", lambda: self._on_state(pc))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise ValueError("the offer has no audio section")
        pc.addTrack(self.audio_track)
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def resume(self, offer_sdp: str) -> str:
        """A resuming offer (its token claimed from :attr:`resumes`): serve the session on a
        new connection and return the answer SDP. A connection still up (the client saw
        the drop first) is dropped as a parked one would be. Raises ``ValueError`` for an
        SDP aiortc cannot use (the session is then closed); ``ConnectionError`` when the
        peer closed meanwhile."""
        async with self._switch:
            if self._close_task is not None:
                raise ConnectionError("the session ended")
            if self._live_pc is not None:
                await self._detach()
            self.parked_until = None
            self.pc = RTCPeerConnection(self._ice)
            self._live_pc = self.pc
            self.audio_track = PacedAudioTrack(
                self.session.audio_out.pull, self.session.settings.output_rate
            )
            self.latest_video = LatestFrame()
            self.created = self.last_client_event = self._clock()
            self.last_media, self._connected = None, False
            self.counters["resumed"] += 1
            created = self._with_token(events.session_created(dict(self._session_object)))
            created["session"]["seetalk"]["resumed"] = True  # same id, conversation, settings
            self.metrics.observe_event(created)
            kept = list(self._pending)[-(PENDING_EVENTS - 1) :]
            self._pending = collections.deque([json.dumps(created), *kept], PENDING_EVENTS)
            try:
                answer = await self._attach(offer_sdp)
            except BaseException:
                self.request_close("rejected")
                raise
            log.info("session %s resumed", self.id)
            return answer

    def lost(self, reason: str) -> None:
        """The connection dropped (ICE failed, no media, or a test): park if resumable,
        else close. A connection the client closes (DTLS close) is a hang-up: it ends."""
        if self._close_task is not None or self._live_pc is None:
            return
        if self.resumes is None or self.parked_until is not None or not self._connected:
            self.request_close(reason)  # (never connected: nobody got a token to come back)
            return
        until = self.resumes.park(self, self._clock())
        if until is None:  # no token was ever sent: nobody can come back
            self.request_close(reason)
            return
        self.parked_until = until
        self.counters["parked"] += 1
        log.info("session %s parked (%s) for %g s", self.id, reason, self.resumes.window_s)
        self._spawn(self._park(), "park")

    async def _park(self) -> None:
        async with self._switch:
            if self._live_pc is not None and self.parked_until is not None:
                await self._detach()

    async def _detach(self) -> None:
        """End the connection's media tasks and the connection; the session stays. The reply
        that was playing stops where it was heard (nobody hears the rest; it is never
        replayed)."""
        self._live_pc = None
        media = list(self._media_tasks)
        for task in media:
            task.cancel()
        await asyncio.gather(*media, return_exceptions=True)
        self.audio_track.stop()
        self.channels, self._channel = [], None
        try:
            await self.session.handle_client_event(ResponseCancel())
        except SeetalkError:
            log.warning("session %s: cancelling the reply on a drop failed", self.id)
        await close_peer_connection(self.pc)

    def _with_token(self, created: dict[str, Any]) -> dict[str, Any]:
        """``session.created`` with a new single-use resume token (``seetalk.resume_token``)."""
        if self.resumes is None:
            return created
        session = dict(created["session"])
        session["seetalk"] = dict(
            session.get("seetalk") or {},
            resume_token=self.resumes.issue(self, self.bound_to),
            resume_window_s=self.resumes.window_s,
        )
        return dict(created, session=session)

    def request_close(self, reason: str) -> None:
        """Close from a callback or an owned task, without waiting."""
        if self._close_task is None:
            self.close_reason = reason
            self._close_task = asyncio.ensure_future(self._close())

    async def close(self, reason: str = "closed") -> None:
        """Cancel and await every task, close the connection and the session. Idempotent.
        Cancelling the caller does not interrupt the cleanup (it runs shielded)."""
        self.request_close(reason)
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    @property
    def closed(self) -> bool:
        return self._close_task is not None and self._close_task.done()

    @property
    def task_count(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    async def _close(self) -> None:
        log.info("session %s closing: %s", self.id, self.close_reason)
        self._live_pc = None
        if self.resumes is not None:
            self.resumes.forget(self)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.audio_track.stop()
        try:
            await close_peer_connection(self.pc)
        finally:
            try:
                await self.session.aclose()
            finally:
                for callback in self.on_closed:
                    callback(self)

    def _spawn(self, coro: Any, name: str, *, media: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if media:
            self._media_tasks.add(task)
            task.add_done_callback(self._media_tasks.discard)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._close_task is None:
            log.error("session %s task %s failed", self.id, task.get_name(), exc_info=exc)
            self.request_close("internal_error")

    # --- aiortc callbacks -----------------------------------------------------------------------

    def _on_state(self, pc: RTCPeerConnection) -> None:
        if pc is not self._live_pc:  # a connection we dropped or replaced
            return
        state = pc.connectionState
        self.counters[f"state_{state}"] += 1
        if state == "connected":
            self._connected = True
        elif state == "failed":
            self.lost("ice_failed")
        elif state == "closed":  # the client closed it (DTLS close): a hang-up
            self.request_close("peer_closed")

    def _on_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        if pc is not self._live_pc:
            return
        if track.kind == "audio":
            self._spawn(self._read_audio(track), "audio-in", media=True)
        elif track.kind == "video":
            self._spawn(self._read_video(track), "video-in", media=True)
            self._spawn(self._convert_video(), "video-convert", media=True)

    def _on_datachannel(self, pc: RTCPeerConnection, channel: Any) -> None:
        if pc is not self._live_pc:
            channel.close()
            return
        if len(self.channels) >= MAX_CHANNELS:
            self.counters["channels_refused"] += 1
            self._send_error(
                channel,
                InvalidEvent(
                    f"at most {MAX_CHANNELS} data channels per session; this one is closed",
                    code="too_many_channels",
                ),
            )
            channel.close()
            return
        self.channels.append(channel)
        channel.on("message", lambda message: self._on_message(channel, message))
        channel.on("close", lambda: self._forget_channel(channel))
        if self._channel is None:
            self._channel = channel
        while self._pending and channel.readyState == "open":
            channel.send(self._pending.popleft())

    def _forget_channel(self, channel: Any) -> None:
        if channel in self.channels:
            self.channels.remove(channel)
        if self._channel is channel:
            self._channel = next((c for c in self.channels if c.readyState == "open"), None)

    def _on_message(self, channel: Any, message: str | bytes) -> None:
        """aiortc's callback: parse, limit, queue. Never raises (a failure here would
        reach aiortc's transport and end the session)."""
        try:
            self.last_client_event = self._clock()
            self.counters["client_events"] += 1
            self._channel = channel  # answers go where the client last spoke
            if not self._event_bucket.take(1.0, self._clock()):
                raise InvalidEvent("too many events: slow down", code="rate_limit_exceeded")
            event = parse_client_event(message, max_bytes=self.max_message_bytes)
            if isinstance(event, InputAudioAppend):
                raise InvalidEvent(
                    "input_audio_buffer.append is not used over WebRTC: the microphone "
                    "audio travels on the media track",
                    code="unsupported",
                    param="type",
                    event_id=event.event_id,
                )
            try:
                self._inbox.put_nowait(event)
            except asyncio.QueueFull:
                raise InvalidEvent(
                    "too many events in flight: slow down",
                    code="rate_limit_exceeded",
                    event_id=event.event_id,
                ) from None
        except SeetalkError as exc:
            self._send_error(channel, exc)
        except Exception as exc:  # never into aiortc
            log.exception("session %s: a client message failed", self.id)
            self._send_error(channel, SeetalkError(f"internal error: {exc}"))

    def _send_error(self, channel: Any, exc: SeetalkError) -> None:
        event = events.error(exc.to_event_error())
        self.metrics.observe_event(event)
        if channel.readyState == "open":
            channel.send(json.dumps(event))
            self.counters["events_out"] += 1

    # --- tasks ----------------------------------------------------------------------------------

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            self.last_media = self._clock()
            self.counters["audio_frames_in"] += 1
            try:
                self.session.push_audio(
                    frame.to_ndarray(), frame.sample_rate, len(frame.layout.channels)
                )
            except SeetalkError as exc:
                self.counters["audio_rejected"] += 1
                self._report(events.error(exc.to_event_error()))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.session.camera_stopped()
                return
            self.last_media = self._clock()
            self.counters["video_frames_in"] += 1
            self.latest_video.put(frame)

    async def _convert_video(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await self.latest_video.get()
            started = self._clock()
            try:
                bgr = await loop.run_in_executor(
                    self._executor, frame_to_bgr, frame, self.video_max_side
                )
                self.session.push_video(bgr, time.monotonic())
                self.counters["video_frames_used"] += 1
            except (SeetalkError, ValueError) as exc:
                self.counters["video_rejected"] += 1
                log.debug("session %s dropped a camera frame: %s", self.id, exc)
            wait = self.video_interval - (self._clock() - started)
            if wait > 0:
                await asyncio.sleep(wait)

    async def _pump_events(self) -> None:
        while True:
            event = await self.session.events.get()
            kind = event.get("type")
            if kind in ("session.created", "session.updated"):
                self._session_object = dict(event.get("session") or {})
            if kind == "session.created":
                event = self._with_token(event)
            self.last_event = self._clock()
            self.metrics.observe_event(event)
            self._broadcast(event)

    def _report(self, event: dict[str, Any]) -> None:
        """An event made here rather than by the session: count it, then send it."""
        self.metrics.observe_event(event)
        self._broadcast(event)

    def _broadcast(self, event: dict[str, Any]) -> None:
        """Send an event on the one channel the client listens on (or keep it until one
        opens)."""
        kind = str(event.get("type", ""))
        if kind in NEVER_SENT:
            return
        text = json.dumps(event)
        channel = self._channel
        if channel is None or channel.readyState != "open":
            channel = next((c for c in self.channels if c.readyState == "open"), None)
            self._channel = channel
        if channel is None:
            if self.parked_until is None or not _transient(kind):  # parked: no deltas
                self._pending.append(text)
            return
        if channel.bufferedAmount > HIGH_WATER and _transient(kind):
            self.counters["events_dropped"] += 1
            return
        channel.send(text)
        self.counters["events_out"] += 1

    async def _serve_client_events(self) -> None:
        while True:
            event = await self._inbox.get()
            try:
                await self.session.handle_client_event(event)
            except SeetalkError as exc:
                exc.event_id = exc.event_id or event.event_id
                self._report(events.error(exc.to_event_error()))
            except Exception as exc:  # a session bug must not end the peer silently
                log.exception("session %s failed on a client event", self.id)
                err = SeetalkError(f"internal error: {exc}", event_id=event.event_id)
                self._report(events.error(err.to_event_error()))

    async def _watchdog(self, period: float = 0.5) -> None:
        while True:
            await asyncio.sleep(period)
            now = self._clock()
            if self.parked_until is not None:
                if now > self.parked_until:
                    self.request_close("resume_expired")
            elif self._live_pc is None:
                continue  # between connections (a resume is attaching one)
            elif not self._connected and now - self.created > self.connect_timeout_s:
                self.request_close("connect_timeout")
            elif self.last_media is not None and now - self.last_media > self.media_timeout_s:
                self.lost("media_timeout")
            elif now - self._last_activity() > self.idle_timeout_s:
                self.request_close("idle_timeout")

    def _last_activity(self) -> float:
        """Idle means nothing happened: no session event (speech, replies, errors) and no
        client event. Media alone (a microphone streaming silence) is not activity; its
        absence is the media timeout. (``session.last_activity`` is on the session's clock
        and moves with any audio, so it is not used here.)"""
        return max(self.created, self.last_client_event, self.last_event)

    def stats(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "connection_state": self.pc.connectionState,
            "parked": self.parked_until is not None,
            "channels": len(self.channels),
            "tasks": self.task_count,
            "audio_frames_out": self.audio_track.frames,
            "audio_resyncs": self.audio_track.resyncs,
            "video_frames_dropped": self.latest_video.dropped,
            **self.counters,
        }


async def _no_consent_checks() -> None:
    return None


async def close_peer_connection(pc: RTCPeerConnection) -> None:
    """``pc.close()``, working around a race in aioice 0.13: when ICE completes while the
    connection is being closed, ``Connection.connect`` starts its consent-freshness task
    after ``close`` ran, and that task then polls every 5 s forever. Before closing, each ICE connection's consent
    check is made a no-op, so a task started late ends at once (one started earlier is
    cancelled by ``close`` as usual)."""
    transports = [t.sender.transport for t in pc.getTransceivers() if t.sender.transport]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        connection = getattr(dtls.transport, "_connection", None)  # aioice.Connection
        if connection is not None:
            connection.query_consent = _no_consent_checks
    await pc.close()
