"""OpenAIChatBackend against scripted raw-asyncio HTTP servers and a real llama_cpp.server."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from llm.backend import ChatMessage, GenerationSettings
from llm.openai_compat import OpenAIChatBackend
from seetalk.errors import BackendError, BackendTimeout, ImagesRejected

JPEG_A = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00first-frame\xff\xd9"
JPEG_B = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00second-frame\xff\xd9"
FRANCE = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What is the capital of France?"),
]
WITH_IMAGES = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "What do you see?", images=(JPEG_A, JPEG_B)),
]
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def delta(text: str) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}}]})


def http_response(status: int, body: Any) -> bytes:
    raw = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    return head.encode() + raw


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeServer:
    url: str
    requests: list[Request] = field(default_factory=list)
    disconnected_at: list[float] = field(default_factory=list)


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[FakeServer]:
    """A one-request-per-connection HTTP/1.1 server on a raw asyncio socket."""
    server_state = FakeServer(url="")

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            first, *lines = head.split("\r\n")
            method, path, _ = first.split(" ", 2)
            headers = {}
            for line in lines:
                if line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, json.loads(raw) if raw else None)
            server_state.requests.append(request)
            await handler(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server_state.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server_state
    finally:
        server.close()
        await server.wait_closed()


async def collect(backend: OpenAIChatBackend, messages: list[ChatMessage], **kw: Any) -> list[str]:
    return [d async for d in backend.stream(messages, GenerationSettings(**kw))]


# --- request format and streaming -------------------------------------------------------------


async def test_images_go_as_openai_content_parts() -> None:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        w.write(b": keep-alive comment\n\n" + delta("A red ") + delta("cup.") + b"data: [DONE]\n\n")
        await w.drain()

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url, api_key="sk-test", model="vlm", timeout_s=5)
        deltas = await collect(backend, WITH_IMAGES, max_tokens=50, temperature=0.2, stop=("\n",))
        await backend.aclose()

    assert deltas == ["A red ", "cup."]
    (req,) = srv.requests
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == "Bearer sk-test"
    body = req.body
    assert body["model"] == "vlm" and body["stream"] is True
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["stop"] == ["\n"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    user = body["messages"][1]
    assert user["role"] == "user"
    images = [p for p in user["content"] if p["type"] == "image_url"]
    texts = [p for p in user["content"] if p["type"] == "text"]
    assert texts == [{"type": "text", "text": "What do you see?"}]
    prefix = "data:image/jpeg;base64,"
    urls = [p["image_url"]["url"] for p in images]
    assert all(u.startswith(prefix) for u in urls)
    assert [base64.b64decode(u[len(prefix) :], validate=True) for u in urls] == [JPEG_A, JPEG_B]


async def test_text_only_messages_are_plain_strings_and_base_url_gets_v1() -> None:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + delta("Paris.") + b"data: [DONE]\n\n")
        await w.drain()

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url.removesuffix("/v1"), timeout_s=5)
        assert await collect(backend, FRANCE) == ["Paris."]
        await backend.aclose()
    (req,) = srv.requests
    assert req.path == "/v1/chat/completions"
    assert "authorization" not in req.headers and "stop" not in req.body
    assert req.body["messages"][1] == {"role": "user", "content": FRANCE[1].text}


# --- error mapping ----------------------------------------------------------------------------


def answering(status: int, body: Any) -> Handler:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(http_response(status, body))
        await w.drain()

    return handler


async def test_400_about_images_is_images_rejected() -> None:
    body = {"error": {"message": "image input is not supported", "type": "invalid_request_error"}}
    async with fake_server(answering(400, body)) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=5)
        with pytest.raises(ImagesRejected, match="image input is not supported"):
            await collect(backend, WITH_IMAGES)
        # The same answer to a text-only request is no reason to drop images: a plain error.
        with pytest.raises(BackendError, match="HTTP 400") as info:
            await collect(backend, FRANCE)
        assert not isinstance(info.value, ImagesRejected)
        await backend.aclose()


async def test_422_mentioning_image_url_is_images_rejected() -> None:
    body = {"detail": [{"loc": ["body", "messages", 1, "content"], "msg": "image_url not allowed"}]}
    async with fake_server(answering(422, body)) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=5)
        with pytest.raises(ImagesRejected):
            await collect(backend, WITH_IMAGES)
        await backend.aclose()


async def test_other_http_errors_carry_status_and_message() -> None:
    async with fake_server(answering(500, {"error": {"message": "CUDA out of memory"}})) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=5)
        with pytest.raises(BackendError, match="HTTP 500: CUDA out of memory") as info:
            await collect(backend, WITH_IMAGES)
        assert not isinstance(info.value, ImagesRejected | BackendTimeout)
        await backend.aclose()


async def test_error_inside_the_stream_is_a_backend_error() -> None:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + delta("Hal") + sse({"error": {"message": "engine died"}}))
        await w.drain()

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=5)
        got: list[str] = []
        with pytest.raises(BackendError, match="engine died"):
            async for d in backend.stream(FRANCE, GenerationSettings()):
                got.append(d)
        assert got == ["Hal"]
        await backend.aclose()


async def test_server_down_is_a_quick_backend_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port now
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", timeout_s=10)
    with pytest.raises(BackendError, match="unreachable") as info:
        await collect(backend, FRANCE)
    assert not isinstance(info.value, BackendTimeout)  # refused at once, not waited out
    await backend.aclose()


async def test_server_that_never_answers_times_out() -> None:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=0.5)
        t0 = time.perf_counter()
        with pytest.raises(BackendTimeout):
            await collect(backend, FRANCE)
        assert time.perf_counter() - t0 >= 0.4  # not before its time (no upper bound here)
        await backend.aclose()


async def test_stall_between_tokens_times_out() -> None:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + delta("The "))
        await w.drain()
        await reader.read()

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=0.5)
        got: list[str] = []
        with pytest.raises(BackendTimeout):
            async for d in backend.stream(FRANCE, GenerationSettings()):
                got.append(d)
        assert got == ["The "]
        await backend.aclose()


async def test_stream_that_breaks_off_is_an_error() -> None:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        if req.body["max_tokens"] == 2:
            w.write(delta("Half"))
        await w.drain()  # then the connection closes without [DONE]

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=5)
        with pytest.raises(ImagesRejected, match="without an answer"):
            await collect(backend, WITH_IMAGES, max_tokens=1)
        with pytest.raises(BackendError, match="before the reply was complete") as info:
            await collect(backend, WITH_IMAGES, max_tokens=2)
        assert not isinstance(info.value, ImagesRejected)
        with pytest.raises(BackendError, match="before the reply was complete"):
            await collect(backend, FRANCE, max_tokens=1)
        await backend.aclose()


async def test_finish_reason_without_done_and_whole_json_answers_are_accepted() -> None:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if req.body["max_tokens"] == 1:
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            w.write(SSE_HEAD + delta("Paris.") + sse(end))
        else:  # a server that ignores "stream": true
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}}]}
            w.write(http_response(200, answer))
        await w.drain()

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=5)
        assert await collect(backend, FRANCE, max_tokens=1) == ["Paris."]
        assert await collect(backend, FRANCE, max_tokens=2) == ["Hi."]
        await backend.aclose()


# --- cancellation closes the response ----------------------------------------------------------


def one_delta_then_wait(srv_box: list[FakeServer]) -> Handler:
    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + delta("Once "))
        await w.drain()
        await reader.read()  # EOF: the client closed the connection
        srv_box[0].disconnected_at.append(time.perf_counter())

    return handler


async def until_disconnected(srv: FakeServer) -> None:
    """Returns when the fake server saw the client close the connection. The guard (10 s) is
    below the backend's 30 s timeout, so only the close under test can end the wait; how
    fast the close is lands in bench/timing.py, not here."""
    for _ in range(1000):
        if srv.disconnected_at:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the client did not close the connection")


async def test_aclose_of_the_stream_closes_the_connection() -> None:
    box: list[FakeServer] = []
    async with fake_server(one_delta_then_wait(box)) as srv:
        box.append(srv)
        backend = OpenAIChatBackend(srv.url, timeout_s=30)
        gen = backend.stream(FRANCE, GenerationSettings())
        assert await anext(gen) == "Once "
        await gen.aclose()
        await until_disconnected(srv)
        await backend.aclose()


async def test_cancelling_the_consumer_closes_the_connection() -> None:
    box: list[FakeServer] = []
    async with fake_server(one_delta_then_wait(box)) as srv:
        box.append(srv)
        backend = OpenAIChatBackend(srv.url, timeout_s=30)
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in backend.stream(FRANCE, GenerationSettings()):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until_disconnected(srv)
        await backend.aclose()


# --- a real OpenAI-compatible server -----------------------------------------------------------


@pytest.mark.models
async def test_real_llama_server_streams(llama_server_url: str) -> None:
    # What a 135M model says differs by machine and build: assert the pipeline, not the fact.
    backend = OpenAIChatBackend(llama_server_url, model="smollm2", timeout_s=30)
    deltas: list[str] = []
    async for d in backend.stream(FRANCE, GenerationSettings(temperature=0.0, max_tokens=16)):
        deltas.append(d)
    await backend.aclose()
    assert deltas and all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas).strip()
    assert len(deltas) <= 16  # streamed token by token, bounded by max_tokens


@pytest.mark.models
async def test_real_llama_server_with_a_text_only_model_rejects_images(
    llama_server_url: str,
) -> None:
    # llama.cpp's server answers 200, then its chat template fails on the image parts.
    backend = OpenAIChatBackend(llama_server_url, timeout_s=30)
    with pytest.raises(ImagesRejected):
        await collect(backend, WITH_IMAGES, max_tokens=10)
    # and the text-only retry works
    assert await collect(backend, FRANCE, max_tokens=10)
    await backend.aclose()


@pytest.mark.models
async def test_images_reach_a_real_server_in_the_openai_message_format(
    llama_server_url: str,
) -> None:
    """A byte-level proxy in front of the real llama_cpp.server records what the backend
    sends: the images travel as OpenAI ``image_url`` parts with base64 JPEG data URLs."""
    from urllib.parse import urlsplit

    upstream = urlsplit(llama_server_url)
    sent = bytearray()

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    sent.extend(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(upstream.hostname, upstream.port)
        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", timeout_s=30)
    try:
        with pytest.raises(ImagesRejected):  # a text-only model, but the request is what counts
            await collect(backend, WITH_IMAGES, max_tokens=5)
    finally:
        await backend.aclose()
        proxy.close()
        await proxy.wait_closed()
    head, _, body = bytes(sent).partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions")
    request = json.loads(body[: int(re.search(rb"(?i)content-length: (\d+)", head).group(1))])
    user = next(m for m in request["messages"] if m["role"] == "user")
    parts = user["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert [p for p in parts if p["type"] == "text"] == [
        {"type": "text", "text": "What do you see?"}
    ]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in images] == [JPEG_A, JPEG_B]
    assert all(u.startswith("data:image/jpeg;base64,") for u in images)
    assert request["stream"] is True


async def test_a_stream_cut_before_any_text_is_asked_once_more() -> None:
    """llama.cpp's server cuts the next stream right after a request it failed on; a
    text-only request that broke off before any text is sent once more, then given up."""
    calls = []

    async def handler(req: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        calls.append(req.body["max_tokens"])
        w.write(SSE_HEAD)
        if req.body["max_tokens"] == 5 and calls.count(5) == 2:
            w.write(delta("Paris.") + b"data: [DONE]\n\n")
        await w.drain()  # otherwise the connection closes with no text

    async with fake_server(handler) as srv:
        backend = OpenAIChatBackend(srv.url, timeout_s=5)
        assert await collect(backend, FRANCE, max_tokens=5) == ["Paris."]
        with pytest.raises(BackendError, match="before the reply was complete"):
            await collect(backend, FRANCE, max_tokens=6)  # broken twice: an error
        with pytest.raises(ImagesRejected):
            await collect(backend, WITH_IMAGES, max_tokens=7)  # images: never retried
        await backend.aclose()
    assert calls == [5, 5, 6, 6, 7]
