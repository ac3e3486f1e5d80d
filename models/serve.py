"""``seetalk models serve``: this machine's models, for other seetalk instances, over the
OpenAI APIs that vLLM, llama.cpp's server and OpenAI speak.

- ``POST /v1/audio/transcriptions``: multipart ``file`` (any audio FFmpeg reads; WAV is
  read directly), ``language``, ``prompt``, ``response_format`` (``json``, ``text``,
  ``verbose_json``) -> whisper (``--asr``);
- ``POST /v1/audio/speech``: JSON ``input``, ``response_format`` (``pcm``: 24 kHz mono s16le,
  streamed clause by clause as each is synthesized; ``wav``) -> piper (``--voice``);
- ``POST /v1/chat/completions``: OpenAI chat messages (images as data URLs), streamed as
  server-sent events or whole -> the in-process llama.cpp model (``--llm``, ``--mmproj``).
  ``tools`` (function tools), ``tool_choice`` and ``parallel_tool_calls`` as OpenAI's: a
  required or named call is written under a grammar built from the tools' JSON Schemas
  (llm/tools.py), so its arguments always parse, and comes back as ``tool_calls`` (streamed
  as ``delta.tool_calls`` pieces, ``finish_reason: "tool_calls"``); with ``auto`` the small
  model answers in words. Assistant ``tool_calls`` and ``tool`` messages are accepted in the
  history;
- ``GET /v1/models``: what is served; ``GET /healthz``: open, for probes.

``model`` and ``voice`` fields are accepted and ignored: each role has one model. With an
API key every ``/v1`` route needs it as a bearer token. Each model runs on its own
single-thread executor (the language model on its backend's), never on the event loop, so
requests to one model queue behind each other and never behind another model's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import email.message
import hmac
import io
import json
import logging
import re
import secrets
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from llm.backend import ChatBackend, ChatMessage, GenerationSettings, Role, ToolCall
from llm.tools import CHOICES, ToolCallDelta, ToolSpec, ToolUse, tool_stream
from seetalk.config import ModelConfig
from seetalk.errors import (
    BackendTimeout,
    BadAudio,
    ConfigError,
    ImagesRejected,
    SeetalkError,
)
from voice.asr import SAMPLE_RATE, Transcriber
from voice.audio import float_to_s16, load_audio_file, resample, s16_interleaved_to_mono_float
from voice.tts import ClauseSplitter, Synthesizer, synthesize_at

log = logging.getLogger(__name__)

ROLES = ("asr", "tts", "llm")
SPEECH_RATE = 24_000  # the OpenAI speech API's pcm
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # as OpenAI's transcription API
MAX_JSON_BYTES = 8 * 1024 * 1024  # chat requests carry images
MAX_SPEECH_CHARS = 4096  # as OpenAI's speech API
MAX_TOOLS = 64  # as the Realtime API's session.tools (conversation/tool_schema.py)
MAX_TOOL_SCHEMA_BYTES = 32 * 1024
MAX_TOOL_DESCRIPTION_CHARS = 4096
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class ServedModels:
    """The models one ``models serve`` process holds, each with its own executor."""

    transcriber: Transcriber | None
    synthesizer: Synthesizer | None
    backend: ChatBackend | None
    names: dict[str, str]
    asr_executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asr")
    )
    tts_executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tts")
    )

    @classmethod
    def load(cls, cfg: ModelConfig, roles: Iterable[str] = ROLES, *, warm: bool = True):
        """Resolve (and with ``warm`` load) the models of ``roles``. Synchronous and slow;
        raises :class:`~seetalk.errors.ModelNotFound` naming what to install."""
        from llm.factory import make_backend
        from models.registry import resolve_asr, resolve_llm, resolve_voice

        roles = set(roles)
        unknown = roles - set(ROLES)
        if unknown or not roles:
            raise ConfigError(f"roles must be some of {', '.join(ROLES)}", param="roles")
        names: dict[str, str] = {}
        transcriber = synthesizer = backend = None
        if "asr" in roles:
            transcriber = Transcriber(resolve_asr(cfg), threads=cfg.asr_threads)
            names["asr"] = f"whisper-{cfg.asr}" if cfg.asr in ("base", "tiny.en") else cfg.asr
        if "tts" in roles:
            onnx, config = resolve_voice(cfg)
            synthesizer = Synthesizer(onnx, config)
            names["tts"] = f"piper-{onnx.stem}"
        if "llm" in roles:
            backend = make_backend(cfg, resolve_llm)
            names["llm"] = backend.name
        served = cls(transcriber, synthesizer, backend, names)
        if warm:
            for load in (
                getattr(transcriber, "load", None),
                getattr(synthesizer, "load", None),
                getattr(backend, "warmup", None),
            ):
                if load is not None:
                    load()
        return served

    async def aclose(self) -> None:
        if self.backend is not None:
            await self.backend.aclose()
        for ex in (self.asr_executor, self.tts_executor):
            ex.shutdown(wait=False, cancel_futures=True)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


def _from_seetalk(exc: SeetalkError) -> _HttpError:
    if isinstance(exc, ImagesRejected):
        return _HttpError(400, exc.message, code=exc.code)
    if isinstance(exc, BackendTimeout):
        return _HttpError(504, exc.message, code=exc.code)
    if exc.type == "invalid_request_error":
        return _HttpError(400, exc.message, code=exc.code, param=exc.param)
    return _HttpError(500, exc.message, code=exc.code)


async def _read_body(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise _HttpError(413, f"request body over {limit} bytes", code="too_large")
    parts: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _HttpError(413, f"request body over {limit} bytes", code="too_large")
        parts.append(chunk)
    return b"".join(parts)


# --- request parsing: pure ------------------------------------------------------------------


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> dict[str, FormPart]:
    """The parts of a ``multipart/form-data`` body, by name (the last of a repeated name)."""
    m = re.search(r'boundary="?([^";,]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or m is None:
        raise _HttpError(400, "expected multipart/form-data with a boundary", code="bad_form")
    delimiter = b"\r\n--" + m.group(1).encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    out: dict[str, FormPart] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise _HttpError(400, "malformed multipart part", code="bad_form")
        headers = email.message.Message()
        for line in head.decode("utf-8", "replace").split("\r\n")[1:]:
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip()] = value.strip()
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = headers.get_param("filename", header="content-disposition")
        out[name] = FormPart(name, filename if isinstance(filename, str) else None, data)
    return out


def decode_audio(data: bytes) -> np.ndarray:
    """Any audio file's bytes as mono float32 at 16 kHz: 16-bit PCM WAV directly, anything
    else through FFmpeg. Raises :class:`BadAudio`. Synchronous: run it off the loop."""
    if not data:
        raise BadAudio("the audio file is empty")
    if data[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(data)) as w:
                if w.getsampwidth() == 2 and w.getcomptype() == "NONE":
                    frames = np.frombuffer(w.readframes(w.getnframes()), "<i2")
                    mono = s16_interleaved_to_mono_float(frames, w.getnchannels())
                    return resample(mono, w.getframerate(), SAMPLE_RATE)
        except (wave.Error, EOFError):
            pass  # FFmpeg may still read it
    with tempfile.NamedTemporaryFile(suffix=".audio") as f:
        f.write(data)
        f.flush()
        samples, rate = load_audio_file(f.name)
    return resample(samples, rate, SAMPLE_RATE)


_ROLE_OF: dict[Any, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def chat_messages(raw: Any) -> list[ChatMessage]:
    """OpenAI chat messages as :class:`ChatMessage` (images: JPEG/PNG data URLs)."""
    if not isinstance(raw, list) or not raw:
        raise _HttpError(400, "messages must be a non-empty list", code="bad_messages")
    out: list[ChatMessage] = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in _ROLE_OF:
            raise _HttpError(
                400, f"messages[{i}].role {role!r} is not supported", code="bad_messages"
            )
        content = m.get("content")
        texts: list[str] = []
        images: list[bytes] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url":
                    images.append(_data_url(part.get("image_url"), i))
                else:
                    raise _HttpError(
                        400, f"messages[{i}] has an unsupported part {kind!r}", code="bad_messages"
                    )
        elif content is not None:
            raise _HttpError(400, f"messages[{i}].content is not text", code="bad_messages")
        if images and role != "user":
            raise _HttpError(400, "images belong on user messages only", code="bad_messages")
        calls = _tool_calls(m.get("tool_calls"), i) if role == "assistant" else ()
        call_id = m.get("tool_call_id")
        if role == "tool" and not isinstance(call_id, str):
            raise _HttpError(
                400, f"messages[{i}] (role tool) needs a tool_call_id", code="bad_messages"
            )
        out.append(
            ChatMessage(
                _ROLE_OF[role],
                "\n".join(texts),
                tuple(images),
                tool_calls=calls,
                tool_call_id=call_id if role == "tool" else None,
            )
        )
    return out


def _tool_calls(raw: Any, i: int) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls`` (OpenAI shape)."""
    if raw is None:
        return ()
    bad = _HttpError(
        400,
        f"messages[{i}].tool_calls must be a list of "
        '{"id", "type": "function", "function": {"name", "arguments"}}',
        code="bad_messages",
    )
    if not isinstance(raw, list):
        raise bad
    calls = []
    for c in raw:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(c.get("id"), str):
            raise bad
        name, arguments = fn.get("name"), fn.get("arguments", "")
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise bad
        calls.append(ToolCall(c["id"], name, arguments))
    return tuple(calls)


def tool_use(body: dict[str, Any]) -> ToolUse | None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of a chat request (OpenAI's
    shapes), checked: function tools only, named 1-64 letters, digits, ``_`` or ``-``,
    parameters a valid JSON Schema of an object; a named choice names a declared tool."""
    raw, choice_raw = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise _bad_tools("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if raw is None or raw == []:
        if choice_raw not in (None, "none", "auto"):
            raise _bad_tools("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise _bad_tools(f"tools must be a list of at most {MAX_TOOLS} function tools", "tools")
    specs = [_tool_spec(t, i) for i, t in enumerate(raw)]
    names = [t.name for t in specs]
    if len(set(names)) != len(names):
        raise _bad_tools("two tools share a name", "tools")
    choice: Any = "auto" if choice_raw is None else choice_raw
    if isinstance(choice, dict):
        fn = choice.get("function")
        choice = (
            fn.get("name") if choice.get("type") == "function" and isinstance(fn, dict) else None
        )
        if choice not in names:
            raise _bad_tools("tool_choice must name one of the tools", "tool_choice")
    elif choice not in CHOICES:
        raise _bad_tools(f"tool_choice must be one of {list(CHOICES)} or a function", "tool_choice")
    return ToolUse(tuple(specs), choice, parallel)


def _tool_spec(t: Any, i: int) -> ToolSpec:
    fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
    if not isinstance(fn, dict):
        raise _bad_tools(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}', "tools")
    name, description = fn.get("name"), fn.get("description") or ""
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise _bad_tools(f"tools[{i}].function.name must be 1-64 letters, digits, _ or -", "tools")
    if not isinstance(description, str) or len(description) > MAX_TOOL_DESCRIPTION_CHARS:
        raise _bad_tools(f"tools[{i}].function.description is too long or not text", "tools")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    where = f"tools[{i}].function.parameters"
    if (
        not isinstance(params, dict)
        or params.get("type", "object") != "object"
        or len(json.dumps(params)) > MAX_TOOL_SCHEMA_BYTES
    ):
        raise _bad_tools(f"{where} must be a JSON Schema of an object (at most 32 KB)", "tools")
    import jsonschema  # imported when a tool is declared

    try:
        jsonschema.Draft202012Validator.check_schema(params)
    except jsonschema.SchemaError as exc:
        raise _bad_tools(f"{where} is not a valid JSON Schema: {exc.message}", "tools") from None
    return ToolSpec(name, description, params)


def _bad_tools(message: str, param: str) -> _HttpError:
    return _HttpError(400, message, code="bad_tools", param=param)


class _Calls:
    """The calls of one completion, as OpenAI writes them: an id, type and name with each
    call's first piece, then its arguments in pieces."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def piece(self, d: ToolCallDelta) -> dict[str, Any]:
        fn: dict[str, Any] = {"arguments": d.arguments}
        out: dict[str, Any] = {"index": d.index, "function": fn}
        call = self.calls.get(d.index)
        if call is None:
            call_id = d.call_id or f"call_{secrets.token_hex(12)}"
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": d.name or "", "arguments": ""},
            }
            self.calls[d.index] = call
            out.update(id=call_id, type="function")
            fn["name"] = d.name or ""
        call["function"]["arguments"] += d.arguments
        return out

    def whole(self) -> list[dict[str, Any]]:
        return [self.calls[i] for i in sorted(self.calls)]


def _data_url(value: Any, i: int) -> bytes:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise _HttpError(
            400, f"messages[{i}]: images must be base64 data URLs", code="bad_messages"
        )
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _HttpError(400, f"messages[{i}]: invalid base64 image", code="bad_messages") from exc


def generation_settings(body: dict[str, Any]) -> GenerationSettings:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    temperature = body.get("temperature", 0.7)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not isinstance(max_tokens, int) or not isinstance(temperature, int | float):
        raise _HttpError(400, "max_tokens and temperature must be numbers", code="bad_settings")
    if not all(isinstance(s, str) for s in stop):
        raise _HttpError(400, "stop must be a string or a list of strings", code="bad_settings")
    try:
        return GenerationSettings(max_tokens=max_tokens, temperature=float(temperature), stop=stop)
    except ConfigError as exc:
        raise _HttpError(400, exc.message, code="bad_settings", param=exc.param) from exc


# --- the app: glue --------------------------------------------------------------------------


def create_models_app(models: ServedModels, *, api_key: str | None = None) -> FastAPI:
    """The HTTP app over ``models`` (already loaded). Closing it (lifespan end) closes them."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await models.aclose()

    app = FastAPI(title="seetalk models", docs_url=None, redoc_url=None, lifespan=lifespan)
    Handler = Callable[[Request], Awaitable[Response]]

    def route(path: str, role: str | None, method: str = "POST") -> Callable[[Handler], Handler]:
        def wrap(handler: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                if api_key is not None and not _authorized(request, api_key):
                    return _error(401, "missing or wrong API key", "unauthorized")
                if role is not None and models.names.get(role) is None:
                    return _error(404, f"this server does not serve {role}", "role_not_served")
                try:
                    return await handler(request)
                except _HttpError as exc:
                    return _error(exc.status, exc.message, exc.code, exc.param)
                except SeetalkError as exc:
                    err = _from_seetalk(exc)
                    log.warning("%s: %s", path, exc.message)
                    return _error(err.status, err.message, err.code, err.param)

            app.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
            return handler

        return wrap

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ready", "roles": sorted(models.names)}

    @route("/v1/models", None, "GET")
    async def list_models(_request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "owned_by": "seetalk", "seetalk_role": role}
            for role, name in models.names.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    @route("/v1/audio/transcriptions", "asr")
    async def transcriptions(request: Request) -> Response:
        assert models.transcriber is not None
        form = parse_multipart(
            request.headers.get("content-type", ""), await _read_body(request, MAX_UPLOAD_BYTES)
        )
        if "file" not in form:
            raise _HttpError(400, "no file part", code="bad_form", param="file")
        fmt = _field(form, "response_format") or "json"
        if fmt not in ("json", "text", "verbose_json"):
            raise _HttpError(
                400,
                f"response_format {fmt!r} is not supported: json, text or verbose_json",
                code="bad_format",
                param="response_format",
            )
        audio = await asyncio.to_thread(decode_audio, form["file"].data)
        language = _field(form, "language") or None
        prompt = _field(form, "prompt") or None
        loop = asyncio.get_running_loop()
        transcriber = models.transcriber

        def run() -> str:
            return transcriber.transcribe(audio, prompt=prompt, language=language)

        try:
            text = await loop.run_in_executor(models.asr_executor, run)
        except ValueError as exc:  # faster-whisper: an unknown language code
            raise _HttpError(400, str(exc), code="bad_language", param="language") from exc
        if fmt == "text":
            return PlainTextResponse(text + "\n")
        body: dict[str, Any] = {"text": text}
        if fmt == "verbose_json":
            body |= {"language": language or transcriber.language, "duration": audio.size / 16e3}
        return JSONResponse(body)

    @route("/v1/audio/speech", "tts")
    async def speech(request: Request) -> Response:
        synth = models.synthesizer
        assert synth is not None
        body = _json_object(await _read_body(request, MAX_JSON_BYTES))
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise _HttpError(400, "input must be non-empty text", code="bad_input", param="input")
        if len(text) > MAX_SPEECH_CHARS:
            raise _HttpError(
                400, f"input over {MAX_SPEECH_CHARS} characters", code="bad_input", param="input"
            )
        fmt = body.get("response_format", "pcm")
        if fmt not in ("pcm", "wav"):
            raise _HttpError(
                400,
                f"response_format {fmt!r} is not supported: pcm or wav",
                code="bad_format",
                param="response_format",
            )
        splitter = ClauseSplitter()
        clauses = splitter.push(text) + splitter.flush() or [text]
        loop = asyncio.get_running_loop()

        async def clause_audio(clause: str) -> bytes:
            audio = await loop.run_in_executor(
                models.tts_executor, synthesize_at, synth, clause, SPEECH_RATE
            )
            return float_to_s16(audio).astype("<i2").tobytes()

        if fmt == "wav":
            pcm = b"".join([await clause_audio(c) for c in clauses])
            return Response(_wav(pcm), media_type="audio/wav")
        # The first clause before the head, so a failing voice is an HTTP error, not a cut.
        first = await clause_audio(clauses[0])

        async def rest() -> AsyncIterator[bytes]:
            yield first
            for clause in clauses[1:]:
                yield await clause_audio(clause)

        return StreamingResponse(rest(), media_type="audio/pcm")

    @route("/v1/chat/completions", "llm")
    async def chat(request: Request) -> Response:
        backend = models.backend
        assert backend is not None
        body = _json_object(await _read_body(request, MAX_JSON_BYTES))
        messages = chat_messages(body.get("messages"))
        settings = generation_settings(body)
        tools = tool_use(body)
        ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        model = models.names["llm"]
        deltas = tool_stream(backend, messages, settings, tools)
        calls = _Calls()
        if not body.get("stream"):
            texts: list[str] = []
            try:
                async for d in deltas:
                    if isinstance(d, str):
                        texts.append(d)
                    else:
                        calls.piece(d)
            finally:
                await _aclose(deltas)
            message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
            if calls.calls:
                message.update(content=message["content"] or None, tool_calls=calls.whole())
            finish = "tool_calls" if calls.calls else "stop"
            return JSONResponse(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                }
            )
        it = aiter(deltas)
        try:
            # The first token before the head, so a refusal is an HTTP error, not a cut.
            first: str | ToolCallDelta | None = await anext(it)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _aclose(deltas)
            raise

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            obj = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(obj)}\n\n"

        def delta_of(d: str | ToolCallDelta) -> dict[str, Any]:
            return {"content": d} if isinstance(d, str) else {"tool_calls": [calls.piece(d)]}

        async def events() -> AsyncIterator[str]:
            try:
                if first is None or isinstance(first, str):
                    yield chunk({"role": "assistant", "content": first or ""}, None)
                else:
                    yield chunk({"role": "assistant", "content": None, **delta_of(first)}, None)
                if first is not None:
                    async for delta in it:
                        yield chunk(delta_of(delta), None)
                yield chunk({}, "tool_calls" if calls.calls else "stop")
            except SeetalkError as exc:  # after the head: an error inside the stream
                err = {"message": exc.message, "type": exc.type, "code": exc.code}
                yield f"data: {json.dumps({'error': err})}\n\n"
            finally:
                await _aclose(deltas)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _authorized(request: Request, api_key: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), api_key)


def _field(form: dict[str, FormPart], name: str) -> str:
    part = form.get(name)
    return part.data.decode("utf-8", "replace").strip() if part is not None else ""


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise _HttpError(400, "the body is not JSON", code="bad_json") from exc
    if not isinstance(obj, dict):
        raise _HttpError(400, "the body must be a JSON object", code="bad_json")
    return obj


def _wav(pcm: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SPEECH_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def serve_models(
    cfg: ModelConfig,
    *,
    roles: Iterable[str] = ROLES,
    host: str = "127.0.0.1",
    port: int = 9000,
    api_key: str | None = None,
    log_level: str = "info",
) -> None:
    """Load the models of ``roles``, then serve them until interrupted (the port opens
    once every model is loaded, so a probe that connects finds them ready)."""
    import uvicorn

    models = ServedModels.load(cfg, roles)
    log.info("serving %s on http://%s:%s/v1", models.names, host, port)
    uvicorn.run(
        create_models_app(models, api_key=api_key), host=host, port=port, log_level=log_level
    )


__all__ = [
    "ROLES",
    "FormPart",
    "ServedModels",
    "create_models_app",
    "decode_audio",
    "parse_multipart",
    "serve_models",
]
