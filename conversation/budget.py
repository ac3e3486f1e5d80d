"""What a session sends the model, bounded in tokens; and what each response used.

:func:`fit` is pure: chat messages and a token counter in, the messages that fit the context
budget out. The instructions (the first, system message) are always kept; the oldest turns
go first; the newest message (what the model answers) is always kept. ``truncation``
follows the Realtime protocol: ``"auto"`` drops the oldest turns when the input would exceed
the budget, ``"disabled"`` sends everything (the model's own context limit then fails the
reply loudly), and ``retention_ratio`` (0..1) drops down to that fraction of the budget at
once (``"auto"`` to :data:`AUTO_RETENTION` of it). A cut is kept while what follows it still
fits (the caller passes :attr:`Fitted.anchor` back), so the model input keeps the same
prefix for several turns and llama.cpp reuses its evaluated prefix: a stateless cut would
move every turn once the context is full, and every reply would re-read the whole history
(on 2 cores, 20-30 s for 1,500 tokens instead of 0.4 s).

Tokens are counted with the model's own tokenizer when the backend has one
(:class:`Tokenizes`, llama.cpp's ``tokenize``), otherwise estimated (:func:`estimate`: about
4 characters a token, the usual figure for English BPE vocabularies, rounded up).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from llm.backend import ChatMessage

IMAGE_TOKENS = 256  # what one image costs a vision model's context, roughly
MESSAGE_OVERHEAD = 8  # chat-template tokens around each message (ChatML: about 6)
DEFAULT_CONTEXT = 2048  # the embedded model's n_ctx
AUTO_RETENTION = 0.8  # "auto" truncation cuts to this share of the budget
ANCHOR = 4  # messages that identify where the previous cut was


@runtime_checkable
class Tokenizes(Protocol):
    """A backend that can count tokens with its own tokenizer (cheap, thread-safe)."""

    def count_tokens(self, text: str) -> int: ...


def estimate(text: str) -> int:
    """Tokens of ``text`` without a tokenizer: one per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


def counter_for(backend: object) -> Callable[[str], int]:
    """The backend's own token counter, or :func:`estimate`."""
    return backend.count_tokens if isinstance(backend, Tokenizes) else estimate


def message_tokens(message: ChatMessage, count: Callable[[str], int]) -> int:
    return count(message.text) + MESSAGE_OVERHEAD + IMAGE_TOKENS * len(message.images)


@dataclass(frozen=True)
class Truncation:
    """The session's ``truncation``: ``mode`` is ``"auto"``, ``"disabled"`` or
    ``"retention_ratio"`` (then ``retention_ratio`` in 0..1 applies)."""

    mode: str = "auto"
    retention_ratio: float = 1.0

    def to_protocol(self) -> str | dict[str, object]:
        if self.mode == "retention_ratio":
            return {"type": "retention_ratio", "retention_ratio": self.retention_ratio}
        return self.mode


@dataclass(frozen=True)
class Fitted:
    messages: list[ChatMessage]
    tokens: int  # input tokens of ``messages``
    dropped: int  # messages left out
    anchor: tuple[ChatMessage, ...] = ()  # where the kept history starts, after a cut


def fit(
    messages: Sequence[ChatMessage],
    budget: int,
    count: Callable[[str], int],
    truncation: Truncation = Truncation(),
    anchor: tuple[ChatMessage, ...] = (),
) -> Fitted:
    """The messages that fit ``budget`` input tokens. ``messages[0]`` (the instructions)
    and the last message are always kept; with ``truncation.mode == "disabled"`` nothing
    is dropped. ``anchor`` (the previous result's) keeps the previous cut while what
    follows it fits. Pure: no clock, no I/O."""
    sizes = [message_tokens(m, count) for m in messages]
    total = sum(sizes)
    if truncation.mode == "disabled" or total <= budget or len(messages) <= 2:
        return Fitted(list(messages), total, 0)
    keep_first = 1 if messages[0].role == "system" else 0
    if anchor:
        for j in range(keep_first, len(messages) - 1):
            if tuple(messages[j : j + len(anchor)]) == anchor:
                kept_total = sum(sizes[:keep_first]) + sum(sizes[j:])
                if kept_total <= budget:  # the same prefix as last time
                    kept = list(messages[:keep_first]) + list(messages[j:])
                    return Fitted(kept, kept_total, j - keep_first, anchor)
                break
    ratio = truncation.retention_ratio if truncation.mode == "retention_ratio" else AUTO_RETENTION
    target = int(budget * ratio)
    start = keep_first
    while total > target and start < len(messages) - 1:
        total -= sizes[start]
        start += 1
    # a conversation starts with the user's turn: never with an orphaned assistant reply
    while start < len(messages) - 1 and messages[start].role == "assistant":
        total -= sizes[start]
        start += 1
    kept = list(messages[:keep_first]) + list(messages[start:])
    return Fitted(kept, total, start - keep_first, tuple(messages[start : start + ANCHOR]))


def usage(input_tokens: int, output_tokens: int, audio_seconds: float = 0.0) -> dict[str, object]:
    """The ``usage`` object of ``response.done`` (OpenAI shape); ``audio_seconds`` (an
    extension) is how much audio the reply synthesized."""
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {"text_tokens": input_tokens, "audio_tokens": 0},
        "output_token_details": {"text_tokens": output_tokens, "audio_tokens": 0},
        "seetalk_audio_seconds": round(audio_seconds, 3),
    }


@runtime_checkable
class HasContext(Protocol):
    """A backend that knows its context length in tokens (llama.cpp's ``n_ctx``)."""

    n_ctx: int


REMOTE_CONTEXT = 8192  # assumed for a model server that does not say (most serve more)


def context_of(backend: object) -> int:
    """The model's context in tokens: its own ``n_ctx``, else :data:`REMOTE_CONTEXT`."""
    return backend.n_ctx if isinstance(backend, HasContext) else REMOTE_CONTEXT
