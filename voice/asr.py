"""Speech recognition: a synchronous whisper :class:`Transcriber` (faster-whisper, CPU) and an
asyncio :class:`StreamingRecognizer` that gives partial transcripts while a person speaks and
a final one when their turn ends.

Cost on a CPU: whisper was trained on 30 s windows, and faster-whisper always encodes one, so
a 2 s question costs what 30 s of speech does (whisper base, 2 cores: ~0.7 s, 94% of it in the
encoder). :class:`Transcriber` instead encodes a window fitted to the audio (the audio plus
1 s, at least ``FIT_MIN_S``): about 0.25 s for the same question, with the same word error
rate on our test speech. Whisper loops on windows much shorter than it was trained on
("What is 2 plus 3? What is 2 plus 3? What is 2"), so a fitted decode that looks looped (ran
out of its token budget, repeats its tail, or compresses like a loop: :func:`looks_looped`)
or that found no confident words is done again on the full 30 s window; silence and noise
therefore cost what they did before (a recognizer only hears what the VAD calls speech).
Two more bounds keep the cost flat:

- a *partial* transcribes only the last ``PARTIAL_WINDOW_S`` (25 s) of the utterance, so its
  cost, and therefore partial lag, does not grow on a long utterance;
- a *final* of audio longer than ``WINDOW_S`` (28 s) is cut into windows of at most 28 s at
  the quietest 100 ms in the last 4 s of each window, transcribed window by window and joined
  (cost grows linearly with length, one window per 28 s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from seetalk.errors import BadAudio, ModelNotFound, Skipped

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MIN_AUDIO_S = 0.1  # shorter audio transcribes to ""
WINDOW_S = 28.0
PARTIAL_WINDOW_S = 25.0


def split_windows(
    audio: np.ndarray, window_s: float = WINDOW_S, search_s: float = 4.0
) -> list[np.ndarray]:
    """Cut ``audio`` into pieces of at most ``window_s``, each ending at the quietest 100 ms
    within its last ``search_s`` seconds (so a cut rarely falls inside a word)."""
    win, search, hop = int(window_s * SAMPLE_RATE), int(search_s * SAMPLE_RATE), SAMPLE_RATE // 10
    out: list[np.ndarray] = []
    start = 0
    while audio.size - start > win:
        lo = start + win - search
        seg = audio[lo : start + win]
        energy = np.square(seg[: seg.size // hop * hop]).reshape(-1, hop).sum(axis=1)
        cut = lo + int(np.argmin(energy)) * hop + hop // 2
        out.append(audio[start:cut])
        start = cut
    out.append(audio[start:])
    return out


MIN_LOGPROB = -1.0  # segments less confident than this are dropped as noise
FIT_MIN_S = 10.0  # shortest fitted encoder window: shorter ones loop often (5 s: 1 clip in 6)
FIT_MARGIN_S = 1.0  # silence after the audio inside the window
FRAMES_PER_S = 100  # whisper's mel frames
LOOP_COMPRESSION = 2.4  # whisper's own threshold for a repetitive decode
FULL_TEMPERATURES = (0.0, 0.4)  # the full window's fallback (faster-whisper's default: 6)


def fitted_frames(
    audio_s: float, *, min_s: float = FIT_MIN_S, margin_s: float = FIT_MARGIN_S
) -> int:
    """Mel frames of the encoder window for ``audio_s`` seconds of audio: the audio plus
    ``margin_s``, in whole seconds, at least ``min_s``, at most whisper's 30 s."""
    seconds = min(30, max(min_s, math.ceil(audio_s + margin_s)))
    return int(seconds * FRAMES_PER_S)


def token_budget(audio_s: float) -> int:
    """New tokens a decode of ``audio_s`` seconds may take: fast speech is about 5 a second,
    so a decode that needs more is looping."""
    return min(400, 24 + int(10 * audio_s))


def looks_looped(text: str, *, tokens: int, budget: int) -> bool:
    """Whether a fitted-window decode went round in a loop: it used its whole token budget,
    its last three or more words repeat the ones before them, a word or a phrase of up to six
    comes four or three times in a row ("Zephyr and Zephyr and Zephyr and Zep"; "no, no, no"
    is three), or it compresses like a loop."""
    if tokens >= budget:
        return True
    words = re.sub(r"[^\w' ]", " ", text.lower()).split()
    for n in range(3, len(words) // 2 + 1):
        if words[-n:] == words[-2 * n : -n]:
            return True
    for n in range(1, 7):
        times = 4 if n == 1 else 3
        for i in range(len(words) - n * times + 1):
            if all(words[i + k * n : i + (k + 1) * n] == words[i : i + n] for k in range(times)):
                return True
    raw = text.encode("utf-8")
    return bool(raw) and len(raw) / len(zlib.compress(raw)) > LOOP_COMPRESSION


class Transcriber:
    """Whisper on the CPU. The model loads lazily on first use and is cached; thread-safe
    (CTranslate2 serialises calls on one model). Every method is synchronous: run it in an
    executor from async code.

    ``fit_window`` (default): encode a window fitted to the audio, falling back to the full
    30 s window when the decode looks looped or finds no confident words (module docstring);
    ``False``: always the full window, as faster-whisper does."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int = 2,
        compute_type: str = "int8",
        language: str = "en",
        fit_window: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.compute_type = compute_type
        self.language = language
        self.fit_window = fit_window
        # decodes by window, and why a fitted one was done again on the full window
        self.stats = {"fitted": 0, "full": 0, "looped": 0, "unsure": 0}
        self._model: Any = None
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def load(self) -> Any:
        """Load the model now (otherwise the first transcription does)."""
        with self._lock:
            if self._model is None:
                if not (self.model_dir / "model.bin").is_file():
                    raise ModelNotFound(
                        f"speech recognition model not found: no model.bin in {self.model_dir}"
                    )
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    str(self.model_dir),
                    device="cpu",
                    compute_type=self.compute_type,
                    cpu_threads=self.threads,
                    local_files_only=True,
                )
            return self._model

    @property
    def english_only(self) -> bool:
        return not self.load().model.is_multilingual

    def _run(self, audio: np.ndarray, prompt: str | None, language: str | None = None) -> str:
        model = self.load()
        language = "en" if not model.model.is_multilingual else language or self.language
        if self.fit_window and audio.size <= (30 - FIT_MARGIN_S) * SAMPLE_RATE:
            text = self._run_fitted(model, audio, prompt, language)
            if text:
                self.stats["fitted"] += 1
                return text
            # looped (None) or no confident words (""): the full window decides, as it would
            # have without fitting (it found words in speech the fitted window gave up on)
            self.stats["looped" if text is None else "unsure"] += 1
        self.stats["full"] += 1
        segments, _info = model.transcribe(
            audio,
            language=language,
            beam_size=1,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
            initial_prompt=prompt or None,
            # A decode that loops runs to 448 tokens, and faster-whisper's default fallback
            # tries five more temperatures: a looping 3 s final took 10-11 s on a loaded
            # machine. The token budget and two temperatures bound it.
            max_new_tokens=token_budget(audio.size / SAMPLE_RATE),
            temperature=FULL_TEMPERATURES,
        )
        # Whisper turns murmurs, breath and noise into words with low confidence ("Hmm" came
        # back as "them" at -1.2); its own decoder treats below -1.0 as a failed decode.
        return " ".join(
            s.text.strip() for s in segments if s.text.strip() and s.avg_logprob >= MIN_LOGPROB
        )

    def _tokenizer(self, model: Any, language: str) -> Any:
        with self._lock:
            if language not in self._tokenizers:
                from faster_whisper.tokenizer import Tokenizer

                self._tokenizers[language] = Tokenizer(
                    model.hf_tokenizer, model.model.is_multilingual, "transcribe", language
                )
            return self._tokenizers[language]

    def _run_fitted(
        self, model: Any, audio: np.ndarray, prompt: str | None, language: str
    ) -> str | None:
        """One greedy decode on an encoder window fitted to ``audio``: its text, ``""`` when
        no confident words, ``None`` when it looks looped."""
        from faster_whisper.transcribe import get_suppressed_tokens

        tok = self._tokenizer(model, language)
        features = model.feature_extractor(audio)
        frames = fitted_frames(audio.size / SAMPLE_RATE)
        window = np.zeros((features.shape[0], frames), dtype=np.float32)
        used = min(frames, features.shape[1])
        window[:, :used] = features[:, :used]
        prefix: list[int] = []
        if prompt and prompt.strip():  # as faster-whisper's initial_prompt
            prefix = [tok.sot_prev, *tok.encode(" " + prompt.strip())[-223:]]
        tokens = [*prefix, *tok.sot_sequence, tok.no_timestamps]
        budget = token_budget(audio.size / SAMPLE_RATE)
        result = model.model.generate(
            model.encode(window),
            [tokens],
            beam_size=1,
            max_length=len(tokens) - 1 + budget,  # the first token is the decoder's start
            return_scores=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok, (-1,)) or ()),
        )[0]
        ids = [t for t in result.sequences_ids[0] if t < tok.eot]
        text = str(tok.decode(ids)).strip()
        if looks_looped(text, tokens=len(result.sequences_ids[0]), budget=budget):
            log.debug("fitted decode looks looped (%d tokens): %r", len(ids), text[:80])
            return None
        # faster-whisper's length-normalised score (length_penalty 1): below MIN_LOGPROB it
        # is murmur or noise, as the full path drops it
        avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1) if ids else -math.inf
        if avg_logprob < MIN_LOGPROB or not re.search(r"\w", text):
            return ""  # (tiny.en gave "." for noise)
        return text

    @staticmethod
    def _check(audio16k: np.ndarray) -> np.ndarray:
        a = np.asarray(audio16k)
        if a.ndim != 1:
            raise BadAudio(f"expected mono 16 kHz audio, got shape {a.shape}")
        return a.astype(np.float32, copy=False)

    def transcribe(
        self, audio16k: np.ndarray, *, prompt: str | None = None, language: str | None = None
    ) -> str:
        """The whole utterance; windows of at most 28 s joined (see module docstring).
        ``language`` overrides the one given at construction (``seetalk models serve``)."""
        a = self._check(audio16k)
        if a.size < MIN_AUDIO_S * SAMPLE_RATE:
            return ""
        texts = [self._run(w, prompt, language) for w in split_windows(a)]
        return " ".join(t for t in texts if t)

    def transcribe_partial(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        """The last ``PARTIAL_WINDOW_S`` seconds only: bounded cost for partial transcripts."""
        a = self._check(audio16k)
        if a.size < MIN_AUDIO_S * SAMPLE_RATE:
            return ""
        return self._run(a[-int(PARTIAL_WINDOW_S * SAMPLE_RATE) :], prompt)


class SupportsTranscribe(Protocol):
    def transcribe(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str: ...

    def transcribe_partial(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str: ...


# --- when to run a partial: pure -----------------------------------------------------------

PARTIAL_DUTY = 0.5  # a session's partials take at most this share of the time (see below)


@dataclass(frozen=True)
class PartialDecision:
    run: bool
    wait_s: float  # how long the timer may sleep before asking again
    reason: str


def decide_partial(
    *,
    now: float,
    last_start: float | None,
    interval_s: float,
    busy: bool,
    listening: bool,
    audio_s: float,
    min_audio_s: float,
    new_audio: bool,
    last_took_s: float | None = None,
    max_duty: float = PARTIAL_DUTY,
) -> PartialDecision:
    """Whether a partial transcription should start at time ``now`` (seconds, any origin).

    ``listening``: an utterance is active and not paused. ``busy``: an inference is in
    flight (a partial is then skipped, never queued: the next one takes the newest audio).
    ``new_audio``: audio arrived since the last partial started. ``last_took_s``: how long
    the last partial took from its start to its text (queue wait included); partials then
    come at most ``max_duty`` of the time, so when the machine is loaded (a pass takes
    longer) each session's partials thin out and leave the cores to finals and replies.
    """
    if last_took_s is not None and max_duty > 0:
        interval_s = max(interval_s, last_took_s / max_duty)
    if not listening:
        return PartialDecision(False, interval_s, "not listening")
    if audio_s < min_audio_s:
        return PartialDecision(False, min(interval_s, min_audio_s - audio_s), "too little audio")
    if last_start is not None and now - last_start < interval_s:
        return PartialDecision(False, interval_s - (now - last_start), "not due")
    if busy:
        return PartialDecision(False, interval_s, "busy")
    if not new_audio:
        return PartialDecision(False, interval_s, "no new audio")
    return PartialDecision(True, interval_s, "due")


# --- the streaming recognizer: glue --------------------------------------------------------


@dataclass
class _Job:
    kind: Literal["partial", "final"]
    utterance: int
    samples: int  # audio covered
    audio_t: float  # loop time at which the last covered sample arrived
    future: asyncio.Future[str]
    discarded: bool = False
    call: concurrent.futures.Future[str] | None = None  # the executor's side


@dataclass
class RecognizerStats:
    last_partial_lag_s: float | None = None
    inferences: int = 0
    partials: int = 0
    speculative_hit: bool | None = None  # of the last finalize()


class StreamingRecognizer:
    """Partial and final transcripts of one speaker, one utterance at a time.

    At most one model call is in flight per model (a partial due while one runs is skipped).
    The executors may be scheduler lanes (``models/scheduler.py``): partials as skippable
    background work, finals as must-run work that goes first.
    With a separate ``partial_transcriber`` (a smaller, faster model in its own executor),
    partials and the final pass each have their own lane, so the final starts at the first
    silence instead of waiting for a partial to end; otherwise they share one lane. Partials
    run on a timer task owned by the recognizer while an utterance is active and not paused,
    each on the audio as it is when it starts. :meth:`pause` (first silence) starts the final
    pass speculatively; :meth:`resume` discards it; :meth:`finalize` reuses it when no audio
    arrived since. Model calls run in ``executor``, never on the event loop. Methods other
    than :meth:`finalize` and :meth:`aclose` are synchronous and must be called from the loop.
    """

    def __init__(
        self,
        transcriber: SupportsTranscribe,
        executor: concurrent.futures.Executor,
        *,
        partial_interval_s: float = 0.4,
        min_partial_audio_s: float = 0.5,
        on_partial: Callable[[str], None] | None = None,
        prompt: str | None = None,
        partial_transcriber: SupportsTranscribe | None = None,
        partial_executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.transcriber = transcriber
        self.executor = executor
        self.partial_transcriber = partial_transcriber or transcriber
        self.partial_executor = partial_executor or executor
        self._shared = partial_transcriber is None or partial_executor is None
        self.partial_interval_s = partial_interval_s
        self.min_partial_audio_s = min_partial_audio_s
        self.on_partial = on_partial
        self.prompt = prompt
        self.stats = RecognizerStats()
        self._chunks: list[np.ndarray] = []
        self._silence: list[np.ndarray] = []  # appended while paused
        self._samples = 0
        self._utterance = 0
        self._active = False
        self._paused = False
        self._last_append_t = 0.0
        self._last_partial_start: float | None = None
        self._last_partial_took: float | None = None  # start to text, for the duty cycle
        self._partial_samples = 0  # audio covered by the last partial started
        self._jobs: dict[str, _Job | None] = {"partial": None, "final": None}  # in flight
        self._spec: _Job | None = None  # the speculative final of this pause
        self._want_spec = False
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False

    # -- state ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return any(job is not None for job in self._jobs.values())

    def _free(self, kind: str) -> bool:
        """Whether a ``kind`` inference may start now (one per lane; one in all if shared)."""
        return not self.busy if self._shared else self._jobs[kind] is None

    def _blocking(self, kind: str) -> list[asyncio.Future[str]]:
        lanes = ("partial", "final") if self._shared else (kind,)
        return [job.future for k in lanes if (job := self._jobs[k]) is not None]

    @property
    def audio_s(self) -> float:
        return self._samples / SAMPLE_RATE

    def _audio(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, dtype=np.float32)

    def begin(self) -> None:
        """Start a new utterance: clears the audio; results of earlier ones are ignored."""
        if self._closed:
            raise RuntimeError("recognizer is closed")
        self._utterance += 1
        self._chunks, self._samples, self._silence = [], 0, []
        self._active, self._paused = True, False
        self._last_partial_start, self._partial_samples = None, 0
        self._last_partial_took = None
        self._spec, self._want_spec = None, False
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._partials())
        self._wake.set()

    def append(self, audio16k: np.ndarray) -> None:
        """Add speech (mono float32 at 16 kHz). Non-blocking.

        While paused the audio is silence after the speech: it is set aside, so the
        speculative final still covers the whole utterance, and joins it only if speech
        resumes."""
        a = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        if not self._active or a.size == 0:
            return
        if self._paused:
            self._silence.append(a.copy())
            return
        self._chunks.append(a.copy())
        self._samples += a.size
        self._last_append_t = asyncio.get_running_loop().time()

    def pause(self) -> None:
        """First silence: start the final pass speculatively on the audio so far. A partial
        still queued is dropped (a running one finishes): the final pass covers the same
        words and needs the cores."""
        if not self._active:
            return
        self._paused = True
        partial = self._jobs["partial"]
        if partial is not None and partial.call is not None:
            partial.call.cancel()  # only if it has not started (a running one finishes)
        if self._spec is not None and self._spec.samples == self._samples:
            return
        if self._free("final"):
            self._spec = self._start("final")
        else:
            self._want_spec = True  # started when the running inference ends

    def resume(self) -> None:
        """Speech came back: discard the speculative final; partials continue."""
        if not self._active:
            return
        self._paused, self._want_spec = False, False
        if self._spec is not None:
            self._spec.discarded = True
            self._spec = None
        silence, self._silence = self._silence, []
        for a in silence:
            self.append(a)
        self._wake.set()

    def keep_held(self) -> None:
        """What arrived since the pause was not silence after all (a quiet word that did not
        bring speech back): it joins the utterance, and the speculative final no longer
        covers it. The recognizer stays paused."""
        if not self._active or not self._silence:
            return
        silence, self._silence = self._silence, []
        self._chunks.extend(silence)
        self._samples += sum(a.size for a in silence)
        if self._spec is not None:
            self._spec.discarded = True
            self._spec = None
        self._want_spec = False

    def speech_audio(self) -> np.ndarray:
        """The open utterance's speech so far (without the silence held aside while
        paused): what an end-of-turn model hears."""
        return self._audio().copy()

    async def finalize(self) -> str:
        """The final transcript of the whole utterance; ends it (partials stop).

        Reuses the speculative final when no audio arrived since it started. Cancelling this
        is safe: the model call it waits on finishes in the background and is ignored.
        """
        if not self._active:
            return ""
        self._active, self._want_spec = False, False
        spec, self._spec = self._spec, None
        if spec is not None and not spec.discarded and spec.samples == self._samples:
            self.stats.speculative_hit = True
            return await asyncio.shield(spec.future)
        self.stats.speculative_hit = False
        while blocking := self._blocking("final"):
            await asyncio.wait(blocking)
        if self._samples < MIN_AUDIO_S * SAMPLE_RATE:
            return ""
        job = self._start("final")
        return await asyncio.shield(job.future)

    async def aclose(self) -> None:
        """Stop the timer task and wait for the inference in flight to end (at most one).

        Cancelling ``aclose`` itself propagates; the recognizer is closed either way.
        """
        self._closed, self._active = True, False
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            try:
                await timer
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        if self.busy:
            await asyncio.wait([job.future for job in self._jobs.values() if job is not None])

    async def speculative_result(self) -> str | None:
        """The result of the speculative final started by the last :meth:`pause`, or ``None``
        when it was discarded (speech resumed) or the utterance ended. Cancelling it is safe."""
        while self._active and self._paused and self._spec is None and self._want_spec:
            self._wake.clear()
            await self._wake.wait()
        spec = self._spec
        if spec is None:
            return None
        try:
            text = await asyncio.shield(spec.future)
        except Exception:  # noqa: BLE001 - the final pass reports its own failure
            return None
        return None if spec.discarded or spec is not self._spec else text

    def discard(self) -> None:
        """Drop the utterance in progress (it held no words); partials stop."""
        self._active, self._paused, self._want_spec = False, False, False
        if self._spec is not None:
            self._spec.discarded = True
            self._spec = None
        self._chunks, self._samples, self._silence = [], 0, []

    # -- inference -----------------------------------------------------------------------

    def _start(self, kind: Literal["partial", "final"]) -> _Job:
        assert self._free(kind), "one inference at a time per lane"
        loop = asyncio.get_running_loop()
        audio = self._audio()
        if kind == "final":
            fn, executor = self.transcriber.transcribe, self.executor
        else:
            fn, executor = self.partial_transcriber.transcribe_partial, self.partial_executor
        call = executor.submit(_call, fn, audio, self.prompt)
        future = asyncio.wrap_future(call, loop=loop)
        job = _Job(kind, self._utterance, audio.size, self._last_append_t, future, call=call)
        self._jobs[kind] = job
        self.stats.inferences += 1
        future.add_done_callback(lambda f: self._done(job))
        return job

    def _done(self, job: _Job) -> None:
        self._jobs[job.kind] = None
        fut = job.future
        if job.kind == "partial" and not fut.cancelled():
            exc = fut.exception()
            if isinstance(exc, Skipped):
                log.debug("partial skipped: %s", exc)  # its role was behind
            elif exc is not None:
                log.warning("partial transcription failed: %s", exc)
            elif job.utterance == self._utterance and self._active:
                if self._last_partial_start is not None:
                    now = asyncio.get_running_loop().time()
                    self._last_partial_took = now - self._last_partial_start
                self.stats.partials += 1
                self.stats.last_partial_lag_s = asyncio.get_running_loop().time() - job.audio_t
                if self.on_partial is not None:
                    try:
                        self.on_partial(fut.result())
                    except Exception:
                        log.exception("on_partial callback failed")
        elif not fut.cancelled() and fut.exception() is not None:  # marks it retrieved
            log.debug("final transcription failed: %s", fut.exception())
        if self._want_spec and self._active and self._paused and self._free("final"):
            self._want_spec = False
            self._spec = self._start("final")
        self._wake.set()

    async def _partials(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            d = decide_partial(
                now=loop.time(),
                last_start=self._last_partial_start,
                interval_s=self.partial_interval_s,
                busy=not self._free("partial"),
                listening=self._active and not self._paused,
                audio_s=self.audio_s,
                min_audio_s=self.min_partial_audio_s,
                new_audio=self._samples > self._partial_samples,
                last_took_s=self._last_partial_took,
            )
            if d.run:
                self._last_partial_start = loop.time()
                self._partial_samples = self._samples
                self._start("partial")
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(max(d.wait_s, 0.005)):
                    await self._wake.wait()
            except TimeoutError:
                pass


def _call(fn: Callable[..., str], audio: np.ndarray, prompt: str | None) -> str:
    return fn(audio, prompt=prompt)
