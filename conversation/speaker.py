"""Speaking a reply: generation and synthesis tasks for each :class:`~conversation.reply.Reply`.

The model's text streams into the reply; synthesis cuts it into clauses, synthesizes each
in the voice's executor and queues the audio on the session's :class:`AudioOutput`, unless
the reply is held (a preemptive reply not yet confirmed). Barge-in stops synthesis at once
(:meth:`Speaker.pause`); a false interruption restarts it where it stopped
(:meth:`Speaker.resume`); a confirmed one also stops generation (:meth:`Speaker.cancel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from seetalk.clock import Clock
from seetalk.errors import BackendError, ImagesRejected
from conversation import events as ev
from conversation.playout import AudioOutput
from conversation.reply import Reply
from llm.backend import ChatMessage, GenerationSettings
from voice.audio import float_to_s16, resample
from voice.tts import ClauseSplitter, Synthesizer

if TYPE_CHECKING:
    from models.engine import Engine

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


class Speaker:
    def __init__(
        self,
        engine: Engine,
        audio_out: AudioOutput,
        emit: Callable[[dict], None],
        clock: Clock,
        busy: Busy,
        spawn: Callable[..., asyncio.Task],
    ) -> None:
        self.engine = engine
        self.audio_out = audio_out
        self.emit = emit
        self.clock = clock
        self.busy = busy
        self.spawn = spawn
        self._gen: dict[str, asyncio.Task] = {}
        self._synth: dict[str, asyncio.Task] = {}
        self._consumed: dict[str, int] = {}  # reply.text characters already cut into clauses
        self._queued: dict[str, int] = {}  # reply audio samples already on the AudioOutput
        self._flushing: dict[str, asyncio.Lock] = {}  # one writer per reply keeps order
        self._flushers: dict[str, asyncio.Task] = {}  # adoption's flush of a held reply

    # --- lifecycle --------------------------------------------------------------------------

    def start(
        self,
        reply: Reply,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        on_images_dropped: Callable[[str], None] | None = None,
    ) -> None:
        """Start generating and speaking ``reply``. Held replies synthesize but stay silent."""
        self._track(reply)
        self._gen[reply.id] = self.spawn(
            self._generate(reply, messages, settings, on_images_dropped)
        )
        self._synth[reply.id] = self.spawn(self._synthesize(reply))

    def say(self, reply: Reply, text: str) -> None:
        """Speak ``text`` as ``reply``, without the model."""
        self._track(reply)
        reply.append_text(text)
        reply.generation_done = True
        self._synth[reply.id] = self.spawn(self._synthesize(reply))

    def _track(self, reply: Reply) -> None:
        self._consumed[reply.id] = 0
        self._queued[reply.id] = 0
        self._flushing[reply.id] = asyncio.Lock()

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
        self._flushers[reply.id] = self.spawn(self._flush(reply))

    def pause(self, reply: Reply) -> None:
        """Barge-in: stop synthesis now (generation goes on, bounded by max tokens).

        The task is cancelled before this returns, so it cannot queue more audio."""
        self._stop(self._synth.pop(reply.id, None))
        self._stop(self._flushers.pop(reply.id, None))
        self._queued[reply.id] = reply.played

    def resume(self, reply: Reply) -> None:
        """Play on from the playout position; synthesize what was not synthesized yet."""
        if reply.id in self._synth or reply.status != "in_progress":
            return
        self._queued[reply.id] = reply.played
        self._synth[reply.id] = self.spawn(self._synthesize(reply))

    def cancel(self, reply: Reply) -> None:
        """Stop generation and synthesis now; they are awaited in the background."""
        self._stop(self._synth.pop(reply.id, None))
        self._stop(self._flushers.pop(reply.id, None))
        self._stop(self._gen.pop(reply.id, None))
        self.forget(reply)

    def _stop(self, task: asyncio.Task | None) -> None:
        if task is not None and not task.done():
            task.cancel()
            self.spawn(_cancel(task))

    def forget(self, reply: Reply) -> None:
        self._consumed.pop(reply.id, None)
        self._queued.pop(reply.id, None)
        self._flushing.pop(reply.id, None)
        self._flushers.pop(reply.id, None)
        self._gen.pop(reply.id, None)
        self._synth.pop(reply.id, None)

    # --- generation -----------------------------------------------------------------------

    async def _generate(
        self,
        reply: Reply,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        on_images_dropped: Callable[[str], None] | None,
    ) -> None:
        reply.times.llm_start = self.clock.now()
        try:
            try:
                await self._stream(reply, messages, settings)
            except ImagesRejected as exc:
                if on_images_dropped is not None:
                    on_images_dropped(exc.message)
                text_only = [ChatMessage(m.role, m.text) for m in messages]
                await self._stream(reply, text_only, settings)
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
        self, reply: Reply, messages: list[ChatMessage], settings: GenerationSettings
    ) -> None:
        with self.busy():
            async for delta in self.engine.backend.stream(messages, settings):
                if reply.times.first_token is None:
                    reply.times.first_token = self.clock.now()
                reply.append_text(delta)

    # --- synthesis ------------------------------------------------------------------------

    async def _synthesize(self, reply: Reply) -> None:
        """Cut the reply's text into clauses as it grows and synthesize each. Cancelling it
        is safe: the clause in the executor finishes there and is dropped."""
        splitter = ClauseSplitter()
        base = self._consumed.get(reply.id, 0)
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
                self._consumed[reply.id] = base + start + len(clause)
            if last:
                break
        reply.synthesis_done = True
        self.audio_out.check_finished()

    async def _speak_clause(self, reply: Reply, clause: str) -> None:
        loop = asyncio.get_running_loop()
        synth = self.engine.synthesizer
        if reply.times.first_clause is None:
            reply.times.first_clause = reply.times.tts_start = self.clock.now()
        with self.busy():
            audio, ends = await loop.run_in_executor(
                self.engine.tts_executor, _synthesize_clause, synth, clause, self.audio_out.rate
            )
        if reply.times.first_audio_ready is None:
            reply.times.first_audio_ready = self.clock.now()
        reply.add_segment(clause, audio, ends)
        if not reply.held:
            self.emit(ev.audio_transcript_delta(reply.id, reply.item_id, clause + " "))
            await self._flush(reply)

    async def _flush(self, reply: Reply) -> None:
        """Queue the reply's synthesized audio that is not on the output yet."""
        lock = self._flushing.get(reply.id)
        if reply.held or lock is None:
            return
        async with lock:
            await self._flush_locked(reply)

    async def _flush_locked(self, reply: Reply) -> None:
        while (queued := self._queued.get(reply.id)) is not None and queued < reply.total_samples:
            seg = next(s for s in reply.segments if s.end > queued)
            piece = seg.audio[queued - seg.start :]
            self._queued[reply.id] = seg.end
            await self.audio_out.write(reply, piece)


def _synthesize_clause(
    synth: Synthesizer, text: str, rate: int
) -> tuple[np.ndarray, list[float] | None]:
    """The clause as int16 at ``rate``, and where each word ends (fractions of its audio)."""
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
