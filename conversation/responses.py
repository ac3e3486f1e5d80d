"""Responses beyond the default spoken reply: text-only output, per-response options and
out-of-band responses (``response.create`` with ``conversation: "none"``).

:func:`spec_for` resolves what one response is (modalities, instructions, token limit,
whether it joins the conversation, its metadata and custom input) from the session settings
and a ``response.create``. :class:`TextResponse` runs a text-only response: the model's text
streams out as ``response.output_text.delta``, no audio is synthesized. Out-of-band
responses never enter the conversation; their events carry ``conversation_id: null`` and
the client's ``metadata``. Cancelling a response's task is safe: ``response.done`` says
``cancelled`` and the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from conversation import budget
from conversation import events as ev
from conversation import turns as tt
from conversation.history import Conversation, Item
from conversation.protocol import MessageItem, ResponseCreate
from llm.backend import ChatBackend, ChatMessage, GenerationSettings
from models.scheduler import Priority
from seetalk.config import SessionSettings
from seetalk.errors import ConfigError, InvalidEvent, SeetalkError
from vision.images import decode_data_url_async
from voice.asr import Transcriber
from voice.remote import RemoteTranscriber
from voice.tts import Synthesizer

log = logging.getLogger(__name__)

CONVERSATION_ID = "conv_default"  # the one conversation of a session


@dataclass(frozen=True)
class ResponseSpec:
    modalities: tuple[str, ...]
    instructions: str
    max_output_tokens: int
    out_of_band: bool = False
    metadata: dict[str, str] | None = None
    input: tuple[object, ...] | None = None  # MessageItem or an item_reference id

    @property
    def text_only(self) -> bool:
        return self.modalities == ("text",)


def spec_for(settings: SessionSettings, event: ResponseCreate | None = None) -> ResponseSpec:
    """What ``event`` (or, without one, an automatic turn) asks for, on ``settings``."""
    modalities: tuple[str, ...] = (settings.output_modalities,)
    if event is None:
        return ResponseSpec(modalities, settings.instructions, settings.max_output_tokens)
    tokens = event.max_output_tokens
    return ResponseSpec(
        modalities=event.output_modalities or modalities,
        instructions=settings.instructions if event.instructions is None else event.instructions,
        max_output_tokens=(
            settings.max_output_tokens
            if tokens is None
            else 4096
            if tokens == "inf"
            else int(tokens)
        ),
        out_of_band=event.conversation == "none",
        metadata=None if event.metadata is None else dict(event.metadata),
        input=event.input,
    )


def generation_priority(
    *, requested: bool, latest_user: str | None, answered: str | None
) -> Priority:
    """Where a spoken reply's generation queues on the language model (models/engine.py).

    A turn's reply is what a person waits for: ``FIRST``. A ``response.create``
    (``requested``) is too while the latest user item has no reply yet (push-to-talk: the
    client commits, then asks); once a reply was started for it, more are ``REST``, so one
    session sending endless ``response.create`` cannot delay another's turn."""
    if not requested or (latest_user is not None and latest_user != answered):
        return Priority.FIRST
    return Priority.REST


def is_default(event: ResponseCreate) -> bool:
    """A plain ``response.create``: the session's own reply, nothing overridden."""
    return (
        event.instructions is None
        and event.max_output_tokens is None
        and event.output_modalities is None
        and event.conversation in (None, "auto")
        and event.metadata is None
        and event.input is None
    )


async def input_messages(
    spec: ResponseSpec, conversation: Conversation, history_turns: int
) -> list[ChatMessage]:
    """What the model reads: the instructions, then the custom ``input`` (items, or
    references to items of the conversation) or, without it, the conversation. Raises
    :class:`InvalidEvent` (``item_not_found``) for a reference to no item."""
    if spec.input is None:
        return conversation.messages(spec.instructions, history_turns)
    out = [ChatMessage("system", spec.instructions)]
    for i, entry in enumerate(spec.input):
        if isinstance(entry, str):
            item = conversation.get(entry)
            if item is None:
                raise InvalidEvent(
                    f"no item {entry!r} in the conversation",
                    code="item_not_found",
                    param=f"response.input[{i}].id",
                )
            text = f"{item.notes}\n{item.text}" if item.notes else item.text
            if item.role == "user":
                out.append(ChatMessage("user", text or "...", item.images))
            else:
                out.append(ChatMessage("assistant", text or "..."))
            continue
        if not isinstance(entry, MessageItem):
            raise InvalidEvent(
                "only message items and item references are supported in response.input",
                code="unsupported",
                param=f"response.input[{i}].type",
            )
        texts: list[str] = []
        images: list[bytes] = []
        for part in entry.content:
            if part.image_url is not None:
                images.append(await decode_data_url_async(part.image_url))
            elif part.text is not None:
                texts.append(part.text)
            elif part.transcript is not None:
                texts.append(part.transcript)
        role = entry.role if entry.role in ("user", "assistant", "system") else "user"
        out.append(
            ChatMessage(role, " ".join(texts) or "...", tuple(images) if role == "user" else ())  # type: ignore[arg-type]
        )
    return out


# --- events ---------------------------------------------------------------------------------


def response_object(
    response_id: str,
    spec: ResponseSpec,
    status: str,
    output: list[dict[str, Any]],
    *,
    reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "conversation_id": None if spec.out_of_band else CONVERSATION_ID,
        "max_output_tokens": spec.max_output_tokens,
    }
    if spec.metadata is not None:
        extra["metadata"] = spec.metadata
    if usage is not None:
        extra["usage"] = usage
    return ev.response_object(
        response_id, status, output, reason, modalities=spec.modalities, **extra
    )


def _event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": ev.new_id("event"), **fields}


def _part(response_id: str, item_id: str) -> dict[str, Any]:
    return {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}


def conversation_created() -> dict[str, Any]:
    return _event(
        "conversation.created",
        conversation={"id": CONVERSATION_ID, "object": "realtime.conversation"},
    )


def rate_limits_updated(
    max_output_tokens: int, context_tokens: int, used: int = 0
) -> dict[str, Any]:
    """The session's limits: one response at a time, and its model's context in tokens."""
    return _event(
        "rate_limits.updated",
        rate_limits=[
            {"name": "requests", "limit": 1, "remaining": 1, "reset_seconds": 0.0},
            {
                "name": "tokens",
                "limit": context_tokens,
                "remaining": max(0, context_tokens - used),
                "reset_seconds": 0.0,
            },
        ],
    )


# --- a text-only response -----------------------------------------------------------------


class TextResponse:
    """One text-only response: generation streamed as ``response.output_text.delta``.

    It joins the conversation (unless out of band) when it completes, or with the text
    sent so far, marked interrupted, when cancelled."""

    def __init__(
        self,
        spec: ResponseSpec,
        *,
        backend: ChatBackend,
        conversation: Conversation,
        emit: Callable[[dict[str, Any]], None],
        temperature: float,
        count: Callable[[str], int] = budget.estimate,
    ) -> None:
        self.spec = spec
        self.id = ev.new_id("resp")
        self.item_id = ev.new_id("item")
        self.status = "in_progress"
        self.text = ""
        self.task: asyncio.Task[None] | None = None
        self._backend = backend
        self._conversation = conversation
        self._emit = emit
        self._temperature = temperature
        self._count = count
        self._input_tokens = 0

    @property
    def ended(self) -> bool:
        return self.status != "in_progress"

    def start(
        self,
        messages: list[ChatMessage],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self._input_tokens = sum(budget.message_tokens(m, self._count) for m in messages)
        self._emit(
            _event(
                "response.created", response=response_object(self.id, self.spec, "in_progress", [])
            )
        )
        item = ev.assistant_item(self.item_id, None, modality="output_text")
        self._emit(
            _event("response.output_item.added", response_id=self.id, output_index=0, item=item)
        )
        self._emit(
            _event(
                "response.content_part.added",
                **_part(self.id, self.item_id),
                part={"type": "text", "text": ""},
            )
        )
        self.task = spawn(self._run(messages))

    def cancel(self, reason: str = "client_cancelled") -> None:
        """Stop now: ``response.done`` ``cancelled`` with the text sent so far."""
        if self.ended:
            return
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._finish("cancelled", reason)

    async def _run(self, messages: list[ChatMessage]) -> None:
        settings = GenerationSettings(
            max_tokens=self.spec.max_output_tokens, temperature=self._temperature
        )
        try:
            async for delta in self._backend.stream(messages, settings):
                if self.ended:
                    return
                self.text += delta
                self._emit(
                    _event(
                        "response.output_text.delta", **_part(self.id, self.item_id), delta=delta
                    )
                )
        except SeetalkError as exc:
            log.warning("text response %s failed: %s", self.id, exc)
            self._emit(ev.error(exc.to_event_error()))
            self._finish("failed", None)
            return
        self._finish("completed", None)

    def _finish(self, status: str, reason: str | None) -> None:
        if self.ended:
            return
        self.status = status
        text = self.text.strip()
        interrupted = status != "completed"
        self._emit(_event("response.output_text.done", **_part(self.id, self.item_id), text=text))
        self._emit(
            _event(
                "response.content_part.done",
                **_part(self.id, self.item_id),
                part={"type": "text", "text": text},
            )
        )
        item = ev.assistant_item(
            self.item_id,
            text,
            status="incomplete" if interrupted else "completed",
            modality="output_text",
        )
        self._emit(
            _event("response.output_item.done", response_id=self.id, output_index=0, item=item)
        )
        if not self.spec.out_of_band and (text or not interrupted):
            previous = self._conversation.add(
                Item(self.item_id, "assistant", text, interrupted=interrupted, source="text_reply")
            )
            self._emit(ev.item_done(item, previous))
        usage = budget.usage(self._input_tokens, self._count(text) if text else 0)
        self._emit(
            _event(
                "response.done",
                response=response_object(
                    self.id, self.spec, status, [item], reason=reason, usage=usage
                ),
            )
        )


# --- the session's part -----------------------------------------------------------------------


class Host(Protocol):
    """What :class:`SessionRest` uses of a :class:`~conversation.session.Session`."""

    settings: SessionSettings
    conversation: Conversation

    @property
    def input_time(self) -> float: ...

    @property
    def backend(self) -> ChatBackend: ...

    def llm_for(self, priority: Priority) -> ChatBackend: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def emit(self, event: dict[str, Any]) -> None: ...

    def respond_now(
        self,
        messages: list[ChatMessage] | None = None,
        generation: GenerationSettings | None = None,
        priority: Priority | None = None,
    ) -> str | None: ...

    def cancel_reply(self, reason: str = "client_cancelled") -> None: ...


@dataclass
class _Accounting:
    spec: ResponseSpec
    input_tokens: int = 0
    audio_s: float = 0.0  # audio synthesized for the response


class IdleTimer:
    """``idle_timeout_ms``, pure: armed when a reply has played (input timeline seconds),
    disarmed by speech; :meth:`due` says when it fires (once)."""

    def __init__(self) -> None:
        self.since: float | None = None

    def arm(self, t: float) -> None:
        self.since = t

    def disarm(self) -> None:
        self.since = None

    def due(self, now: float, timeout_ms: int) -> float | None:
        """The time it was armed at, if ``timeout_ms`` (> 0) has passed since; then it is
        disarmed."""
        since = self.since
        if since is None or timeout_ms <= 0 or now - since < timeout_ms / 1000:
            return None
        self.since = None
        return since


MAX_TRACKED = 64  # responses whose options are remembered until their response.done


class SessionRest:
    """The rest of the protocol for one session: ``response.create`` options (text-only,
    out-of-band, custom input, metadata), ``create_response: false``, transcription-only
    sessions, the idle timeout, the model input budget and ``usage``.

    The session calls it at a few points (start, commit, final transcript, each turn-taker
    batch, each input chunk, each reply it runs) and passes every event through
    :meth:`decorate`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.idle = IdleTimer()
        self.text: TextResponse | None = None  # the in-conversation text response
        self._oob: set[TextResponse] = set()
        self._commits: deque[str] = deque(maxlen=8)  # client commits awaiting their final
        self._tracked: dict[str, _Accounting] = {}  # by response id, until response.done
        self._next: ResponseSpec | None = None  # options of the next reply the session runs
        self.last_input_tokens = 0
        self._anchor: tuple[ChatMessage, ...] = ()  # the last cut (budget.fit), kept

    # --- what the session asks ---------------------------------------------------------

    @property
    def answers_turns(self) -> bool:
        s = self.host.settings
        return s.kind == "realtime" and s.turn.create_response

    def count(self) -> Callable[[str], int]:
        return budget.counter_for(self.host.backend)

    def context_tokens(self) -> int:
        return budget.context_of(self.host.backend)

    def started(self) -> None:
        """The events after ``session.created``."""
        self.host.emit(conversation_created())
        self.host.emit(
            rate_limits_updated(self.host.settings.max_output_tokens, self.context_tokens())
        )

    def committed(self, item_id: str | None) -> None:
        if item_id is not None:
            self._commits.append(item_id)

    def finalized(self, item_id: str, text: str, seconds: float) -> None:
        """A final transcript: a client-committed turn whose transcript holds no words is
        still answered (``committed`` and an empty transcript); it does not enter the
        conversation."""
        if item_id not in self._commits:
            return
        self._commits.remove(item_id)
        if tt.has_words(text):
            return  # answered by the session's usual events
        self.host.emit(ev.input_committed(item_id, self.host.conversation.last_id))
        self.host.emit(ev.transcription_completed(item_id, "", seconds))

    def filter(self, actions: list[Any]) -> list[Any]:
        """The turn-taker's actions, less the replies when turns are not answered
        (``create_response: false`` or a transcription session)."""
        if any(isinstance(a, tt.UtteranceStarted) for a in actions):
            self.idle.disarm()
        if self.answers_turns:
            return actions
        dropped = (tt.StartPreemptive, tt.Respond, tt.NotUnderstood)
        out = [a for a in actions if not isinstance(a, dropped)]
        return [tt.CancelPreemptive() if isinstance(a, tt.AdoptPreemptive) else a for a in out]

    def fit(self, messages: list[ChatMessage], response_id: str | None) -> list[ChatMessage]:
        """The model input bounded by the context budget (``truncation``); its token count
        is kept for the response's ``usage``."""
        s = self.host.settings
        spec = self._next
        room = self.context_tokens() - (spec.max_output_tokens if spec else s.max_output_tokens)
        fitted = budget.fit(
            messages,
            max(1, room),
            self.count(),
            budget.Truncation(s.truncation, s.retention_ratio),
            self._anchor,
        )
        self._anchor = fitted.anchor  # the next reply keeps this cut: the model's cache holds
        self.last_input_tokens = fitted.tokens
        if response_id is not None:
            acc = self._tracked.get(response_id) or _Accounting(spec or spec_for(s))
            acc.input_tokens = fitted.tokens
            self._track(response_id, acc)
        return fitted.messages

    def _track(self, response_id: str, acc: _Accounting) -> None:
        self._tracked[response_id] = acc
        while len(self._tracked) > MAX_TRACKED:
            self._tracked.pop(next(iter(self._tracked)))

    def claim_next(self, response_id: str) -> None:
        """The session created the reply the pending options were for."""
        if self._next is not None:
            self._track(response_id, _Accounting(self._next))
            self._next = None

    def out_of_band(self, response_id: str) -> bool:
        acc = self._tracked.get(response_id)
        return acc is not None and acc.spec.out_of_band

    def decorate(self, event: dict[str, Any]) -> dict[str, Any]:
        """Fill a response event with the response's options (modalities, metadata,
        ``conversation_id``) and ``response.done`` with ``usage``."""
        t = event.get("type")
        if t not in ("response.created", "response.done"):
            return event
        resp = event["response"]
        if t == "response.done":
            self.idle.arm(self.host.input_time)  # idle_timeout_ms counts from here
        if "conversation_id" in resp:
            return event  # built here (a text response)
        acc = self._tracked.get(resp["id"])
        spec = acc.spec if acc is not None else spec_for(self.host.settings)
        resp["conversation_id"] = None if spec.out_of_band else CONVERSATION_ID
        resp["max_output_tokens"] = spec.max_output_tokens
        if spec.metadata is not None:
            resp["metadata"] = spec.metadata
        if t == "response.done":
            self._tracked.pop(resp["id"], None)
            said = " ".join(
                str(part.get("transcript") or part.get("text") or "")
                for item in resp.get("output", [])
                for part in item.get("content", [])
            ).strip()
            count = self.count()
            resp["usage"] = budget.usage(
                acc.input_tokens if acc is not None else 0,
                count(said) if said else 0,
                acc.audio_s if acc is not None else 0.0,
            )
        return event

    # --- response.create ---------------------------------------------------------------

    async def create(self, event: ResponseCreate) -> None:
        """A ``response.create`` with options: text or audio, in the conversation or out of
        band, on the conversation or on its own ``input``."""
        host = self.host
        s = host.settings
        spec = spec_for(s, event)
        messages = await input_messages(spec, host.conversation, s.history_turns)
        if spec.text_only:
            self.start_text(spec, messages)
            return
        self._next = spec
        try:
            host.respond_now(
                messages,
                GenerationSettings(max_tokens=spec.max_output_tokens, temperature=s.temperature),
                Priority.REST if spec.out_of_band else None,  # nobody's turn waits on it
            )
        finally:
            self._next = None

    def start_text(self, spec: ResponseSpec, messages: list[ChatMessage]) -> TextResponse:
        host = self.host
        if not spec.out_of_band:
            host.cancel_reply("turn_detected")
            self.cancel_text("turn_detected")
        self._next = spec
        try:
            fitted = self.fit(messages, None)
        finally:
            self._next = None
        response = TextResponse(
            spec,
            backend=host.llm_for(Priority.REST),  # text: nobody waits for a voice
            conversation=host.conversation,
            emit=self._emit,
            temperature=host.settings.temperature,
            count=self.count(),
        )
        if spec.out_of_band:
            self._oob.add(response)
        else:
            self.text = response
        response.start(fitted, host.spawn)
        return response

    def respond_text(self) -> bool:
        """The session is about to answer a turn: with ``output_modalities: ["text"]``
        the answer is a text response (returns True)."""
        if self.host.settings.output_modalities != "text" or self._next is not None:
            return False
        s = self.host.settings
        self.start_text(
            spec_for(s), self.host.conversation.messages(s.instructions, s.history_turns)
        )
        return True

    def cancel_text(self, reason: str = "client_cancelled") -> bool:
        text, self.text = self.text, None
        if text is None or text.ended:
            return False
        text.cancel(reason)
        return True

    def _emit(self, event: dict[str, Any]) -> None:
        self.host.emit(event)
        if event.get("type") == "response.done":
            self._oob = {r for r in self._oob if not r.ended}
            if self.text is not None and self.text.ended:
                self.text = None

    # --- the idle timeout ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Each input chunk: when the idle timeout is due, ``timeout_triggered``, an empty
        user turn committed, and a reply (as the protocol describes)."""
        since = self.idle.due(now, self.host.settings.turn.idle_timeout_ms)
        if since is None:
            return
        item_id = ev.new_id("item")
        event = _event(
            "input_audio_buffer.timeout_triggered",
            item_id=item_id,
            audio_start_ms=int(since * 1000),
            audio_end_ms=int(now * 1000),
        )
        previous = self.host.conversation.add(Item(item_id, "user", ""))
        out = [event, ev.input_committed(item_id, previous)]
        user = ev.user_item(item_id, transcript="")
        out += [ev.item_added(user, previous), ev.item_done(user, previous)]
        for e in out:
            self.host.emit(e)
        if self.answers_turns:
            self.host.respond_now()

    def add_reply(self, response_id: str, item: Item, audio_s: float = 0.0) -> str | None:
        """Put a reply's item in the conversation, unless the reply is out of band;
        returns the id of the item before it. ``audio_s`` goes to its ``usage``."""
        acc = self._tracked.get(response_id)
        if acc is not None:
            acc.audio_s = audio_s
        if self.out_of_band(response_id):
            return self.host.conversation.last_id
        return self.host.conversation.add(item)


# --- audio.input.transcription ------------------------------------------------------------------


class InLanguage:
    """Whisper transcribing in one language (``audio.input.transcription.language``): the
    session's final passes go through it; partials stay on the partial model."""

    def __init__(self, inner: Transcriber, language: str) -> None:
        self.inner = inner
        self.language = language

    def transcribe(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        return self.inner.transcribe(audio16k, prompt=prompt, language=self.language)

    def transcribe_partial(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        return self.inner.transcribe_partial(audio16k, prompt=prompt)


def transcriber_for(base: Transcriber | RemoteTranscriber, settings: SessionSettings) -> Any:
    """The recognizer of a session's final passes for ``settings``. Raises
    :class:`ConfigError` when a language is asked of a transcription server (its request
    carries no language here)."""
    language = settings.transcription_language
    if not language:
        return base
    if not isinstance(base, Transcriber):
        raise ConfigError(
            "audio.input.transcription.language needs the local recognizer; the "
            "transcription server detects the language itself",
            param="session.audio.input.transcription.language",
        )
    return InLanguage(base, language)


def check_voice(synth: object, settings: SessionSettings) -> None:
    """``audio.output.speed`` other than 1 needs the local voice (piper's length scale);
    with a speech server it is refused (:class:`ConfigError`), never silently ignored."""
    if settings.speed != 1.0 and not isinstance(synth, Synthesizer):
        raise ConfigError(
            "audio.output.speed needs the local voice; the speech server speaks at its own rate",
            param="session.audio.output.speed",
        )
