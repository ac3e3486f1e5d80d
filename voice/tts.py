"""Text to speech: piper :class:`Synthesizer`, the pure :class:`ClauseSplitter` that cuts a
streaming reply into speakable clauses, :func:`stream_speech` that turns a stream of text
deltas into audio chunks as the text arrives, and :func:`heard_text` that says which words of
a chunk were heard when its playout stopped part-way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from seetalk.errors import ModelNotFound
from voice.audio import resample


class Synthesizer:
    """A piper voice on the CPU. Loads lazily (``load()`` to load now); ``synthesize`` is
    synchronous and thread-safe: run it in an executor from async code."""

    def __init__(
        self,
        onnx_path: str | Path,
        config_path: str | Path | None = None,
        *,
        threads: int = 2,
        variation: bool = True,
    ) -> None:
        """``variation=False`` turns off piper's random variation of timing and timbre, so the
        same text always gives the same audio (for tests that must not depend on chance)."""
        self.onnx_path = Path(onnx_path)
        self.config_path = (
            Path(config_path)
            if config_path
            else self.onnx_path.with_name(self.onnx_path.name + ".json")
        )
        for p in (self.onnx_path, self.config_path):
            if not p.is_file():
                raise ModelNotFound(f"voice not found: {p} does not exist")
        with open(self.config_path, encoding="utf-8") as f:
            self._config: dict[str, Any] = json.load(f)
        self.threads = threads
        self.variation = variation
        self._voice: Any = None
        self._lock = threading.Lock()

    @property
    def sample_rate(self) -> int:
        return int(self._config["audio"]["sample_rate"])

    def load(self) -> Any:
        with self._lock:
            if self._voice is None:
                import onnxruntime as ort
                from piper import PiperVoice
                from piper.config import PiperConfig

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                session = ort.InferenceSession(
                    str(self.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
                )
                self._voice = PiperVoice(
                    config=PiperConfig.from_dict(self._config), session=session
                )
            return self._voice

    def synthesize(self, text: str) -> np.ndarray:
        """Mono float32 at :attr:`sample_rate`, all sentences of ``text`` joined."""
        return self.synthesize_timed(text)[0]

    def synthesize_timed(
        self, text: str, *, speed: float = 1.0
    ) -> tuple[np.ndarray, list[int] | None]:
        """Like :meth:`synthesize`, with the sample at which each spoken word ends, from
        piper's phoneme alignments; ``None`` when the voice model does not report them
        (see :func:`models.registry.aligned_voice`). ``speed`` (0.25-1.5, the protocol's
        ``audio.output.speed``) divides the voice's length scale: 0.5 is half as fast."""
        parts: list[np.ndarray] = []
        ends: list[int] | None = []
        offset = 0
        syn_config = None
        if not self.variation or speed != 1.0:
            from piper.config import SynthesisConfig

            base = float(self._config.get("inference", {}).get("length_scale", 1.0))
            syn_config = SynthesisConfig(length_scale=base / speed)
            if not self.variation:
                syn_config.noise_scale, syn_config.noise_w_scale = 0.0, 0.0
        for chunk in self.load().synthesize(text, syn_config, include_alignments=True):
            audio = chunk.audio_float_array
            alignments = chunk.phoneme_alignments
            if ends is not None and alignments:
                ends.extend(
                    offset + e
                    for e in word_ends([(a.phoneme, int(a.num_samples)) for a in alignments])
                )
            else:
                ends = None
            parts.append(audio)
            offset += audio.size
        if not parts:
            return np.zeros(0, dtype=np.float32), None
        return np.concatenate(parts).astype(np.float32, copy=False), ends


class SupportsSynthesize(Protocol):
    """What a session needs of a voice: :class:`Synthesizer` (piper, in-process) or
    :class:`voice.remote.RemoteSynthesizer` (an OpenAI-compatible speech server)."""

    @property
    def sample_rate(self) -> int: ...

    def synthesize(self, text: str) -> np.ndarray: ...

    def synthesize_timed(self, text: str) -> tuple[np.ndarray, list[int] | None]: ...


# --- clauses: pure --------------------------------------------------------------------------

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e approx no dept est fig inc ltd mt".split()
)
_CLOSERS = "\"')]}’”»"
_SPEAKABLE = re.compile(r"\w")


class ClauseSplitter:
    """Cuts streamed text into clauses a voice can say on their own (pure, no I/O).

    A clause ends at ``. ! ?`` followed by a space (not inside ``3.5``, after an
    abbreviation such as ``e.g.`` or an initial, or before a lowercase word), at a newline,
    and at ``, ; :`` once the clause has ``min_chars`` characters. A clause longer than
    ``max_chars`` without any of those is cut at its last space. ``push`` returns what is
    complete; ``flush`` the rest. Offsets count characters of all text pushed so far.
    """

    def __init__(self, min_chars: int = 12, max_chars: int = 120) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._offset = 0  # offset of _buf[0] in all text pushed

    def push(self, delta: str) -> list[str]:
        return [text for _, text in self.push_spans(delta)]

    def flush(self) -> list[str]:
        return [text for _, text in self.flush_spans()]

    def push_spans(self, delta: str) -> list[tuple[int, str]]:
        """Like :meth:`push`, each clause with its start offset in the whole text."""
        self._buf += delta
        return self._cut(final=False)

    def flush_spans(self) -> list[tuple[int, str]]:
        out = self._cut(final=True)
        if self._buf.strip():
            out.extend(self._emit(len(self._buf)))
        self._offset += len(self._buf)
        self._buf = ""
        return out

    def _emit(self, end: int) -> list[tuple[int, str]]:
        raw = self._buf[:end]
        start = self._offset + len(raw) - len(raw.lstrip())
        self._buf = self._buf[end:]
        self._offset += end
        text = raw.strip()
        return [(start, text)] if _SPEAKABLE.search(text) else []

    def _cut(self, *, final: bool) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        while True:
            end = self._boundary(final)
            if end is None:
                if len(self._buf) <= self.max_chars:
                    return out
                space = self._buf.rfind(" ", 0, self.max_chars)
                end = space if space > 0 else self.max_chars
            out.extend(self._emit(end))

    def _boundary(self, final: bool) -> int | None:
        """End (exclusive) of the first complete clause in the buffer, if any."""
        buf = self._buf
        n = len(buf)
        for i, ch in enumerate(buf):
            if ch == "\n":
                if buf[:i].strip():
                    return i + 1
                continue
            if ch not in ".!?;:,":
                continue
            j = i + 1
            while j < n and buf[j] in _CLOSERS:
                j += 1
            if j == n:
                if final:
                    return j
                return None  # cannot tell yet
            if not buf[j].isspace():
                continue  # 3.5, e.g., 1,000, 3:45, ...
            if ch in ",;:":
                if len(buf[:i].strip()) >= self.min_chars:
                    return j
                continue
            if ch == ".":
                word = buf[:i].rsplit(None, 1)[-1].lower() if buf[:i].strip() else ""
                if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                    continue
                rest = buf[j:].lstrip()
                if not rest:
                    if final:
                        return j
                    return None  # wait for the next word: a lowercase one continues
                if rest[0].islower():
                    continue
            return j
        return None


# --- heard text: pure ----------------------------------------------------------------------

_WORD = re.compile(r"\S+")
_LEAD_UNITS = 1.0  # silence before the first word, in characters
_PAUSE_UNITS = {",": 3.0, ";": 3.0, ":": 3.0, ".": 3.0, "!": 3.0, "?": 3.0}


def word_boundaries(text: str) -> list[tuple[str, float]]:
    """Each word of ``text`` with the estimated fraction of the chunk's audio at which it
    ends: proportional to characters, plus a pause after punctuation and a short lead-in."""
    words = _WORD.findall(text)
    ends: list[float] = []
    t = _LEAD_UNITS
    for w in words:
        t += sum(1 for c in w if c.isalnum()) or 1
        ends.append(t)
        t += 1.0 + _PAUSE_UNITS.get(w.rstrip(_CLOSERS)[-1:], 0.0)
    total = t if words else 1.0
    return [(w, e / total) for w, e in zip(words, ends, strict=True)]


_BOUNDARIES = frozenset(" ^$,.;:!?\u2014\u2026")  # between words in piper's phoneme stream


def word_ends(alignments: list[tuple[str, int]]) -> list[int]:
    """The sample at which each word ends, from piper's (phoneme, samples) alignments: words
    are the runs of phonemes between spaces, punctuation and the start/end marks (pure)."""
    ends: list[int] = []
    pos, in_word = 0, False
    for phoneme, samples in alignments:
        if phoneme in _BOUNDARIES:
            if in_word:
                ends.append(pos)
            in_word = False
        else:
            in_word = True
        pos += samples
    if in_word:
        ends.append(pos)
    return ends


def heard_text(chunk_text: str, fraction: float, ends: list[float] | None = None) -> str:
    """The words of a chunk heard when ``fraction`` (0-1) of its audio was played.

    With ``ends`` (the fraction of the audio at which each spoken word ends, from the
    voice's phoneme timing) a word counts once its end has played; when they do not match
    the text's words (a number read as several words, say) the estimate is by characters."""
    if ends is not None:
        tokens = _WORD.findall(chunk_text)
        spoken = [i for i, w in enumerate(tokens) if any(c.isalnum() for c in w)]
        if len(spoken) == len(ends):
            done = [i for i, end in zip(spoken, ends, strict=True) if end <= fraction + 1e-9]
            return " ".join(tokens[: done[-1] + 1]) if done else ""
    return " ".join(w for w, end in word_boundaries(chunk_text) if end <= fraction + 1e-9)


# --- streaming synthesis: glue -------------------------------------------------------------


@dataclass
class SpeechChunk:
    """One clause of a reply: its text, its audio (mono float32 at ``sample_rate``), and
    where its text starts in the whole reply."""

    text: str
    audio: np.ndarray
    start_char: int
    sample_rate: int = 48_000

    @property
    def duration(self) -> float:
        return self.audio.size / self.sample_rate

    def heard(self, samples_played: int) -> str:
        """The words heard after ``samples_played`` samples of this chunk."""
        return heard_text(self.text, samples_played / max(self.audio.size, 1))


def synthesize_at(synth: SupportsSynthesize, text: str, out_rate: int) -> np.ndarray:
    """``text`` spoken by ``synth``, as float32 mono at ``out_rate`` (synchronous)."""
    return resample(synth.synthesize(text), synth.sample_rate, out_rate)


async def stream_speech(
    deltas: AsyncIterator[str],
    synth: SupportsSynthesize,
    executor: concurrent.futures.Executor,
    out_rate: int,
) -> AsyncIterator[SpeechChunk]:
    """Speech for a reply whose text arrives as ``deltas``, one :class:`SpeechChunk` per clause,
    in order, as soon as each clause is complete. Synthesis runs in ``executor``.

    Cancelling the consumer (or closing this generator) is safe between and during chunks:
    the clause being synthesized is abandoned (its executor call finishes and is dropped),
    ``deltas`` is closed if it can be, and the cancellation propagates.
    """
    loop = asyncio.get_running_loop()
    splitter = ClauseSplitter()
    try:
        async for delta in deltas:
            for start, text in splitter.push_spans(delta):
                audio = await loop.run_in_executor(executor, synthesize_at, synth, text, out_rate)
                yield SpeechChunk(text, audio, start, out_rate)
        for start, text in splitter.flush_spans():
            audio = await loop.run_in_executor(executor, synthesize_at, synth, text, out_rate)
            yield SpeechChunk(text, audio, start, out_rate)
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
