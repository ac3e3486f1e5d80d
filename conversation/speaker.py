"""Speaking a reply: generation and synthesis tasks for each :class:`~conversation.reply.Reply`.

The model's text streams into the reply; synthesis cuts it into clauses, synthesizes each
in the voice's executor and queues the audio on the session's :class:`AudioOutput`, unless
the reply is held (a preemptive reply not yet confirmed). All per-reply state (tasks,
progress) lives on the reply. Barge-in stops synthesis at once
(:meth:`Speaker.pause`); a false interruption restarts it where it stopped
(:meth:`Speaker.resume`); a confirmed one also stops generation (:meth:`Speaker.cancel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import numpy as np

from conversation import events as ev
from conversation.playout import AudioOutput
from conversation.reply import Reply
from llm.backend import ChatMessage, GenerationSettings
from llm.tools import ToolCallDelta, ToolUse, tool_stream
from models.scheduler import Priority
from seetalk.clock import Clock
from seetalk.errors import BackendError, ImagesRejected, SeetalkError
from voice.audio import float_to_s16, resample
from voice.tts import ClauseSplitter, Synthesizer

if TYPE_CHECKING:
    from models.engine import Engine
    from voice.remote import RemoteSynthesizer

log = logging.getLogger(__name__)

HELD_SEGMENTS = 2  # clauses a held (preemptive) reply synthesizes before it is adopted
APOLOGY = "Sorry, I can't reach my language model right now."


class Busy:
    """Counts model work in flight; virtual-time runs wait for it to reach zero."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def __call__(self):  # type: ignore[no-untyped-def]
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1

    @contextlib.contextmanager
    def idle(self):  # type: ignore[no-untyped-def]
        """Inside ``busy()``: waiting on the timeline (not on a model) counts as idle."""
        self.count -= 1
        try:
            yield
        finally:
            self.count += 1


class Speaker:
    """Runs each reply's generation and synthesis tasks. It keeps no per-reply state: the
    tasks and their progress live on the :class:`~conversation.reply.Reply` itself.

    A task that fails with anything but a model error (which is apologised for and spoken)
    reports ``on_failed(reply, error)`` once; the session then ends the reply as ``failed``.
    """

    def __init__(
        self,
        engine: Engine,
        audio_out: AudioOutput,
        emit: Callable[[dict], None],
        clock: Clock,
        busy: Busy,
        spawn: Callable[..., asyncio.Task],
        on_failed: Callable[[Reply, dict[str, Any]], None] | None = None,
        session_id: str = "",
    ) -> None:
        self.engine = engine
        self.session_id = session_id  # whose share of the voice's scheduler it uses
        self.audio_out = audio_out
        self.emit = emit
        self.clock = clock
        self.busy = busy
        self.spawn = spawn
        self.on_failed = on_failed
        self.on_tool: Callable[[Reply, ToolCallDelta], None] | None = None  # a call's piece
        self.on_silent: Callable[[Reply], None] | None = None  # a reply ended with no audio

    # --- lifecycle --------------------------------------------------------------------------

    def start(
        self,
        reply: Reply,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        on_images_dropped: Callable[[str], None] | None = None,
        tools: ToolUse | None = None,
    ) -> None:
        """Start generating and speaking ``reply``. Held replies synthesize but stay silent.
        With ``tools`` the model may call them (pieces go to ``on_tool``)."""
        reply.generation = self.spawn(
            self._guard(
                reply,
                lambda: self._generate(reply, messages, settings, on_images_dropped, tools),
            )
        )
        reply.synthesis = self.spawn(self._guard(reply, lambda: self._synthesize(reply)))

    def say(self, reply: Reply, text: str) -> None:
        """Speak ``text`` as ``reply``, without the model."""
        reply.append_text(text)
        reply.generation_done = True
        reply.synthesis = self.spawn(self._guard(reply, lambda: self._synthesize(reply)))

    def announce(self, reply: Reply) -> None:
        """Emit the events that open a response (at creation, or when a held one is adopted)."""
        item = ev.assistant_item(reply.item_id, None)
        self.emit(ev.response_created(reply.id))
        self.emit(ev.output_item_added(reply.id, item))
        self.emit(ev.content_part_added(reply.id, reply.item_id))
        for seg in reply.segments:
            self.emit(ev.audio_transcript_delta(reply.id, reply.item_id, seg.text + " "))

    def adopt(self, reply: Reply) -> None:
        """A held reply is confirmed: announce it and play what it has synthesized."""
        reply.held = False
        reply.released.set()
        self.announce(reply)
        reply.flusher = self.spawn(self._guard(reply, lambda: self._flush(reply)))
        if reply.synthesis_done:
            self._maybe_silent(reply)

    def _maybe_silent(self, reply: Reply) -> None:
        """A reply with no audio at all (only tool calls) ends now: playout never will."""
        if reply.total_samples == 0 and not reply.held and not reply.ended and self.on_silent:
            self.on_silent(reply)

    def pause(self, reply: Reply) -> None:
        """Barge-in: stop synthesis now; generation waits (by backpressure) until
        :meth:`resume` or :meth:`cancel`, so the interrupting speech has the cores.

        The task is cancelled before this returns, so it cannot queue more audio."""
        self._stop(reply.synthesis)
        self._stop(reply.flusher)
        reply.synthesis = reply.flusher = None
        reply.queued = reply.played
        reply.unpaused.clear()  # generation waits too (see _stream)

    def resume(self, reply: Reply) -> None:
        """Play on from the playout position; synthesize what was not synthesized yet."""
        reply.unpaused.set()
        if reply.synthesis is not None or reply.ended:
            return
        reply.queued = reply.played
        reply.synthesis = self.spawn(self._guard(reply, lambda: self._synthesize(reply)))

    def cancel(self, reply: Reply) -> None:
        """Stop generation and synthesis now; they are awaited in the background."""
        for task in (reply.synthesis, reply.flusher, reply.generation):
            self._stop(task)
        reply.synthesis = reply.flusher = reply.generation = None

    def _stop(self, task: asyncio.Task | None) -> None:
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            self.spawn(_cancel(task))

    async def _guard(self, reply: Reply, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run one of the reply's tasks; a failure ends the reply (never leaves it hanging).
        ``work`` makes the coroutine here, so a task cancelled before it starts leaves none
        unawaited."""
        try:
            await work()
        except SeetalkError as exc:  # typed (a remote role down): its own code and message
            log.warning("reply %s failed: %s", reply.id, exc)
            self._fail(reply, exc.message, exc.to_event_error())
        except Exception as exc:  # noqa: BLE001 - reported as an error event, reply failed
            log.exception("reply %s failed", reply.id)
            self._fail(reply, f"the reply failed: {type(exc).__name__}: {exc}")

    def _fail(self, reply: Reply, message: str, error: dict[str, Any] | None = None) -> None:
        if reply.ended or reply.failed:
            return
        error = error or {
            "type": "server_error",
            "code": "reply_failed",
            "message": message,
            "param": None,
            "event_id": None,
        }
        reply.error, reply.failed = error, True
        if not reply.held:  # a held reply was never announced: it is dropped unseen
            self.emit(ev.error(error))
        if self.on_failed is not None:
            self.on_failed(reply, error)

    # --- generation -----------------------------------------------------------------------

    async def _generate(
        self,
        reply: Reply,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        on_images_dropped: Callable[[str], None] | None,
        tools: ToolUse | None = None,
    ) -> None:
        reply.times.llm_start = self.clock.now()
        try:
            try:
                await self._stream(reply, messages, settings, tools)
            except ImagesRejected as exc:
                if on_images_dropped is not None:
                    on_images_dropped(exc.message)
                text_only = [dataclasses.replace(m, images=()) for m in messages]
                await self._stream(reply, text_only, settings, tools)
        except BackendError as exc:
            log.warning("reply %s: %s", reply.id, exc.message)
            self.emit(ev.error(exc.to_event_error()))
            if not reply.text.strip():
                reply.append_text(APOLOGY)
            reply.error = exc.to_event_error()
        finally:
            reply.generation_done = True
            reply.text_changed.set()

    async def _stream(
        self,
        reply: Reply,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        tools: ToolUse | None = None,
    ) -> None:
        with self.busy():
            llm = self.engine.llm_for(self.session_id, reply.priority)  # scheduled
            async for delta in tool_stream(llm, messages, settings, tools):
                if reply.times.first_token is None:
                    reply.times.first_token = self.clock.now()
                if isinstance(delta, ToolCallDelta):
                    if self.on_tool is not None:
                        self.on_tool(reply, delta)
                    continue
                reply.append_text(delta)
                if not reply.unpaused.is_set():  # a possible barge-in: wait for its verdict
                    with self.busy.idle():
                        await reply.unpaused.wait()

    # --- synthesis ------------------------------------------------------------------------

    async def _synthesize(self, reply: Reply) -> None:
        """Cut the reply's text into clauses as it grows and synthesize each. Cancelling it
        is safe: the clause in the executor finishes there and is dropped."""
        splitter = ClauseSplitter()
        base = reply.consumed
        fed = base
        await self._flush(reply)  # on resume: the audio that was synthesized but not played
        while True:
            last = False
            if fed < len(reply.text):
                spans = splitter.push_spans(reply.text[fed:])
                fed = len(reply.text)
            elif reply.generation_done:
                spans, last = splitter.flush_spans(), True
            else:
                reply.text_changed.clear()
                await reply.text_changed.wait()
                continue
            for start, clause in spans:
                while reply.held and len(reply.segments) >= HELD_SEGMENTS:
                    await reply.released.wait()  # enough to start at once when adopted
                await self._speak_clause(reply, clause)
                reply.consumed = base + start + len(clause)
            if last:
                break
        reply.synthesis_done = True
        self.audio_out.check_finished()
        self._maybe_silent(reply)

    async def _speak_clause(self, reply: Reply, clause: str) -> None:
        loop = asyncio.get_running_loop()
        synth = self.engine.synthesizer
        if reply.times.first_clause is None:
            reply.times.first_clause = reply.times.tts_start = self.clock.now()
        # The first clause of a reply is what the person waits for; the rest can queue.
        priority = Priority.REST if reply.segments else Priority.FIRST
        lane = self.engine.tts_executor.lane(self.session_id, priority, kind="tts")
        with self.busy():
            audio, ends = await loop.run_in_executor(
                lane, _synthesize_clause, synth, clause, reply.rate, reply.speed
            )
        if reply.times.first_audio_ready is None:
            reply.times.first_audio_ready = self.clock.now()
        reply.add_segment(clause, audio, ends)
        if not reply.held:
            self.emit(ev.audio_transcript_delta(reply.id, reply.item_id, clause + " "))
            await self._flush(reply)

    async def _flush(self, reply: Reply) -> None:
        """Queue the reply's synthesized audio that is not on the output yet."""
        if reply.held or reply.ended:
            return
        async with reply.flush_lock:
            while not reply.ended and reply.queued < reply.total_samples:
                seg = next(s for s in reply.segments if s.end > reply.queued)
                piece = seg.audio[reply.queued - seg.start :]
                reply.queued = seg.end
                await self.audio_out.write(reply, piece)


def _synthesize_clause(
    synth: Synthesizer | RemoteSynthesizer, text: str, rate: int, speed: float = 1.0
) -> tuple[np.ndarray, list[float] | None]:
    """The clause as int16 at ``rate``, and where each word ends (fractions of its audio).
    ``speed`` other than 1 needs the local voice (the session refuses it otherwise)."""
    if speed != 1.0 and isinstance(synth, Synthesizer):
        audio, ends = synth.synthesize_timed(text, speed=speed)
    else:
        audio, ends = synth.synthesize_timed(text)
    fractions = [e / max(1, audio.size) for e in ends] if ends is not None else None
    return float_to_s16(resample(audio, synth.sample_rate, rate)), fractions


async def _cancel(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait for it; re-raise if the caller itself is being cancelled."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: BLE001 - a failing reply task must not take the session down
        log.exception("reply task failed while cancelled")
