"""The model backend interface: chat messages in, streamed text deltas out.

The same model receives the camera frames (JPEG bytes on user messages) when it can see.
Two implementations:

- :class:`llm.local.LlamaCppBackend`: llama-cpp-python in-process (the default,
  with the embedded SmolLM2 model);
- :class:`llm.openai_compat.OpenAIChatBackend`: any OpenAI-compatible server (vLLM,
  SGLang, llama.cpp's server, Ollama, OpenAI, xAI).

:func:`llm.factory.make_backend` picks one from a :class:`~seetalk.config.ModelConfig`.

Errors are the ones of :mod:`seetalk.errors`: :class:`~seetalk.errors.ImagesRejected` when the
model refuses images (the caller drops them and retries text-only),
:class:`~seetalk.errors.BackendTimeout`, :class:`~seetalk.errors.BackendError`,
:class:`~seetalk.errors.ModelNotFound`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from seetalk.errors import ConfigError

if TYPE_CHECKING:
    pass

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: ``arguments`` is its JSON text (see llm/tools.py)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation. ``images`` are JPEG bytes, only on user messages.
    An assistant message may carry ``tool_calls``; a ``tool`` message is the output of the
    call ``tool_call_id``."""

    role: Role
    text: str
    images: tuple[bytes, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown chat role {self.role!r}")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message (and only one) names its tool_call_id")
        if self.images and self.role != "user":
            raise ValueError("images belong on user messages only")


@dataclass(frozen=True)
class GenerationSettings:
    """Per-call sampling settings.

    The defaults suit the tiny embedded SmolLM2 (135M), which rambles when left alone: a low
    temperature and a short answer (about two spoken sentences). Out-of-range values raise
    :class:`~seetalk.errors.ConfigError`.
    """

    max_tokens: int = 120
    temperature: float = 0.3
    stop: tuple[str, ...] = ()
    # whose conversation this is (the session id): the in-process model keeps each one's
    # place in its context between turns; servers ignore it
    conversation: str | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1", param="max_output_tokens")
        if not 0 <= self.temperature <= 2:
            raise ConfigError("temperature must be between 0 and 2", param="temperature")


@runtime_checkable
class ChatBackend(Protocol):
    """A language (or vision-language) model that streams a reply.

    ``stream()`` is an async generator of text deltas. Cancelling its consumer (``aclose()``
    of the generator, or cancelling the task that iterates it) is safe and stops generation
    promptly; the ``CancelledError`` propagates. ``supports_images`` says whether sending
    images is worth trying; a backend that refuses them raises ``ImagesRejected``.
    """

    name: str
    supports_images: bool

    def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


def has_images(messages: Sequence[ChatMessage]) -> bool:
    return any(m.images for m in messages)


def jpeg_data_url(jpeg: bytes) -> str:
    """A ``data:image/jpeg;base64,...`` URL, the form both backends send images in."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages in the OpenAI chat format.

    A message without images has plain string content; one with images has content parts:
    the images first (``image_url`` parts with JPEG data URLs), then the ``text`` part, the
    order vision-language prompts are trained on.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.tool_calls or m.tool_call_id is not None:
            out.append(_tool_message(m))
            continue
        if not m.images:
            out.append({"role": m.role, "content": m.text})
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": jpeg_data_url(img)}} for img in m.images
        ]
        parts.append({"type": "text", "text": m.text})
        out.append({"role": m.role, "content": parts})
    return out


def _tool_message(m: ChatMessage) -> dict[str, Any]:
    """An assistant message with ``tool_calls``, or a ``tool`` message (OpenAI chat shape)."""
    if m.tool_call_id is not None:
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text}
    calls = [
        {
            "id": c.call_id,
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for c in m.tool_calls
    ]
    return {"role": "assistant", "content": m.text or None, "tool_calls": calls}
