"""The engine: the models every session shares, loaded once, each with its own scheduler.

Model inference never runs on the event loop: each model role has a
:class:`~models.scheduler.RoleScheduler` (one worker thread), so one model's work queues
behind itself, never behind another's, ordered by what a person waits for and shared fairly
between sessions. A role whose model runs
on another machine (``asr_base_url``, ``tts_base_url``, ``llm_base_url``) is an HTTP client
with the same interface, called in the same executor (see :mod:`voice.remote`).

The language model is scheduled too (:meth:`Engine.llm_for`): a session's generation takes
the ``llm`` role for its whole length, at the priority of who waits for it (a turn's reply
at ``FIRST``, other responses at ``REST``), fairly between sessions. The granularity is one
whole generation: llama-cpp-python holds one context per model and has no parallel slots
in-process, so two generations cannot interleave token by token without one evicting the
other's cache (its prompt would be evaluated again), and preemption happens between
generations only. A remote model (``llm_base_url``) is not scheduled here: its server
batches concurrent requests itself (docs/deploy.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm.backend import ChatBackend, ChatMessage, GenerationSettings
from llm.factory import make_backend
from llm.openai_compat import OpenAIChatBackend
from llm.tools import ToolCallDelta, ToolUse, tool_stream
from models.scheduler import Priority, RoleScheduler
from seetalk.config import ModelConfig
from seetalk.errors import ModelNotFound
from vision.scene import SceneDescriber
from voice.asr import Transcriber
from voice.remote import RemoteSynthesizer, RemoteTranscriber
from voice.smart_turn import SmartTurn
from voice.tts import Synthesizer
from voice.vad_model import shared_session

log = logging.getLogger(__name__)


@dataclass
class Engine:
    cfg: ModelConfig
    vad_path: Path
    transcriber: Transcriber | RemoteTranscriber
    partial_transcriber: Transcriber | RemoteTranscriber | None
    synthesizer: Synthesizer | RemoteSynthesizer
    backend: ChatBackend
    vision: SceneDescriber | None = None  # scene notes for a model that cannot see
    load_times: dict[str, float] = field(default_factory=dict)
    # One scheduler per model role, shared by every session (see models/scheduler.py).
    asr_executor: RoleScheduler = field(default_factory=lambda: RoleScheduler("asr"))
    tts_executor: RoleScheduler = field(default_factory=lambda: RoleScheduler("tts"))
    asr_partial_executor: RoleScheduler = field(init=False)
    vad_executor: RoleScheduler = field(default_factory=lambda: RoleScheduler("vad"))
    vision_executor: RoleScheduler = field(default_factory=lambda: RoleScheduler("vision"))
    eot_executor: RoleScheduler = field(default_factory=lambda: RoleScheduler("eot"))
    llm_executor: RoleScheduler = field(default_factory=lambda: RoleScheduler("llm"))
    eot: SmartTurn | None = None  # the end-of-turn model, when its package is installed

    def __post_init__(self) -> None:
        # Partials (the small model) yield the cores to a final pass of the large one.
        self.asr_partial_executor = RoleScheduler("asr_partial", yield_to=self.asr_executor)

    @classmethod
    def load(cls, cfg: ModelConfig | None = None, *, warm: bool = True) -> Engine:
        """Resolve every role and (with ``warm``) load the models. Synchronous and slow:
        call it once at start-up, in a thread when a loop is running. Raises
        :class:`~seetalk.errors.ModelNotFound` naming what to install."""
        from models.registry import (
            aligned_voice,
            resolve_asr,
            resolve_llm,
            resolve_vad,
            resolve_voice,
        )

        cfg = cfg or ModelConfig()
        synthesizer: Synthesizer | RemoteSynthesizer
        if cfg.tts_base_url:
            synthesizer = RemoteSynthesizer(
                cfg.tts_base_url,
                model=cfg.tts_model,
                voice=cfg.tts_voice,
                api_key=cfg.tts_api_key,
                timeout_s=cfg.tts_timeout_s,
            )
        else:
            synthesizer = Synthesizer(*aligned_voice(*resolve_voice(cfg)))
        transcriber: Transcriber | RemoteTranscriber
        if cfg.asr_base_url:
            transcriber = RemoteTranscriber(
                cfg.asr_base_url,
                model=cfg.asr_model,
                api_key=cfg.asr_api_key,
                timeout_s=cfg.asr_timeout_s,
            )
        else:
            transcriber = Transcriber(resolve_asr(cfg), threads=cfg.asr_threads)
        engine = cls(
            cfg=cfg,
            vad_path=resolve_vad(cfg),
            transcriber=transcriber,
            partial_transcriber=_partial_transcriber(cfg),
            synthesizer=synthesizer,
            backend=make_backend(cfg, resolve_llm),
        )
        engine.vision = _load_vision(cfg)
        engine.eot = _load_eot()
        if warm:
            engine.warmup()
        return engine

    def warmup(self) -> None:
        """Load every model now, so the first turn does not pay for it."""
        for name, load in (
            ("vad", lambda: shared_session(self.vad_path)),  # one model for every session
            ("asr", self.transcriber.load),
            ("asr_partial", getattr(self.partial_transcriber, "load", lambda: None)),
            ("tts", self.synthesizer.load),
            ("llm", getattr(self.backend, "warmup", lambda: None)),
            ("eot", getattr(self.eot, "load", lambda: None)),
        ):
            t0 = time.perf_counter()
            load()
            self.load_times[name] = round(time.perf_counter() - t0, 3)
        log.info("models loaded: %s", self.load_times)

    async def aclose(self) -> None:
        await self.backend.aclose()
        for ex in self.executors:
            ex.shutdown(wait=False, cancel_futures=True)
        for role in (self.transcriber, self.partial_transcriber, self.synthesizer):
            if isinstance(role, RemoteTranscriber | RemoteSynthesizer):
                role.close()  # quick: closes idle pooled connections

    @property
    def executors(self) -> tuple[RoleScheduler, ...]:
        return (
            self.asr_executor,
            self.asr_partial_executor,
            self.tts_executor,
            self.vad_executor,
            self.vision_executor,
            self.eot_executor,
            self.llm_executor,
        )

    def load_stats(self) -> dict[str, dict[str, object]]:
        """Each role's queue depth by priority, running, done and skipped jobs, waits."""
        return {role.name: role.stats() for role in self.executors}

    def forget(self, session: str) -> None:
        """A session ended: its fair-share accounts and its saved place in the local
        model's context go."""
        for role in self.executors:
            role.forget(session)
        forget = getattr(self.backend, "forget", None)
        if callable(forget):
            forget(session)

    def asr_stats(self) -> dict[str, dict[str, int]]:
        """Local whisper decodes per role: ``fitted`` and ``full`` windows, and why fitted
        ones were done again on the full window (``looped``, ``unsure``); see voice/asr.py."""
        roles = {"asr": self.transcriber, "asr_partial": self.partial_transcriber}
        return {
            role: dict(stats)
            for role, model in roles.items()
            if isinstance(stats := getattr(model, "stats", None), dict)
        }

    def llm_for(self, session: str, priority: Priority) -> ChatBackend:
        """The language model as ``session`` uses it at ``priority``: each generation waits
        for its turn on the ``llm`` role. A remote model is returned as it is (its server
        batches concurrent requests)."""
        if isinstance(self.backend, OpenAIChatBackend):
            return self.backend
        return ScheduledBackend(self.backend, self.llm_executor, session, priority)


class ScheduledBackend:
    """A :class:`~llm.backend.ChatBackend` whose every generation holds one worker of a
    :class:`RoleScheduler` (``hold``) from before its first token to its end. The model is
    the engine's: :meth:`aclose` closes nothing. Cancelling the consumer is safe, as for
    the model's own ``stream()``: the role is released and the generation stopped."""

    def __init__(
        self, inner: ChatBackend, role: RoleScheduler, session: str, priority: Priority
    ) -> None:
        self.inner, self.role, self.session, self.priority = inner, role, session, priority
        self.name = inner.name
        self.supports_images = inner.supports_images

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncGenerator[str, None]:
        settings = dataclasses.replace(settings, conversation=self.session)
        async with self.role.hold(self.session, self.priority, kind="generation"):
            stream = self.inner.stream(messages, settings)
            try:
                async for text in stream:
                    yield text
            finally:
                await _close(stream)

    async def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        """The model's own tool handling (:func:`llm.tools.tool_stream`), scheduled."""
        settings = dataclasses.replace(settings, conversation=self.session)
        async with self.role.hold(self.session, self.priority, kind="generation"):
            stream = tool_stream(self.inner, messages, settings, tools)
            try:
                async for delta in stream:
                    yield delta
            finally:
                await _close(stream)

    async def aclose(self) -> None:
        """The engine owns the model: nothing to close here."""


async def _close(stream: AsyncIterator[object]) -> None:
    """Close ``stream`` (when it is a generator) now, so the model stops before the role is
    released, not whenever the garbage collector gets to it."""
    if isinstance(stream, AsyncGenerator):
        await stream.aclose()


def _partial_transcriber(cfg: ModelConfig) -> Transcriber | None:
    """The model for partial transcripts, when it differs from the final one. With remote
    finals (``asr_base_url``) a local ``asr_partial`` gives partials without a round trip;
    ``asr_partial=""`` sends partials to the server too."""
    from models.registry import resolve_asr

    if not cfg.asr_partial or (cfg.asr_partial == cfg.asr and not cfg.asr_base_url):
        return None
    partial_cfg = dataclasses.replace(cfg, asr=cfg.asr_partial)
    return Transcriber(resolve_asr(partial_cfg), threads=cfg.asr_threads)


def _load_eot() -> SmartTurn | None:
    """Smart Turn, if its package is installed (else turns end on silence alone)."""
    from models.registry import resolve_smart_turn

    try:
        return SmartTurn(resolve_smart_turn())
    except ModelNotFound as exc:
        log.warning("%s; turns end on silence alone", exc.message)
        return None


def _load_vision(cfg: ModelConfig) -> SceneDescriber:
    return SceneDescriber.from_config(cfg)
