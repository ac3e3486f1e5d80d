"""One :class:`Reply` per assistant turn: its text, its audio segments, how far it played,
its status and the tasks that produce it.

The reply is the one handle of an assistant turn: the speaker runs its generation and
synthesis tasks and keeps their progress on it, the playout advances its position, and the
session decides its status. Playout reports carry the reply and the position reached in
samples, never a counter, so the words the person actually heard can be computed at any
moment (:meth:`Reply.heard_text`). ``rate`` is fixed for the reply's life: a change of the
session's output rate applies to the next reply.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from conversation.events import new_id
from models.scheduler import Priority
from voice.tts import heard_text


@dataclass
class Segment:
    """A synthesized clause: its text and where its audio lies in the reply's audio."""

    text: str
    start: int  # first sample, counted from the reply's first sample
    audio: np.ndarray  # int16 mono at the output rate
    ends: list[float] | None = None  # where each spoken word ends, as fractions of the audio

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


@dataclass
class TurnTimes:
    """Clock times (seconds, the session's clock) of the stages of one turn, for metrics."""

    speech_end: float | None = None
    endpoint: float | None = None
    final_ready: float | None = None
    llm_start: float | None = None
    first_token: float | None = None
    first_clause: float | None = None
    tts_start: float | None = None
    first_audio_ready: float | None = None
    first_audio_out: float | None = None
    preemptive: bool = False
    eot_complete: bool | None = None  # the end-of-turn model's verdict that ended the turn

    def metrics(self) -> dict[str, float | None]:
        """Per-stage milliseconds; see docs/events.md (``seetalk.turn.metrics``)."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        out: dict[str, float | None] = {
            "endpoint_ms": span(self.speech_end, self.endpoint),
            "asr_final_ms": span(self.endpoint, self.final_ready),
            "llm_first_token_ms": span(self.llm_start, self.first_token),
            "first_audio_ready_ms": span(self.endpoint, self.first_audio_ready),
            "voice_to_voice_ms": span(self.speech_end, self.first_audio_out),
            "preemptive": 1.0 if self.preemptive else 0.0,
        }
        if self.eot_complete is not None:  # eot="smart_turn" (or semantic_vad) heard it
            out["eot_complete"] = 1.0 if self.eot_complete else 0.0
        if self.endpoint is not None and self.first_audio_out is not None:
            # Model compute on the critical path: the union of the stages' running times
            # after the endpoint (a preemptive reply's stages overlap recognition).
            compute = _union_after(
                self.endpoint,
                [
                    (self.endpoint, self.final_ready),
                    (self.llm_start, self.first_clause),
                    (self.tts_start, self.first_audio_ready),
                ],
            )
            out["compute_ms"] = round(compute * 1000, 1)
            out["overhead_ms"] = round((self.first_audio_out - self.endpoint - compute) * 1000, 1)
        return out


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


def _union_after(start: float, spans: list[tuple[float | None, float | None]]) -> float:
    """Length of the union of ``spans`` clipped to begin at ``start``."""
    clipped = sorted((max(a, start), b) for a, b in spans if a is not None and b is not None)
    total, reach = 0.0, start
    for a, b in clipped:
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


@dataclass
class Reply:
    """An assistant turn in progress. ``id`` is the response id, ``item_id`` its message item."""

    rate: int
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("item"))
    text: str = ""  # everything the model generated so far
    segments: list[Segment] = field(default_factory=list)
    played: int = 0  # samples played (paced) or sent (push)
    status: str = "in_progress"  # completed | cancelled | failed
    held: bool = False  # a preemptive reply, not to be played until adopted
    speed: float = 1.0  # the voice's rate (audio.output.speed), fixed for the reply's life
    # Its generation's place on the language model (models/engine.py ``llm_for``): FIRST
    # when a person waits for it (a turn's reply), REST for a repeated response.create.
    priority: Priority = Priority.FIRST
    generation_done: bool = False
    synthesis_done: bool = False
    started_audio: bool = False
    error: dict | None = None  # why the model failed, when it did
    failed: bool = False  # one of its tasks failed: it ends with response.done failed
    times: TurnTimes = field(default_factory=TurnTimes)
    text_changed: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # a held reply was adopted
    # Cleared while a possible barge-in pauses the reply: its generation waits (the model
    # stops by backpressure), so the interrupting speech's transcription has the cores.
    unpaused: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))
    # Progress of the speaker's tasks (see conversation/speaker.py):
    consumed: int = 0  # characters of ``text`` already cut into clauses
    queued: int = 0  # samples of its audio already on the output
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)  # one writer
    generation: asyncio.Task | None = field(default=None, repr=False)
    synthesis: asyncio.Task | None = field(default=None, repr=False)
    flusher: asyncio.Task | None = field(default=None, repr=False)  # adoption's flush

    @property
    def ended(self) -> bool:
        return self.status != "in_progress"

    @property
    def total_samples(self) -> int:
        return self.segments[-1].end if self.segments else 0

    @property
    def finished_playing(self) -> bool:
        return self.synthesis_done and self.played >= self.total_samples

    def append_text(self, delta: str) -> None:
        self.text += delta
        self.text_changed.set()

    def add_segment(self, text: str, audio: np.ndarray, ends: list[float] | None = None) -> Segment:
        segment = Segment(text, self.total_samples, audio, ends)
        self.segments.append(segment)
        return segment

    def spoken_text(self) -> str:
        """The text of every synthesized segment (what was or will be spoken)."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def heard_text(self, position: int | None = None) -> str:
        """The words played up to ``position`` samples (default: the playout position)."""
        pos = self.played if position is None else position
        words: list[str] = []
        for seg in self.segments:
            if pos >= seg.end:
                words.append(seg.text.strip())
            elif pos > seg.start:
                fraction = (pos - seg.start) / max(1, len(seg.audio))
                words.append(heard_text(seg.text, fraction, seg.ends))
                break
            else:
                break
        return " ".join(w for w in words if w)

    def position_ms(self, position: int | None = None) -> int:
        return int((self.played if position is None else position) * 1000 / self.rate)

    def position_at(self, ms: int) -> int:
        """The sample ``ms`` milliseconds into the reply's audio (clamped to what exists)."""
        return max(0, min(self.total_samples, ms * self.rate // 1000))
