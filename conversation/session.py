"""A session: one person talking with seetalk, whatever the transport.

Glue only: it moves audio into voice activity detection and recognition, hands what happens
to the pure :class:`~conversation.turns.TurnTaker`, and runs the actions it returns (recognize,
reply, stop, resume). Transports push input, pull output and read :attr:`Session.events`
(see docs/session-api.md). Every task is owned by the session and ends with it.

Speech is never lost: audio a person speaks becomes a turn or an explicit ``error`` event.
An utterance that starts while the previous one's final pass still holds the recognizer
waits in memory (bounded by ``MAX_UTTERANCE_S``) and enters the recognizer the moment that
pass has taken its audio. Input the session cannot keep (a queue overflow, an utterance
past its maximum length) is reported, never dropped silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from conversation import client_events, responses
from conversation import events as ev
from conversation import turns as tt
from conversation.contract import SessionSource, TransportSession
from conversation.echo import SessionEcho
from conversation.history import Conversation, Item
from conversation.mcp import McpRegistry, SessionMcp
from conversation.playout import AudioOutput
from conversation.protocol import ClientEvent
from conversation.reply import Reply
from conversation.server_tools import ServerTool, ToolHost, ToolRuns, builtin_tools, look_now
from conversation.settings import describe_session
from conversation.speaker import Busy, Speaker
from conversation.tool_schema import ToolOptions
from conversation.tools import SessionTools
from llm.backend import ChatBackend, ChatMessage, GenerationSettings
from models.engine import Engine
from models.scheduler import Priority
from seetalk.clock import Clock, MonotonicClock
from seetalk.config import BuiltinTools, SessionSettings
from seetalk.errors import ConfigError, InvalidEvent, SeetalkError
from vision.frames import FrameIntake
from voice.asr import StreamingRecognizer
from voice.audio import StreamResampler, s16_interleaved_to_mono_float
from voice.smart_turn import SmartTurn
from voice.vad import VoiceActivity
from voice.vad_model import SharedSileroVad

log = logging.getLogger(__name__)

RATE = 16_000  # the models' input rate
# Input audio waiting for the VAD, in seconds; overflow policy: drop the oldest, reported
# with an ``input_audio_dropped`` error event. A session that fell behind catches up by
# processing up to INPUT_BATCH_S at once.
INPUT_QUEUE_S = 60.0
INPUT_BATCH_S = 1.0
EVENT_QUEUE_MAX = 2000  # overflow policy: drop the oldest event
NOT_UNDERSTOOD = "Sorry, I didn't catch that. Could you say it again?"
RECENT_S = 6.0  # audio kept before an utterance starts: prefix padding, and speech the echo
# gate held back (voice/echo_gate.py) that turns out to be the person's


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
        builtins: BuiltinTools | None = None,
        mcp: McpRegistry | None = None,
    ) -> None:
        if playout not in ("paced", "push"):
            raise ValueError("playout is 'paced' or 'push'")
        self.engine = engine
        self.builtins = builtins or BuiltinTools()  # switched on by the deployment (--tools)
        if not settings.timezone:
            settings = dataclasses.replace(settings, timezone=self.builtins.timezone)
        self.settings = settings
        self.playout = playout
        self.clock = clock or MonotonicClock()
        self.id = session_id or ev.new_id("sess")
        self.events = EventQueue()
        self.audio_out = AudioOutput(settings.output_rate, on_playout=self._on_playout)
        self.turns = tt.TurnTaker(tt.for_model(settings.turn, engine.eot is not None))
        self.conversation = Conversation()
        self.busy = Busy()
        self.closed = False
        self.last_activity = self.clock.now()
        self.frames = FrameIntake(settings)  # camera frames (vision/frames.py)
        self.frames.clock = lambda: self.input_time  # camera on/off by the input timeline
        self._vision: asyncio.Task[TurnVision] | None = None  # what the model sees this turn
        self._tasks: set[asyncio.Task[Any]] = set()
        self._speaker = Speaker(
            engine,
            self.audio_out,
            self.emit,
            self.clock,
            self.busy,
            self.spawn,
            on_failed=self._reply_failed,
            session_id=self.id,
        )
        self.tools = SessionTools(self.emit)  # function tools and calls (conversation/tools.py)
        self._speaker.on_tool = lambda reply, delta: self.tools.on_delta(reply.id, delta)
        self._speaker.on_silent = self._ended_silent
        self.tool_runs = ToolRuns(  # tools seetalk runs itself (conversation/server_tools.py)
            ToolHost(
                self.spawn,
                self.emit,
                self.clock.now,
                self.conversation,
                lambda: (self._utterance_start, self.turns.in_utterance),
                lambda: self._reply is not None,
                self._say,
                self._tool_follow_up,
            )
        )
        # MCP servers (conversation/mcp.py): the deployment's, and the session's own
        self.mcp = SessionMcp(mcp, self.emit, self.spawn, self.conversation)
        self.tools.server_specs = lambda: (*self.tool_runs.specs, *self.mcp.specs())
        self.tools.own_names = lambda: tuple(s.name for s in self.tool_runs.specs)
        self.tools.mcp_offered = self.mcp.offered  # names a client's function may not take
        self.tools.announce_mcp = self.mcp.announce
        self.tool_runs.mcp = self.mcp
        self.add_server_tools(
            builtin_tools(
                self.builtins.names,
                zone=lambda: self.settings.timezone or self.builtins.timezone,
                look=lambda: look_now(self.frames, self.input_time, self.engine, self.id),
            )
        )
        self._vad = VoiceActivity(SharedSileroVad(engine.vad_path), settings.turn)
        # echo of the reply (docs/echo.md): the output is its reference; per session
        self.echo = SessionEcho(
            settings.echo, lambda: self._samples + self._input_samples, queued=playout == "push"
        )
        self.audio_out.on_audio, self.audio_out.on_clear = self.echo.played, self.echo.cleared
        # This session's share of each model role (models/scheduler.py): finals go first,
        # partials are background work, skipped when their role is behind.
        self._vad_lane = engine.vad_executor.lane(self.id, Priority.FINAL, kind="vad")
        partial_role = (
            engine.asr_partial_executor if engine.partial_transcriber else engine.asr_executor
        )
        self._recognizer = StreamingRecognizer(
            engine.transcriber,
            engine.asr_executor.lane(self.id, Priority.FINAL, kind="final"),
            on_partial=self._on_partial,
            partial_transcriber=engine.partial_transcriber or engine.transcriber,
            partial_executor=partial_role.lane(
                self.id, Priority.BACKGROUND, kind="partial", skippable=True
            ),
        )
        self._resampler: StreamResampler | None = None
        self._resampler_rate = 0
        self._input: deque[np.ndarray] = deque()
        self._input_samples = 0  # samples in ``_input``
        self._input_ready = asyncio.Event()
        self._input_lock = asyncio.Lock()  # one writer of the timeline: the loop or a commit
        self.input_dropped = 0  # input chunks dropped by the overflow policy (oldest first)
        self._drop_reported = False
        self._samples = 0  # 16 kHz samples processed: the input timeline
        # The recognizer serves one utterance at a time: ended utterances whose final pass
        # has not taken its audio yet, and utterances waiting behind them (their audio).
        self._final_holds = 0
        self._waiting: deque[list[np.ndarray]] = deque()
        self._open_waits = False  # the open utterance's audio goes to ``_waiting[-1]``
        self._heard = 0  # samples given to the open utterance
        self._room = 0  # samples it may take (MAX_UTTERANCE_S and its prefix)
        self._full_reported = False
        self._arrival: tuple[int, float] = (0, 0.0)  # (sample count, clock) at the last push
        self._recent: deque[np.ndarray] = deque()
        self._recent_samples = 0
        self._user_item: str | None = None  # the user item of the utterance in progress
        self._partial = ""
        self._speech_end_clock: float | None = None
        self._eot_verdict: bool | None = None  # the end-of-turn model's, for the metrics
        self._endpoint_clock: float | None = None
        self._reply: Reply | None = None  # the reply of the current turn
        self._held: Reply | None = None  # a preemptive reply, not yet confirmed
        self._answered: str | None = None  # the latest user item a reply was started for
        self._finalizing: asyncio.Task[None] | None = None
        self._utterance_start = 0.0
        self._final_clock: float | None = None
        self._finished: deque[Reply] = deque(maxlen=8)  # ended replies a client may truncate
        self.rest = responses.SessionRest(self)  # text/out-of-band replies, idle timeout

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.spawn(self._input_loop())
        self.emit(ev.session_created(self.describe()))
        self.mcp.start()  # the deployment's MCP servers' listings
        self.rest.started()

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
        try:
            await self.mcp.aclose()  # MCP servers opened for this session
        except asyncio.CancelledError:
            interrupted = True
        for result in results:
            if isinstance(result, Exception):
                log.error("session %s task failed at close", self.id, exc_info=result)
        self._tasks.clear()
        self.engine.forget(self.id)  # its fair-share accounts on the model roles
        # The session and its parts refer to each other (callbacks), so it goes only at the
        # next full garbage collection: its big buffers go now (bench/soak.py).
        self.echo.set_mode("off")
        self._recent.clear()
        self._input.clear()
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
        self.events.put(self.rest.decorate(event))

    @property
    def backend(self) -> Any:
        """The language model the replies come from."""
        return self.engine.backend

    def llm_for(self, priority: Priority) -> ChatBackend:
        """The language model as this session's work at ``priority`` reaches it (scheduled
        on the engine's ``llm`` role; see models/engine.py)."""
        return self.engine.llm_for(self.id, priority)

    async def handle_client_event(self, event: ClientEvent) -> None:
        """Act on one parsed client event (:func:`conversation.protocol.parse_client_event`);
        the handlers are :mod:`conversation.client_events`. Anything wrong becomes an
        ``error`` event; the session goes on."""
        await client_events.handle(self, event)

    def describe(self) -> dict[str, Any]:
        """The session object of ``session.created``/``session.updated`` (OpenAI shape)."""
        out = {**describe_session(self.id, self.settings), **self.tools.describe()}
        out["seetalk"]["server_tools"] = [s.to_openai()["function"] for s in self.tool_runs.specs]
        return out

    def apply_settings(self, new: SessionSettings) -> None:
        """Make ``new`` the session's settings, at every stage they govern, or change nothing.

        Checked first, then applied (so a refusal leaves everything as it was):

        - ``output_rate`` cannot change when the playout is paced (a WebRTC track or a file
          session consumes fixed frames at the rate they opened with); with push playout it
          applies to the next reply, while replies in flight keep their own rate (every
          :class:`~conversation.playout.OutputChunk` carries its rate).
        - ``turn.mode`` cannot change while an utterance is open (commit or clear it first).

        Then: the turn-taker (every ``turn`` field, from the next decision), the VAD gate
        (``vad_threshold``, ``min_speech_ms``, ``min_silence_ms``, from its next chunk),
        frame intake (``camera_max_side`` from the next frame, ``jpeg_quality`` and
        ``max_keyframes`` from the next selection) and the output rate. ``instructions``,
        ``max_output_tokens``, ``temperature`` and ``history_turns`` are read at each reply;
        ``prefix_padding_ms`` at each utterance. Raises :class:`ConfigError`.
        """
        old = self.settings
        if new.output_rate != old.output_rate:
            if new.output_rate <= 0:
                raise ConfigError("output_rate must be positive", param="output_rate")
            if self.playout == "paced":
                raise ConfigError(
                    f"output_rate cannot change mid-session: the audio is paced at "
                    f"{old.output_rate} Hz by the transport; choose it when the session opens",
                    param="output_rate",
                )
        if new.turn.mode != old.turn.mode and self.turns.in_utterance:
            raise ConfigError(
                "turn detection cannot change while an utterance is in progress: "
                "commit or clear the input audio buffer first",
                param="turn_detection",
            )
        transcriber = responses.transcriber_for(self.engine.transcriber, new)  # may refuse
        responses.check_voice(self.engine.synthesizer, new)  # speed: the local voice only
        self.settings = new
        self._recognizer.transcriber = transcriber  # audio.input.transcription.language
        self._recognizer.prompt = new.transcription_prompt or None  # ... and its prompt
        self.turns.update_settings(tt.for_model(new.turn, self.engine.eot is not None))
        self._vad.update_settings(new.turn)
        self.frames.update_settings(new)
        self.echo.set_mode(new.echo)
        if new.output_rate != old.output_rate:
            self.audio_out.set_rate(new.output_rate)

    # --- input -----------------------------------------------------------------------------

    def push_audio(self, samples: np.ndarray, rate: int, channels: int = 1) -> None:
        """Queue microphone audio (int16 interleaved or float32). Non-blocking; beyond
        ``INPUT_QUEUE_S`` queued the oldest audio is dropped, counted and reported with an
        ``input_audio_dropped`` error event (once per overflow)."""
        if self.closed:
            return
        audio = self._to_model_rate(samples, rate, channels)
        if audio.size == 0:
            return
        self._input.append(audio)
        self._input_samples += audio.size
        while self._input_samples > INPUT_QUEUE_S * RATE and len(self._input) > 1:
            self._input_samples -= self._input.popleft().size
            self.input_dropped += 1
            if not self._drop_reported:
                self._drop_reported = True
                self._report(
                    "input_audio_dropped",
                    f"the session fell more than {INPUT_QUEUE_S:g} s behind its input; "
                    "the oldest input audio was dropped",
                )
        self._input_ready.set()
        self.last_activity = self.clock.now()

    def _report(self, code: str, message: str, kind: str = "server_error") -> None:
        self.emit(
            ev.error(
                {"type": kind, "code": code, "message": message, "param": None, "event_id": None}
            )
        )

    def push_video(self, frame: np.ndarray, t: float | None = None) -> None:
        """Offer a camera frame (BGR ``uint8`` array). The intake keeps a bounded history,
        latest wins; it is stamped with the input audio timeline, not ``t``. A frame that
        cannot be used becomes an ``error`` event."""
        if self.closed:
            return
        try:
            self.frames.add(frame, self.input_time)
        except SeetalkError as exc:
            self.emit(ev.error(exc.to_event_error()))

    def camera_stopped(self) -> None:
        """The camera track ended: its frames are forgotten (the model sees none)."""
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
            async with self._input_lock:
                await self._process_queued(INPUT_BATCH_S)

    async def _process_queued(self, batch_s: float) -> None:
        """Process queued input, up to ``batch_s`` seconds of it in one piece (a session that
        fell behind catches up in bigger steps)."""
        if not self._input:
            return
        parts = [self._input.popleft()]
        n = parts[0].size
        while self._input and n + self._input[0].size <= batch_s * RATE:
            parts.append(self._input.popleft())
            n += parts[-1].size
        self._input_samples -= n
        if not self._input:
            self._drop_reported = False
        await self._process(parts[0] if len(parts) == 1 else np.concatenate(parts))

    async def commit_input(self) -> None:
        """The client commits its input audio (manual turns): the audio queued before this
        call is processed first, then the open utterance ends. Raises
        :class:`InvalidEvent` (``input_audio_buffer_commit_empty``) when none is open."""
        async with self._input_lock:
            while self._input:
                await self._process_queued(INPUT_BATCH_S)
            if not self.turns.in_utterance:
                raise InvalidEvent(
                    "the input audio buffer is empty", code="input_audio_buffer_commit_empty"
                )
            self._speech_end_clock = self.clock.now()
            self.rest.committed(self._user_item)
            self._apply(self.turns.commit(self.input_time))

    def clear_input(self) -> None:
        """The client clears its input audio: the open utterance is dropped; always
        answered by ``input_audio_buffer.cleared``."""
        self._input.clear()
        self._input_samples = 0
        if self._user_item is None:
            self.emit(ev.input_cleared())
        self._apply(self.turns.clear())

    async def _process(self, audio: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        heard = audio  # what recognition hears: without the reply's echo
        if self.echo.active:
            heard = await loop.run_in_executor(self._vad_lane, self.echo.cancel, audio)
        self._arrival = (self._samples + audio.size, self.clock.now())
        self._remember(heard)
        start = self._samples
        self._samples += audio.size
        mode_none = self.settings.turn.mode == "none"
        if self.turns.in_utterance:
            self._hear(heard)
        elif mode_none:  # the utterance starts with this chunk (the prefix is the chunk)
            self._apply(self.turns.speech_started(start / RATE))
        transitions = await loop.run_in_executor(self._vad_lane, self._vad.feed, audio)
        transitions = self.echo.filter(transitions)  # speech the reply explains is not heard
        if mode_none:
            return
        if (
            self.turns.paused
            and not self._open_waits
            and self._vad.peak_prob >= self._vad.gate.neg_threshold
        ):
            self._recognizer.keep_held()  # not clearly silent: the final must hear it
        for tr in transitions:
            t = tr.sample / RATE
            if tr.kind == "speech_start":
                self._apply(self.turns.speech_started(t))
            else:
                self._speech_end_clock = self._clock_at(tr.sample)
                self._apply(self.turns.speech_stopped(t))
        self._apply(self.turns.tick(self.input_time))
        self.rest.tick(self.input_time)  # idle_timeout_ms

    def _hear(self, audio: np.ndarray) -> None:
        """Give audio to the open utterance: to the recognizer, or, while an earlier final
        pass still holds it, to the utterance's waiting buffer. Past the utterance's maximum
        length the audio is refused with an ``input_audio_buffer_full`` error (once)."""
        room = self._room - self._heard
        if audio.size > room:
            audio = audio[: max(0, room)]
            if not self._full_reported:
                self._full_reported = True
                self._report(
                    "input_audio_buffer_full",
                    f"an utterance is at most {tt.MAX_UTTERANCE_S:g} s long; commit the input "
                    "audio buffer (or pause speaking): the audio past it was dropped",
                    "invalid_request_error",
                )
        if audio.size == 0:
            return
        self._heard += audio.size
        if self._open_waits:
            self._waiting[-1].append(audio)
        else:
            self._recognizer.append(audio)

    def _release_recognizer(self) -> None:
        """A final pass has taken its audio: the next waiting utterance enters the
        recognizer (if it is the open one, recognition goes on live from here)."""
        self._final_holds = max(0, self._final_holds - 1)
        if not self._waiting or self.closed:
            return
        audio = self._waiting.popleft()
        self._recognizer.begin()
        for piece in audio:
            self._recognizer.append(piece)
        if not self._waiting and self._open_waits:
            self._open_waits = False
            if self.turns.paused:
                self._recognizer.pause()
                self.spawn(self._speculate())

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
        actions = self.rest.filter(actions)  # create_response: false answers no turn
        for action in actions:
            match action:
                case tt.UtteranceStarted(t=t):
                    self._start_utterance(t)
                case tt.RecognitionPaused(t=t):
                    self._look(t)
                    if not self._open_waits:
                        self._recognizer.pause()
                        self.spawn(self._speculate())
                case tt.RecognitionResumed():
                    if not self._open_waits:
                        self._recognizer.resume()
                case tt.CheckEndOfTurn(t=t):
                    self._check_end_of_turn(t)
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
        manual = self.settings.turn.mode == "none"
        pad = 0.0 if manual else self.settings.turn.prefix_padding_ms / 1000
        prefix = self._recent_audio(max(0.0, onset - pad))
        self._heard, self._full_reported = 0, False
        self._room = int(tt.MAX_UTTERANCE_S * RATE) + (0 if manual else prefix.size)
        self._open_waits = self._final_holds > 0  # an earlier final pass holds the recognizer
        if self._open_waits:
            self._waiting.append([])
        else:
            self._recognizer.begin()
        self._hear(prefix)
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

    def _check_end_of_turn(self, t: float) -> None:
        """Ask the end-of-turn model (``eot="smart_turn"``) about the speech up to the first
        silence at ``t``. Without the model, or if it fails, no verdict comes and the turn
        ends after ``eot_incomplete_silence_ms``."""
        model = self.engine.eot
        if model is None:
            return
        if self._open_waits:
            chunks = self._waiting[-1] if self._waiting else []
            audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        else:
            audio = self._recognizer.speech_audio()
        self.spawn(self._end_of_turn_verdict(model, t, audio))

    async def _end_of_turn_verdict(self, model: SmartTurn, t: float, audio: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        lane = self.engine.eot_executor.lane(self.id, Priority.FINAL, kind="eot")
        try:
            with self.busy():
                verdict = await loop.run_in_executor(lane, model.predict, audio)
        except Exception:  # noqa: BLE001 - the turn ends on the longer silence instead
            log.warning("end-of-turn model failed", exc_info=True)
            return
        log.debug("end of turn at %.2f s: %s", t, verdict)
        self._apply(self.turns.end_of_turn_verdict(t, verdict.complete))

    def _end_of_turn(self, start: float, end: float) -> None:
        """The open utterance ends: its final pass runs after the earlier ones (in order)."""
        item = self._user_item or ev.new_id("item")
        self._user_item = None
        self._open_waits = False  # its audio, if waiting, stays first in line
        self._eot_verdict = self.turns.verdict if self.turns.settings.eot == "smart_turn" else None
        self._final_holds += 1
        vision, self._vision = self._vision, None
        self._endpoint_clock = self.clock.now()
        self.emit(ev.speech_stopped(item, int(end * 1000)))
        self._finalizing = self.spawn(self._finalize(item, end - start, vision, self._finalizing))

    async def _finalize(
        self,
        item_id: str,
        seconds: float,
        vision: asyncio.Task[TurnVision] | None,
        earlier: asyncio.Task[None] | None,
    ) -> None:
        if earlier is not None and not earlier.done():
            await asyncio.wait([earlier])  # finals in order; never cancels the earlier one
        try:
            with self.busy():
                text = (await self._recognizer.finalize()).strip()
        except SeetalkError as exc:  # a typed failure (a remote role down): said as it is
            log.warning("session %s: final transcription failed: %s", self.id, exc)
            self.emit(ev.error(exc.to_event_error()))
            text = ""
        except Exception as exc:  # noqa: BLE001 - the turn ends without words, reported
            log.exception("session %s: final transcription failed", self.id)
            self._report("transcription_failed", f"speech recognition failed: {exc}")
            text = ""
        finally:
            self._release_recognizer()
        self._final_clock = self.clock.now()
        if tt.has_words(text):
            seen = await self._seen(item_id, vision)
            previous = self.conversation.add(
                Item(item_id, "user", text, images=seen.images, notes=seen.notes)
            )
            self.emit(ev.input_committed(item_id, previous))
            self.emit(ev.transcription_completed(item_id, text, seconds))
            user = self.conversation.get(item_id)
            assert user is not None
            self.emit(ev.item_added(user.to_event_item(), previous))
            self.emit(ev.item_done(user.to_event_item(), previous))
        self.rest.finalized(item_id, text, seconds)  # a client commit is always answered
        self._apply(self.turns.final(text))

    # --- seeing ---------------------------------------------------------------------------

    def _look(self, end: float) -> None:
        """Choose what the model sees for the utterance ending at ``end`` (in the background)."""
        if not self.frames.camera_on:
            self._vision = None
            return
        self._vision = self.spawn(self._select_frames(self._utterance_start, end))

    async def _select_frames(self, start: float, end: float) -> TurnVision:
        loop = asyncio.get_running_loop()
        with self.busy():
            selection = await loop.run_in_executor(
                self.engine.vision_executor.lane(self.id, Priority.FIRST, kind="frames"),
                self.frames.select,
                start,
                end,
            )
            images = selection.jpegs()
            notes = ""
            if (
                images
                and not self.engine.backend.supports_images
                and self.engine.vision is not None
            ):
                notes = await loop.run_in_executor(  # Skipped (a SeetalkError) when behind
                    self.engine.vision_executor.lane(
                        self.id, Priority.BACKGROUND, kind="scene", skippable=True
                    ),
                    self.engine.vision.describe,
                    images,
                )
        return TurnVision(images, notes, selection)

    async def _seen(self, item_id: str, task: asyncio.Task[TurnVision] | None) -> TurnVision:
        """What the model sees with this turn; reported as ``seetalk.frames.selected``."""
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
        """Drop the open utterance (or, with none open, whatever the recognizer holds)."""
        if self._user_item is not None:
            self.emit(ev.input_cleared())
        self._user_item = None
        if self._open_waits:
            self._waiting.pop()
            self._open_waits = False
        elif self._final_holds == 0:
            self._recognizer.discard()

    # --- replies ----------------------------------------------------------------------------

    def _new_reply(self, *, held: bool) -> Reply:
        reply = Reply(rate=self.settings.output_rate, held=held, speed=self.settings.speed)
        reply.times.speech_end = self._speech_end_clock
        reply.times.endpoint = self._endpoint_clock
        reply.times.eot_complete = self._eot_verdict
        return reply

    def _generation(self) -> GenerationSettings:
        return GenerationSettings(
            max_tokens=self.settings.max_output_tokens, temperature=self.settings.temperature
        )

    def _run(
        self,
        reply: Reply,
        user_text: str | None = None,
        messages: list[ChatMessage] | None = None,
        generation: GenerationSettings | None = None,
    ) -> None:
        if messages is None:
            messages = self.conversation.messages(
                self.settings.instructions, self.settings.history_turns
            )
        if user_text is not None:  # preemptive: the user's words are not in history yet
            messages.append(ChatMessage("user", user_text))
        messages = self.rest.fit(messages, reply.id)  # the context budget (``truncation``)
        item = self._user_item
        self._speaker.start(
            reply,
            messages,
            generation or self._generation(),
            lambda why: self.emit(ev.images_dropped(item or "", why)),
            tools=self.tools.use_for_reply(),
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
        reply.times.eot_complete = self._eot_verdict
        self._reply = reply
        self.turns.reply_started(reply.id)
        self._answered = self._latest_user()
        self._speaker.adopt(reply)

    def _latest_user(self) -> str | None:
        return next((i.id for i in reversed(self.conversation.items) if i.role == "user"), None)

    def _respond(
        self,
        messages: list[ChatMessage] | None = None,
        generation: GenerationSettings | None = None,
        priority: Priority | None = None,
        *,
        requested: bool = False,
    ) -> str | None:
        """Start a reply to the conversation as it stands (or to ``messages``); with
        ``output_modalities: ["text"]`` a text response (conversation/responses.py)."""
        if messages is None and self.rest.respond_text():
            return None
        if self._reply is not None and self._reply.status == "in_progress":
            self._interrupt_reply(self._reply.id, "turn_detected")
        self.rest.cancel_text("turn_detected")
        reply = self._new_reply(held=False)
        reply.times.final_ready = self._final_clock
        latest = self._latest_user()
        reply.priority = (
            priority
            if priority is not None
            else responses.generation_priority(
                requested=requested, latest_user=latest, answered=self._answered
            )
        )
        self._answered = latest
        self._reply = reply
        self.rest.claim_next(reply.id)  # options of a response.create, if any
        self.turns.reply_started(reply.id)
        self._speaker.announce(reply)
        self._run(reply, messages=messages, generation=generation)
        return reply.id

    def respond_now(
        self,
        messages: list[ChatMessage] | None = None,
        generation: GenerationSettings | None = None,
        priority: Priority | None = None,
    ) -> str | None:
        """``response.create``: answer the conversation as it stands (or ``messages``), now;
        its generation at ``priority``, else as :func:`responses.generation_priority` says."""
        self._final_clock = self.clock.now()
        self._endpoint_clock = self._final_clock
        self._speech_end_clock = self._final_clock
        return self._respond(messages, generation, priority, requested=True)

    def cancel_reply(self, reason: str = "client_cancelled") -> None:
        """``response.cancel``: stop the current reply, keeping what was heard. Nothing to
        cancel is not an error (clients send it freely)."""
        self.rest.cancel_text(reason)
        self.tool_runs.cancel()  # a pending server-side call
        if self._reply is not None:
            self._interrupt_reply(self._reply.id, reason)

    def truncate_item(self, item_id: str, end_ms: int) -> str:
        """``conversation.item.truncate``: the client played ``end_ms`` of the assistant
        item's audio. A reply still in progress stops there; the history keeps the words
        heard by then, marked interrupted. Returns them; raises :class:`InvalidEvent`."""
        candidates = [self._reply, *self._finished]
        reply = next((r for r in candidates if r is not None and r.item_id == item_id), None)
        item = self.conversation.get(item_id)
        if reply is None and (item is None or item.role != "assistant"):
            raise InvalidEvent(
                f"no assistant audio item {item_id!r}", code="item_not_found", param="item_id"
            )
        if reply is None:
            raise InvalidEvent(f"item {item_id!r} has no audio to truncate", param="item_id")
        position = min(reply.total_samples, end_ms * reply.rate // 1000)
        if reply.status == "in_progress":
            reply.played = min(reply.played, position)
            self._interrupt_reply(reply.id, "client_cancelled")
        heard = reply.heard_text(position)
        if item is not None or (item := self.conversation.get(item_id)) is not None:
            item.text, item.interrupted = heard, True
        return heard

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
        self._stop_reply(reply, "cancelled", reason)

    def _reply_failed(self, reply: Reply, error: dict[str, Any]) -> None:
        """One of the reply's tasks failed (the speaker has emitted the ``error``): a held
        reply is dropped unseen; an announced one ends now, ``failed``."""
        if reply is self._held:
            self._held = None
            reply.status = "failed"
            self._speaker.cancel(reply)
        elif not reply.ended:
            self._stop_reply(reply, "failed", None)

    def _stop_reply(self, reply: Reply, status: str, reason: str | None) -> None:
        """End a reply before it finished playing: ``response.done`` with ``status``; the
        history keeps what was heard, marked interrupted."""
        if self.audio_out.current is reply or reply.played < reply.total_samples:
            self.audio_out.clear()
        reply.status = status
        self._finished.append(reply)
        self._speaker.cancel(reply)
        self.turns.reply_ended(reply.id)
        if self._reply is reply:
            self._reply = None
        heard = reply.heard_text()
        output: list[dict[str, Any]] = []
        if reply.started_audio:
            item = Item(reply.item_id, "assistant", heard, interrupted=True)
            audio_s = reply.total_samples / reply.rate  # synthesized: the reply's cost
            previous = self.rest.add_reply(reply.id, item, audio_s)  # out of band: no history
            self.emit(ev.item_truncated(reply.item_id, reply.position_ms(), heard))
            self.emit(ev.item_done(item.to_event_item(), previous))
            output = [item.to_event_item()]
        err = reply.error if status == "failed" else None
        self.tools.discard(reply.id)  # calls of a cancelled reply are never announced
        self.emit(ev.response_done(reply.id, status, output, reason=reason, err=err))

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
        audio_s = reply.total_samples / reply.rate
        previous = self.rest.add_reply(reply.id, item, audio_s)  # out of band: not in history
        self.turns.reply_ended(reply.id)
        if self._reply is reply:
            self._reply = None
        self.emit(ev.audio_done(reply.id, reply.item_id))
        self.emit(ev.audio_transcript_done(reply.id, reply.item_id, text))
        self.emit(ev.content_part_done(reply.id, reply.item_id, text))
        self.emit(ev.output_item_done(reply.id, item.to_event_item()))
        self.emit(ev.item_done(item.to_event_item(), previous))
        self.emit(ev.output_audio_stopped(reply.id))
        calls = self.tools.finish(reply.id, self.conversation, 1)  # its function calls
        output = [item.to_event_item(), *calls]
        done = ev.response_done  # after the response's MCP calls, if any (they are in it)
        self.tool_runs.after_reply(  # the server's own tools run now
            calls, lambda: self.emit(done(reply.id, reply.status, output, err=reply.error))
        )

    def _ended_silent(self, reply: Reply) -> None:
        """A reply that produced no audio (only tool calls) ends as if it had played."""
        if not reply.ended:
            self._on_playout(reply, "finished")

    def add_server_tools(self, tools: list[ServerTool]) -> None:
        """Tools this session runs itself (MCP servers' tools, built-ins); the model sees
        them beside the client's function tools."""
        self.tool_runs.add(tools)

    def run_approved(self) -> bool:
        """``response.create`` after approvals: the approved MCP calls run in a response of
        their own (``mcp_call`` items), then a reply speaks the answer. False if none."""
        if not self.mcp.has_approved():
            return False
        rid = ev.new_id("resp")
        self.emit(ev.response_created(rid))
        calls = self.mcp.take_approved(rid)
        self.tool_runs.after_reply(
            calls, lambda: self.emit(ev.response_done(rid, "completed", calls))
        )
        return True

    def _tool_follow_up(self) -> None:
        """The server's tools have answered: speak the answer (no further tool call)."""
        self.tools.next_response(ToolOptions(tool_choice="none"))
        self.respond_now(priority=Priority.FIRST)  # the turn's answer, still awaited


class Sessions:
    """Sessions on one set of loaded models: the :class:`~conversation.contract.SessionSource`
    every transport opens sessions from."""

    def __init__(
        self,
        engine: Engine,
        builtins: BuiltinTools | None = None,
        mcp: McpRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.builtins = builtins  # the built-in tools every session gets (--tools)
        self.mcp = mcp  # the deployment's MCP servers (--mcp), set by the app once started

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
            builtins=self.builtins,
            mcp=self.mcp,
        )

    def load(self) -> dict[str, dict[str, Any]]:
        """Each model role's scheduler statistics (admission by capacity, ``/healthz``)."""
        return self.engine.load_stats()

    async def aclose(self) -> None:
        await self.engine.aclose()


def _keeps_the_contract(sessions: Sessions) -> None:
    """Never called: mypy checks here that this is what transports expect."""
    source: SessionSource = sessions
    session: TransportSession = sessions.new_session()
    del source, session
