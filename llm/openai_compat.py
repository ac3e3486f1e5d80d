"""An OpenAI-compatible chat completions server (vLLM, SGLang, llama.cpp, Ollama, OpenAI, xAI).

Plain ``httpx`` with server-sent events, so that every failure maps onto one seetalk error:

- connection refused, DNS failure -> :class:`BackendError` ("... is unreachable");
- no answer within ``timeout_s`` (connect, first token, or between two tokens)
  -> :class:`BackendTimeout`;
- a 4xx on a request with images that mentions images (or any 400 on one)
  -> :class:`ImagesRejected` (the caller drops the images and retries text-only);
- any other HTTP error -> :class:`BackendError` with the status and the server's message;
- a stream that ends without ``[DONE]`` or a ``finish_reason`` -> :class:`BackendError`, or
  :class:`ImagesRejected` when it carried images and no text came (a server that fails on
  image parts after answering 200, as llama.cpp's server does with a text-only model);
  the same for a connection broken off before any text of a request with images.
  (If the server is really gone, the text-only retry then reports it.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing
from typing import Any
from urllib.parse import urlsplit

import httpx

from llm.backend import ChatMessage, GenerationSettings, has_images, openai_messages
from llm.tools import ToolCallDelta, ToolUse, openai_tool_fields, tool_call_deltas
from seetalk.errors import BackendError, BackendTimeout, ImagesRejected
from seetalk.openai_http import error_message, normalize_base_url

_IMAGE_WORDS = ("image", "multimodal", "multi-modal", "vision", "mmproj")


def _mentions_images(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _IMAGE_WORDS)


def _delta_text(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    part = first.get("delta") or first.get("message") or {}
    content = part.get("content") if isinstance(part, dict) else None
    return content if isinstance(content, str) else None


def _finish_reason(obj: dict[str, Any]) -> Any:
    choices = obj.get("choices") or [{}]
    return choices[0].get("finish_reason") if isinstance(choices[0], dict) else None


class OpenAIChatBackend:
    """Chat completions, streamed, from an OpenAI-compatible server.

    - ``base_url``: the API root, ``http://host:8000/v1`` (a bare ``http://host:8000`` gets
      ``/v1`` added).
    - ``api_key``: sent as a bearer token when set.
    - ``model``: the ``model`` field of requests (servers with one model ignore it).
    - ``timeout_s``: the longest wait for the connection, for the first token, and between
      two tokens.

    ``supports_images`` is True: a server's abilities cannot be known in advance; a
    refusal raises :class:`ImagesRejected`.
    """

    supports_images = True

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str = "default",
        timeout_s: float = 20.0,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.timeout_s = timeout_s
        self.name = f"openai:{model}@{urlsplit(self.base_url).netloc}"
        self._headers = {"Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise BackendError(f"{self.name} is closed")
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self._headers, timeout=httpx.Timeout(self.timeout_s)
            )
        return self._client

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncGenerator[str, None]:
        """Stream the reply as text deltas.

        Cancelling is safe: closing the generator or cancelling the task that iterates it
        closes the HTTP response (the server sees the connection go and stops generating),
        and ``CancelledError`` propagates.
        """
        async for delta in self._stream(messages, settings, None):
            if isinstance(delta, str):
                yield delta

    async def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        """The reply with tools: the request carries ``tools``, ``tool_choice`` and
        ``parallel_tool_calls``; the server's streamed ``delta.tool_calls`` come back as
        :class:`~llm.tools.ToolCallDelta`, text as ``str``. Cancelling is safe."""
        async for delta in self._stream(messages, settings, tools):
            yield delta

    async def _stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse | None
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(messages),
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "stream": True,
        }
        if settings.stop:
            body["stop"] = list(settings.stop)
        if tools is not None and tools.active:
            body.update(openai_tool_fields(tools))
        images = has_images(messages)
        for attempt in (1, 2):
            stream = self._stream_once(body, images, retry=attempt == 1 and not images)
            try:
                async with aclosing(stream) as deltas:
                    async for text in deltas:
                        yield text
                return
            except _BrokeOffEarly:
                # The server cut the stream before its first token (llama.cpp's server does
                # so right after it failed on another request): ask once more.
                continue

    async def _stream_once(
        self, body: dict[str, Any], images: bool, *, retry: bool
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        """One request. With ``retry``, a stream that breaks off before any text raises
        :class:`_BrokeOffEarly` instead of :class:`BackendError`."""
        url = f"{self.base_url}/chat/completions"
        answered = False
        try:
            async with AsyncExitStack() as stack:
                resp = await self._open(stack, url, body)
                if resp.status_code >= 400:
                    raise self._http_error(resp.status_code, await resp.aread(), images)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    # A server that ignored ``stream``: one whole completion.
                    whole = self._parse(await resp.aread(), images)
                    text = _delta_text(whole)
                    if text:
                        yield text
                    for call in tool_call_deltas(whole):
                        yield call
                    return
                finished = False
                async with aclosing(_sse_data(resp.aiter_lines())) as events:
                    async for data in events:
                        if data == "[DONE]":
                            return
                        chunk = self._parse(data.encode(), images)
                        finished = finished or _finish_reason(chunk) is not None
                        text = _delta_text(chunk)
                        if text:
                            answered = True
                            yield text
                        for call in tool_call_deltas(chunk):
                            answered = True
                            yield call
                if not finished:
                    # The server failed after sending its 200 header. llama.cpp's server does
                    # that when a text-only model's chat template meets image content parts.
                    if images and not answered:
                        raise ImagesRejected(
                            f"{self.name} ended the stream without an answer to a request "
                            "with images (a text-only model?)"
                        )
                    if retry and not answered:
                        raise _BrokeOffEarly
                    raise BackendError(
                        f"model server at {self.base_url} ended the stream before the reply "
                        "was complete"
                    )
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"model server at {self.base_url} did not answer within {self.timeout_s:g} s"
                f" ({type(exc).__name__})"
            ) from exc
        except httpx.ConnectError as exc:
            raise BackendError(f"model server at {self.base_url} is unreachable: {exc}") from exc
        except httpx.HTTPError as exc:
            if images and not answered:
                raise ImagesRejected(
                    f"{self.name} broke off a request with images before answering "
                    f"(a text-only model?): {exc!r}"
                ) from exc
            if retry and not answered:
                raise _BrokeOffEarly from exc
            raise BackendError(
                f"model server at {self.base_url} broke off the reply: {exc!r}"
            ) from exc

    async def _open(self, stack: AsyncExitStack, url: str, body: dict[str, Any]) -> httpx.Response:
        """POST and wait for the response head. A pooled keep-alive connection that the server
        closed meanwhile fails before any answer; that is retried once on a fresh one."""
        client = self._http()
        try:
            return await stack.enter_async_context(client.stream("POST", url, json=body))
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            return await stack.enter_async_context(client.stream("POST", url, json=body))

    def _parse(self, raw: bytes, images: bool) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BackendError(
                f"model server at {self.base_url} sent invalid JSON: {raw[:200]!r}"
            ) from exc
        if not isinstance(obj, dict):
            raise BackendError(f"model server at {self.base_url} sent {raw[:200]!r}")
        if obj.get("error"):
            # An error reported inside the stream (vLLM and others do this).
            raise self._http_error(None, raw, images)
        return obj

    def _http_error(self, status: int | None, raw: bytes, images: bool) -> BackendError:
        message = error_message(raw)
        client_error = status is None or 400 <= status < 500
        if images and client_error and (status == 400 or _mentions_images(message)):
            return ImagesRejected(f"{self.name} refused the images: {message}")
        where = f"HTTP {status}" if status is not None else "an error"
        if status in (408, 504):
            return BackendTimeout(f"model server at {self.base_url} returned {where}: {message}")
        return BackendError(f"model server at {self.base_url} returned {where}: {message}")

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent; cancelling it is safe (connections are
        dropped)."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def _sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
    buf: list[str] = []
    async for line in lines:
        if line == "":
            if buf:
                yield "\n".join(buf)
                buf = []
        elif line.startswith("data:"):
            value = line[5:]
            buf.append(value[1:] if value.startswith(" ") else value)
        # comments (":"), "event:", "id:", "retry:" carry nothing we use
    if buf:
        yield "\n".join(buf)


class _BrokeOffEarly(Exception):
    """The stream broke off before any text (internal: the request is tried once more)."""
