"""A session: one person talking with seetalk, whatever the transport.

Glue only: it moves audio into voice activity detection and recognition, hands what happens
to the pure :class:`~conversation.turns.TurnTaker`, and runs the actions it returns (recognize,
reply, stop, resume). Transports push input, pull output and read :attr:`Session.events`
(see docs/session-api.md). Every task is owned by the session and ends with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from seetalk.clock import Clock, MonotonicClock
from seetalk.config import SessionSettings
from seetalk.errors import InvalidEvent, SeetalkError
from conversation import client_events
from conversation import events as ev
from conversation import turns as tt
from conversation.playout import AudioOutput
from conversation.history import Conversation, Item
from conversation.reply import Reply
from conversation.settings import describe_session
from conversation.speaker import Busy, Speaker
from llm.backend import ChatMessage, GenerationSettings
from models.engine import Engine
from vision.frames import FrameIntake
from voice.asr import StreamingRecognizer
from voice.audio import StreamResampler, s16_interleaved_to_mono_float
from voice.vad import SileroVad, VoiceActivity

log = logging.getLogger(__name__)

RATE = 16_000  # the models' input rate
INPUT_QUEUE_CHUNKS = 150  # about 3 s of 20 ms frames; overflow policy: drop the oldest
EVENT_QUEUE_MAX = 2000  # overflow policy: drop the oldest event
NOT_UNDERSTOOD = "Sorry, I didn't catch that. Could you say it again?"
RECENT_S = 2.0  # audio kept before an utterance starts (prefix padding comes from it)


class EventQueue:
    """Bounded event queue; when a consumer stalls, the oldest events are dropped."""

    def __init__(self, maxsize: int = EVENT_QUEUE_MAX) -> None:
        self._items: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self.maxsize = maxsize
        self.dropped = 0

    def put(self, event: dict[str, Any]) -> None:
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        """The next event. Cancelling it is safe."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> dict[str, Any] | None:
        return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class TurnVision:
    """What the model sees with a user turn: images (for a vision model) or scene notes."""

    images: tuple[bytes, ...]
    notes: str
    selection: Any


class Session:
    def __init__(
        self,
        engine: Engine,
        settings: SessionSettings,
        *,
        playout: str = "paced",
        clock: Clock | None = None,
        session_id: str | None = None,
    ) -> None:
        if playout not in ("paced", "push"):
            raise ValueError("playout is 'paced' or 'push'")
        self.engine = engine
        self.settings = settings
        self.playout = playout
        self.clock = clock or MonotonicClock()
        self.id = session_id or ev.new_id("sess")
        self.events = EventQueue()
        self.audio_out = AudioOutput(settings.output_rate, on_playout=self._on_playout)
        self.turns = tt.TurnTaker(settings.turn)
        self.conversation = Conversation()
        self.busy = Busy()
        self.closed = False
        self.last_activity = self.clock.now()
        self.frames = FrameIntake(settings)  # camera frames (vision/frames.py)
        self._vision: asyncio.Task[TurnVision] | None = None  # what the model sees this turn
        self._tasks: set[asyncio.Task[Any]] = set()
        self._speaker = Speaker(
            engine, self.audio_out, self.emit, self.clock, self.busy, self.spawn
        )
        self._vad = VoiceActivity(SileroVad(engine.vad_path), settings.turn)
        self._recognizer = StreamingRecognizer(
            engine.transcriber,
            engine.asr_executor,
            on_partial=self._on_partial,
            partial_transcriber=engine.partial_transcriber,
            partial_executor=engine.asr_partial_executor,
        )
        self._resampler: StreamResampler | None = None
        self._resampler_rate = 0
        self._input: deque[np.ndarray] = deque()
        self._input_ready = asyncio.Event()
        self.input_dropped = 0  # input chunks dropped by the overflow policy (oldest first)
        self._samples = 0  # 16 kHz samples processed: the input timeline
        if self.frames is not None:
            self.frames.clock = lambda: self.input_time  # camera on/off by the input timeline
        self._arrival: tuple[int, float] = (0, 0.0)  # (sample count, clock) at the last push
        self._recent: deque[np.ndarray] = deque()
        self._recent_samples = 0
        self._user_item: str | None = None  # the user item of the utterance in progress
        self._partial = ""
        self._speech_end_clock: float | None = None
        self._endpoint_clock: float | None = None
        self._reply: Reply | None = None  # the reply of the current turn
        self._held: Reply | None = None  # a preemptive reply, not yet confirmed
        self._finalizing: asyncio.Task[None] | None = None
        self._utterance_start = 0.0
        self._final_clock: float | None = None
        self._finished: deque[Reply] = deque(maxlen=8)  # ended replies a client may truncate
        self._manual_audio = False  # turn mode "none": audio since the last commit

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.spawn(self._input_loop())
        self.emit(ev.session_created(self.describe()))

    async def aclose(self) -> None:
        """End the session: cancel and await every task it owns. Idempotent.

        Every task is cancelled before anything is awaited, so even when the caller is
        cancelled meanwhile nothing is left running; that cancellation is re-raised."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        interrupted = False
        try:
            await self._recognizer.aclose()
        except asyncio.CancelledError:
            interrupted = True
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("session %s task failed at close", self.id, exc_info=result)
        self._tasks.clear()
        if interrupted:
            raise asyncio.CancelledError

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task owned by this session."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("session %s task failed", self.id, exc_info=exc)
            self.emit(
                ev.error(
                    {
                        "type": "server_error",
                        "code": "internal_error",
                        "message": f"internal error: {exc}",
                        "param": None,
                        "event_id": None,
                    }
                )
            )

    @property
    def input_time(self) -> float:
        """Seconds of input audio processed: the input timeline."""
        return self._samples / RATE

    @property
    def quiet(self) -> bool:
        """Nobody speaks and nothing is pending: no utterance, reply or model work."""
        return (
            not self.turns.in_utterance
            and self._reply is None
            and self._held is None
            and not self.busy.count
            and self.audio_out.buffered_samples == 0
            and (self._finalizing is None or self._finalizing.done())
        )

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    def emit(self, event: dict[str, Any]) -> None:
        self.events.put(event)

    async def handle_client_event(self, event: dict[str, Any]) -> None:
        """Act on a client event (OpenAI Realtime shape): see :mod:`conversation.client_events`.
        Anything wrong becomes an ``error`` event; the session goes on."""
        await client_events.handle(self, event)

    def describe(self) -> dict[str, Any]:
        """The session object of ``session.created``/``session.updated`` (OpenAI shape)."""
        return describe_session(self.id, self.settings)

    # --- input -----------------------------------------------------------------------------

    def push_audio(self, samples: np.ndarray, rate: int, channels: int = 1) -> None:
        """Queue microphone audio (int16 interleaved or float32). Non-blocking; when the queue
        is full the oldest audio is dropped (and counted)."""
        if self.closed:
            return
        audio = self._to_model_rate(samples, rate, channels)
        if audio.size == 0:
            return
        if len(self._input) >= INPUT_QUEUE_CHUNKS:
            self._input.popleft()
            self.input_dropped += 1
        self._input.append(audio)
        self._input_ready.set()
        self.last_activity = self.clock.now()

    def push_video(self, frame: np.ndarray, t: float | None = None) -> None:
        """Offer a camera frame (BGR ``uint8`` array). The intake keeps a bounded history,
        latest wins; it is stamped with the input audio timeline, not ``t``. A frame that
        cannot be used becomes an ``error`` event."""
        if self.closed or self.frames is None:
            return
        try:
            self.frames.add(frame, self.input_time)
        except SeetalkError as exc:
            self.emit(ev.error(exc.to_event_error()))

    def camera_stopped(self) -> None:
        """The camera track ended: its frames are forgotten (the model sees none)."""
        if self.frames is not None:
            self.frames.stop()

    async def feed_audio(self, samples: np.ndarray, rate: int, channels: int = 1) -> None:
        """Process audio now, in order (file sessions on a virtual clock)."""
        audio = self._to_model_rate(samples, rate, channels)
        if audio.size:
            self.last_activity = self.clock.now()
            await self._process(audio)

    async def wait_idle(self) -> None:
        """Wait until no model work is in flight (virtual-time runs step on this)."""
        while (
            self._input
            or self.busy.count
            or self._recognizer.busy
            or (self._finalizing is not None and not self._finalizing.done())
        ):
            await asyncio.sleep(0.002)

    def _to_model_rate(self, samples: np.ndarray, rate: int, channels: int) -> np.ndarray:
        a = np.asarray(samples)
        if a.dtype == np.int16:
            mono = s16_interleaved_to_mono_float(a.reshape(-1), channels)
        elif a.dtype in (np.float32, np.float64):
            flat = a.astype(np.float32).reshape(-1)
            mono = flat.reshape(-1, channels).mean(axis=1) if channels > 1 else flat
        else:
            raise InvalidEvent(f"unsupported sample format {a.dtype}", code="invalid_audio")
        if rate == RATE:
            return mono.astype(np.float32)
        if self._resampler is None or self._resampler_rate != rate:
            self._resampler = StreamResampler(rate, RATE)
            self._resampler_rate = rate
        return self._resampler.process(mono)

    async def _input_loop(self) -> None:
        while True:
            while not self._input:
                self._input_ready.clear()
                await self._input_ready.wait()
            await self._process(self._input.popleft())

    async def _process(self, audio: np.ndarray) -> None:
        self._arrival = (self._samples + audio.size, self.clock.now())
        self._remember(audio)
        start = self._samples
        self._samples += audio.size
        mode_none = self.settings.turn.mode == "none"
        if self.turns.in_utterance:
            self._recognizer.append(audio)
        elif mode_none:
            self._apply(self.turns.speech_started(start / RATE))
            self._recognizer.append(audio)
        loop = asyncio.get_running_loop()
        transitions = await loop.run_in_executor(self.engine.vad_executor, self._vad.feed, audio)
        if mode_none:
            return
        if self.turns.paused and self._vad.peak_prob >= self._vad.gate.neg_threshold:
            self._recognizer.keep_held()  # not clearly silent: the final must hear it
        for tr in transitions:
            t = tr.sample / RATE
            if tr.kind == "speech_start":
                self._apply(self.turns.speech_started(t))
            else:
                self._speech_end_clock = self._clock_at(tr.sample)
                self._apply(self.turns.speech_stopped(t))
        self._apply(self.turns.tick(self.input_time))

    def _remember(self, audio: np.ndarray) -> None:
        self._recent.append(audio)
        self._recent_samples += audio.size
        while self._recent_samples - self._recent[0].size > RECENT_S * RATE:
            self._recent_samples -= self._recent.popleft().size

    def _recent_audio(self, since: float) -> np.ndarray:
        audio = np.concatenate(list(self._recent)) if self._recent else np.zeros(0, np.float32)
        keep = int(max(0.0, self.input_time - since) * RATE)
        return audio[-keep:] if keep else audio[:0]

    def _clock_at(self, sample: int) -> float:
        end, at = self._arrival
        return at - (end - sample) / RATE

    # --- the turn-taker's actions -----------------------------------------------------------

    def _apply(self, actions: list[tt.Action]) -> None:
        for action in actions:
            match action:
                case tt.UtteranceStarted(t=t):
                    self._start_utterance(t)
                case tt.RecognitionPaused(t=t):
                    self._recognizer.pause()
                    self._look(t)
                    self.spawn(self._speculate())
                case tt.RecognitionResumed():
                    self._recognizer.resume()
                case tt.StartPreemptive(text=text):
                    self._start_preemptive(text)
                case tt.CancelPreemptive():
                    self._drop_held()
                case tt.EndOfTurn(start=start, end=end):
                    if self._vision is None:
                        self._look(end)
                    self._end_of_turn(start, end)
                case tt.AdoptPreemptive():
                    self._adopt()
                case tt.Respond(text=text):
                    self._respond()
                case tt.DiscardUtterance():
                    self._discard_utterance()
                case tt.NotUnderstood():
                    self._say(NOT_UNDERSTOOD)
                case tt.PauseReply(reply_id=rid, onset=onset):
                    self._pause_reply(rid, onset)
                case tt.InterruptReply(reply_id=rid):
                    self._interrupt_reply(rid, "turn_detected")
                case tt.ResumeReply(reply_id=rid):
                    self._resume_reply(rid)
                case tt.CancelPendingReply(reply_id=rid):
                    self._interrupt_reply(rid, "turn_detected")

    def _start_utterance(self, onset: float) -> None:
        self._utterance_start = onset
        self._vision = None
        self._user_item = ev.new_id("item")
        self._partial = ""
        self._recognizer.begin()
        pad = self.settings.turn.prefix_padding_ms / 1000
        self._recognizer.append(self._recent_audio(max(0.0, onset - pad)))
        self.emit(ev.speech_started(self._user_item, int(onset * 1000)))

    def _on_partial(self, text: str) -> None:
        if self._user_item is None or not text.strip():
            return
        old, self._partial = self._partial, text.strip()
        delta = self._partial[len(old) :] if self._partial.startswith(old) else self._partial
        self.emit(ev.transcription_delta(self._user_item, delta, self._partial))
        self._apply(self.turns.partial(text))

    async def _speculate(self) -> None:
        """Wait for the speculative final transcript and offer it to the turn-taker."""
        text = await self._recognizer.speculative_result()
        if text is not None:
            self._apply(self.turns.speculative_final(text))

    def _end_of_turn(self, start: float, end: float) -> None:
        item = self._user_item or ev.new_id("item")
        self._user_item = item
        self._endpoint_clock = self.clock.now()
        self.emit(ev.speech_stopped(item, int(end * 1000)))
        self._finalizing = self.spawn(self._finalize(item, end - start))

    async def _finalize(self, item_id: str, seconds: float) -> None:
        with self.busy():
            text = (await self._recognizer.finalize()).strip()
        self._final_clock = self.clock.now()
        if tt.has_words(text):
            seen = await self._seen(item_id)
            previous = self.conversation.add(
                Item(item_id, "user", text, images=seen.images, notes=seen.notes)
            )
            self.emit(ev.input_committed(item_id, previous))
            self.emit(ev.transcription_completed(item_id, text, seconds))
            user = self.conversation.get(item_id)
            assert user is not None
            self.emit(ev.item_added(user.to_event_item(), previous))
            self.emit(ev.item_done(user.to_event_item(), previous))
        self._user_item = None
        self._apply(self.turns.final(text))

    # --- seeing ---------------------------------------------------------------------------

    def _look(self, end: float) -> None:
        """Choose what the model sees for the utterance ending at ``end`` (in the background)."""
        if self.frames is None or not self.frames.camera_on:
            self._vision = None
            return
        self._vision = self.spawn(self._select_frames(self._utterance_start, end))

    async def _select_frames(self, start: float, end: float) -> TurnVision:
        loop = asyncio.get_running_loop()
        with self.busy():
            selection = await loop.run_in_executor(
                self.engine.vision_executor, self.frames.select, start, end
            )
            images = selection.jpegs()
            notes = ""
            if (
                images
                and not self.engine.backend.supports_images
                and self.engine.vision is not None
            ):
                notes = await loop.run_in_executor(
                    self.engine.vision_executor, self.engine.vision.describe, images
                )
        return TurnVision(images, notes, selection)

    async def _seen(self, item_id: str) -> TurnVision:
        """What the model sees with this turn; reported as ``seetalk.frames.selected``."""
        task, self._vision = self._vision, None
        if task is None:
            return TurnVision((), "", None)
        try:
            seen = await task
        except SeetalkError as exc:
            self.emit(ev.images_dropped(item_id, exc.message))
            return TurnVision((), "", None)
        if seen.selection is not None:
            self.emit(ev.frames_selected(item_id, seen.selection.describe(), seen.selection.reason))
        if not self.engine.backend.supports_images:
            return TurnVision((), seen.notes, seen.selection)
        return seen

    def _discard_utterance(self) -> None:
        if self._user_item is not None:
            self.emit(ev.input_cleared())
        self._user_item = None
        self._recognizer.discard()

    # --- replies ----------------------------------------------------------------------------

    def _new_reply(self, *, held: bool) -> Reply:
        reply = Reply(rate=self.settings.output_rate, held=held)
        reply.times.speech_end = self._speech_end_clock
        reply.times.endpoint = self._endpoint_clock
        return reply

    def _generation(self) -> GenerationSettings:
        return GenerationSettings(
            max_tokens=self.settings.max_output_tokens, temperature=self.settings.temperature
        )

    def _run(self, reply: Reply, user_text: str | None = None) -> None:
        messages = self.conversation.messages(
            self.settings.instructions, self.settings.history_turns
        )
        if user_text is not None:  # preemptive: the user's words are not in history yet
            messages.append(ChatMessage("user", user_text))
        item = self._user_item
        self._speaker.start(
            reply,
            messages,
            self._generation(),
            lambda why: self.emit(ev.images_dropped(item or "", why)),
        )

    def _start_preemptive(self, text: str) -> None:
        if self._vision is not None:
            return  # what the camera shows is still being looked at: wait for the endpoint
        self._drop_held()
        self._held = self._new_reply(held=True)
        self._held.times.preemptive = True
        self._run(self._held, text)

    def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.status = "cancelled"
            self._speaker.cancel(held)

    def _adopt(self) -> None:
        reply, self._held = self._held, None
        if reply is None:
            self._respond()
            return
        reply.times.endpoint = self._endpoint_clock
        reply.times.final_ready = self._final_clock
        self._reply = reply
        self.turns.reply_started(reply.id)
        self._speaker.adopt(reply)

    def _respond(self) -> None:
        """Start a reply to the conversation as it stands."""
        if self._reply is not None and self._reply.status == "in_progress":
            self._interrupt_reply(self._reply.id, "turn_detected")
        reply = self._new_reply(held=False)
        reply.times.final_ready = self._final_clock
        self._reply = reply
        self.turns.reply_started(reply.id)
        self._speaker.announce(reply)
        self._run(reply)

    def _say(self, text: str) -> None:
        """Speak a fixed line as a reply (no model); it enters history like any reply."""
        reply = self._new_reply(held=False)
        reply.times.final_ready = self._final_clock
        self._reply = reply
        self.turns.reply_started(reply.id)
        self._speaker.announce(reply)
        self._speaker.say(reply, text)

    def _find_reply(self, reply_id: str) -> Reply | None:
        for reply in (self._reply, self._held):
            if reply is not None and reply.id == reply_id:
                return reply
        return None

    def _pause_reply(self, reply_id: str, onset: float) -> None:
        reply = self._find_reply(reply_id)
        if reply is None:
            return
        self.audio_out.clear()
        now_ms = int(self.input_time * 1000)
        self.emit(ev.output_audio_cleared(reply.id))
        self.emit(ev.reply_paused(reply.id, reply.position_ms()))
        self.emit(ev.barge_in(reply.id, int(onset * 1000), now_ms))
        self._speaker.pause(reply)

    def _resume_reply(self, reply_id: str) -> None:
        reply = self._find_reply(reply_id)
        if reply is None or reply.status != "in_progress":
            return
        self.emit(ev.reply_resumed(reply.id, reply.position_ms()))
        self.turns.reply_started(reply.id)
        if reply.started_audio:
            self.turns.reply_audible(reply.id)
        self._speaker.resume(reply)

    def _interrupt_reply(self, reply_id: str, reason: str) -> None:
        """Cancel a reply; commit only what was heard, marked interrupted."""
        reply = self._find_reply(reply_id)
        if reply is None or reply.status != "in_progress":
            return
        if self.audio_out.current is reply or reply.played < reply.total_samples:
            self.audio_out.clear()
        reply.status = "cancelled"
        self._finished.append(reply)
        self._speaker.cancel(reply)
        self.turns.reply_ended(reply.id)
        if self._reply is reply:
            self._reply = None
        heard = reply.heard_text()
        output: list[dict[str, Any]] = []
        if reply.started_audio:
            item = Item(reply.item_id, "assistant", heard, interrupted=True)
            previous = self.conversation.add(item)
            self.emit(ev.item_truncated(reply.item_id, reply.position_ms(), heard))
            self.emit(ev.item_done(item.to_event_item(), previous))
            output = [item.to_event_item()]
        self.emit(ev.response_done(reply.id, "cancelled", output, reason=reason))

    def _on_playout(self, reply: Reply, what: str) -> None:
        if what == "started":
            reply.times.first_audio_out = self.clock.now()
            self.turns.reply_audible(reply.id)
            self.emit(ev.output_audio_started(reply.id))
            self.emit(ev.turn_metrics(reply.id, reply.times.metrics()))
            return
        reply.status = "completed" if reply.error is None else "failed"
        self._finished.append(reply)
        text = reply.spoken_text()
        item = Item(reply.item_id, "assistant", text)
        previous = self.conversation.add(item)
        self.turns.reply_ended(reply.id)
        if self._reply is reply:
            self._reply = None
        self._speaker.forget(reply)
        self.emit(ev.audio_done(reply.id, reply.item_id))
        self.emit(ev.audio_transcript_done(reply.id, reply.item_id, text))
        self.emit(ev.content_part_done(reply.id, reply.item_id, text))
        self.emit(ev.output_item_done(reply.id, item.to_event_item()))
        self.emit(ev.item_done(item.to_event_item(), previous))
        self.emit(ev.output_audio_stopped(reply.id))
        self.emit(ev.response_done(reply.id, reply.status, [item.to_event_item()], err=reply.error))


class Sessions:
    """Sessions on one set of loaded models: the :class:`~conversation.contract.SessionSource`
    every transport opens sessions from."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def new_session(
        self,
        settings: SessionSettings | None = None,
        *,
        playout: str = "paced",
        clock: Clock | None = None,
        session_id: str | None = None,
    ) -> Session:
        return Session(
            self.engine,
            settings or SessionSettings(),
            playout=playout,
            clock=clock,
            session_id=session_id,
        )

    async def aclose(self) -> None:
        await self.engine.aclose()
