"""A stand-in engine whose model stages are replaced by a recorded-reply replayer.

It follows docs/session-api.md, so the WebRTC transport cannot tell it from the real engine,
and it costs almost no CPU: an energy detector counts 20 ms frames (no clock), and every
turn is answered with the same recorded audio. It exists to measure and test the media path
alone (``bench/webrtc.py`` capacity runs, transport tests); it understands no words.

Behaviour per session: loud input after quiet -> ``speech_started`` (and, while a reply
plays, a barge-in: the reply's unplayed audio is dropped at once, ``response.done``
cancelled, ``conversation.item.truncated`` with the heard share of the transcript);
``silence_frames`` of quiet after speech -> ``speech_stopped``, a transcript and a reply.
``conversation.item.create`` (input_text) + ``response.create`` also start a reply.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from conversation import events
from conversation.contract import SessionSource, TransportSession
from conversation.playout import OutputChunk
from conversation.protocol import (
    ClientEvent,
    ItemCreate,
    MessageItem,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)
from seetalk.config import SessionSettings
from seetalk.errors import InvalidEvent

EVENTS_MAX = 512


def tone(seconds: float = 1.5, rate: int = 48_000, hz: float = 440.0) -> np.ndarray:
    """A recorded reply when no recording is given: a tone with 20 ms fades, int16."""
    t = np.arange(int(seconds * rate)) / rate
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    return (0.3 * 32767 * env * np.sin(2 * np.pi * hz * t)).astype(np.int16)


class ReplayAudioOut:
    """Playout of one reply at a time, paced (``pull``) or pushed (``read``, 100 ms chunks);
    ``clear`` drops everything unplayed."""

    def __init__(self, session: ReplaySession) -> None:
        self._session = session
        self._samples = np.zeros(0, dtype=np.int16)
        self._ready = asyncio.Event()
        self.position = 0

    @property
    def buffered_samples(self) -> int:
        return len(self._samples) - self.position

    @property
    def playing(self) -> bool:
        return self.position < len(self._samples)

    def play(self, samples: np.ndarray) -> None:
        self._samples, self.position = samples, 0
        self._ready.set()

    async def read(self) -> OutputChunk:
        """The next 100 ms of the reply as soon as one plays (push playout)."""
        while not self.playing or self._session._reply is None:
            self._ready.clear()
            await self._ready.wait()
        response_id, item_id = self._session._reply
        rate = self._session.settings.output_rate
        start = self.position
        chunk = self.pull(rate // 10)[: max(0, len(self._samples) - start)]
        return OutputChunk(response_id, item_id, chunk, start, rate)

    def clear(self) -> int:
        heard = self.position
        self._samples, self.position = np.zeros(0, dtype=np.int16), 0
        return heard

    def pull(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int16)
        if self.playing:
            chunk = self._samples[self.position : self.position + n]
            out[: len(chunk)] = chunk
            self.position += len(chunk)
            if not self.playing:
                self._session._reply_finished()
        return out


class ReplaySession:
    def __init__(self, engine: ReplayEngine, settings: SessionSettings | None = None) -> None:
        self.id = events.new_id("sess")
        self.settings = settings or SessionSettings()
        self.engine = engine
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EVENTS_MAX)
        self.audio_out = ReplayAudioOut(self)
        self.closed = False
        self.last_activity = time.monotonic()
        self.frames_in = 0
        self.video_frames = 0
        self.video_shape: tuple[int, ...] | None = None
        self.input_ms = 0.0
        self._loud = 0
        self._quiet = 0
        self._speaking = False
        self._item: str | None = None
        self._reply: tuple[str, str] | None = None  # (response_id, item_id)
        self._turn_end_ms = 0.0

    # --- session API ------------------------------------------------------------------------

    async def start(self) -> None:
        self._emit(
            events.session_created(
                {"id": self.id, "object": "realtime.session", "model": "seetalk-replay"}
            )
        )

    def push_audio(self, samples: np.ndarray, rate: int, channels: int = 1) -> None:
        self.frames_in += 1
        data = np.asarray(samples).reshape(-1)
        self.input_ms += 1000.0 * len(data) / channels / rate
        level = float(np.sqrt(np.mean(data.astype(np.float32) ** 2))) if len(data) else 0.0
        if data.dtype.kind == "f":
            level *= 32767
        if level > self.engine.threshold:
            self._loud, self._quiet = self._loud + 1, 0
            if not self._speaking and self._loud >= self.engine.onset_frames:
                self._speech_started()
        else:
            self._loud, self._quiet = 0, self._quiet + 1
            if self._speaking and self._quiet >= self.engine.silence_frames:
                self._speech_stopped()

    def push_video(self, frame_bgr: np.ndarray, t: float | None = None) -> None:
        self.video_frames += 1
        self.video_shape = tuple(frame_bgr.shape)

    def camera_stopped(self) -> None:
        self.video_shape = None

    async def handle_client_event(self, event: ClientEvent) -> None:
        self.last_activity = time.monotonic()
        if isinstance(event, ResponseCancel):
            if self._reply is not None:
                self._interrupt(reason="client_cancelled")
        elif isinstance(event, ItemCreate):
            parts = event.item.content if isinstance(event.item, MessageItem) else ()
            texts = [p.text for p in parts if p.text]
            if not texts:
                raise InvalidEvent(
                    "conversation.item.create needs input_text content",
                    param="item.content",
                    event_id=event.event_id,
                )
            item_id = events.new_id("item")
            self._emit(events.item_added(events.user_item(item_id, text=texts[0]), None))
        elif isinstance(event, ResponseCreate):
            self._respond()
        elif isinstance(event, SessionUpdate):
            self._emit(events.session_updated(event.to_dict()["session"]))
        else:
            raise InvalidEvent(
                f"{event.type} is not supported by the replay engine",
                code="unsupported",
                param="type",
                event_id=event.event_id,
            )

    async def aclose(self) -> None:
        self.closed = True
        self.engine.closed_sessions += 1

    # --- turns --------------------------------------------------------------------------------

    def _speech_started(self) -> None:
        self._speaking = True
        self.last_activity = time.monotonic()
        self._item = events.new_id("item")
        onset = int(self.input_ms - 20 * self._loud)
        self._emit(events.speech_started(self._item, onset))
        if self._reply is not None and self.audio_out.playing:
            response_id = self._reply[0]
            self._interrupt(reason="turn_detected")
            self._emit(events.barge_in(response_id, onset, int(self.input_ms)))

    def _speech_stopped(self) -> None:
        self._speaking = False
        assert self._item is not None
        self._emit(events.speech_stopped(self._item, int(self.input_ms)))
        self._emit(events.transcription_completed(self._item, self.engine.heard_text, 1.0))
        self._turn_end_ms = self.input_ms
        self._respond()

    def _respond(self) -> None:
        if self._reply is not None:
            self._interrupt(reason="turn_detected")
        response_id, item_id = events.new_id("resp"), events.new_id("item")
        self._reply = (response_id, item_id)
        self._emit(events.response_created(response_id))
        self._emit(events.audio_transcript_delta(response_id, item_id, self.engine.reply_text))
        self.audio_out.play(self.engine.reply_audio)
        self._emit(events.output_audio_started(response_id))

    def _interrupt(self, reason: str) -> None:
        assert self._reply is not None
        response_id, item_id = self._reply
        self._reply = None
        heard = self.audio_out.clear()
        total = max(1, len(self.engine.reply_audio))
        words = self.engine.reply_text.split()
        heard_text = " ".join(words[: round(len(words) * heard / total)])
        self._emit(events.output_audio_cleared(response_id))
        self._emit(
            events.item_truncated(item_id, heard * 1000 // self.settings.output_rate, heard_text)
        )
        self._emit(events.response_done(response_id, "cancelled", [], reason=reason))

    def _reply_finished(self) -> None:
        if self._reply is None:
            return
        response_id, item_id = self._reply
        self._reply = None
        text = self.engine.reply_text
        self._emit(events.output_audio_stopped(response_id))
        self._emit(events.audio_transcript_done(response_id, item_id, text))
        item = events.assistant_item(item_id, text, status="completed")
        self._emit(events.response_done(response_id, "completed", [item]))
        self._emit(
            events.turn_metrics(
                response_id, {"endpoint_ms": 500.0, "asr_ms": 0.0, "first_audio_ms": 0.0}
            )
        )

    def _emit(self, event: dict[str, Any]) -> None:
        """Bounded: when the consumer stalls, the oldest event is dropped."""
        if self.events.full():
            self.events.get_nowait()
        self.events.put_nowait(event)


class ReplayEngine:
    """Sessions that answer every turn with ``reply_audio`` (int16 mono at 48 kHz)."""

    def __init__(
        self,
        reply_audio: np.ndarray | None = None,
        *,
        reply_text: str = "This is a recorded reply from the replay engine.",
        heard_text: str = "(speech)",
        threshold: float = 500.0,
        onset_frames: int = 3,
        silence_frames: int = 25,
    ):
        self.reply_audio = reply_audio if reply_audio is not None else tone()
        self.reply_text = reply_text
        self.heard_text = heard_text
        self.threshold = threshold
        self.onset_frames = onset_frames
        self.silence_frames = silence_frames
        self.sessions: list[ReplaySession] = []
        self.closed_sessions = 0

    def new_session(
        self, settings: SessionSettings | None = None, *, playout: str = "paced"
    ) -> ReplaySession:
        session = ReplaySession(self, settings)
        self.sessions.append(session)
        return session

    async def aclose(self) -> None:
        return None


def _keeps_the_contract(engine: ReplayEngine) -> None:
    """Never called: mypy checks here that this is what transports expect."""
    source: SessionSource = engine
    session: TransportSession = engine.new_session()
    del source, session
