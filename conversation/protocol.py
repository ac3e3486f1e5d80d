"""Client events of the OpenAI Realtime protocol: the one parser every transport calls.

:func:`parse_client_event` takes one message (WebSocket or data channel, text or bytes) and
returns a small frozen dataclass per event type, or raises :class:`InvalidEvent` whose
``code``, ``param`` and ``event_id`` go straight into the protocol's ``error`` event. No I/O,
no clock. Transports hand the typed event to ``session.handle_client_event`` (the handlers
are :mod:`conversation.client_events`); only what is really theirs (decoding appended audio
in the client's format on the WebSocket) they do themselves.

Values are checked here, once: sizes, types, ranges (the ``seetalk`` extension against the
tables of :mod:`seetalk.config`), and every image's header (pixels, sides, bytes) before
anything decodes it.

Every client event of ``openai.types.realtime.RealtimeClientEventParam`` is covered, plus
one extension, ``seetalk.input_image.append`` (a camera frame). Fields the protocol defines
but seetalk does not use (``tracing``, ``transcription``, ``speed``, ``tool_choice``, ...)
are accepted and ignored (``noise_reduction`` is read: ``far_field`` turns server-side echo
cancellation on, see docs/echo.md); fields it does not define are rejected with
``unknown_parameter``, as the hosted API does. docs/realtime.md lists every code.
:meth:`ClientEvent.to_dict` writes an event back in its normalized protocol shape (logs,
tests); no transport or session reads it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from conversation.tool_schema import (
    FunctionCallItem,
    FunctionCallOutputItem,
    McpApprovalResponseItem,
    ToolOptions,
    parse_function_item,
    parse_mcp_approval_response,
    parse_tool_options,
)
from seetalk.config import (
    MAX_INSTRUCTIONS_CHARS,
    SESSION_LIMITS,
    TURN_LIMITS,
    Limit,
    check_setting,
)
from seetalk.errors import BadImage, ConfigError, InvalidEvent
from vision.images import check_image_header

Json = dict[str, Any]

MAX_ID_CHARS: Final = 256
MAX_TEXT_CHARS: Final = MAX_INSTRUCTIONS_CHARS


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
"""A ``session.update`` field that was not given (``None`` means "turn it off")."""


# --- audio formats ---

PCM_RATE = 24_000
G711_RATE = 8_000


@dataclass(frozen=True)
class AudioFormat:
    """One of the protocol's formats: ``audio/pcm`` (24 kHz), ``audio/pcmu``, ``audio/pcma``."""

    type: str = "audio/pcm"

    @property
    def rate(self) -> int:
        return PCM_RATE if self.type == "audio/pcm" else G711_RATE

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.type == "audio/pcm" else 1

    def to_dict(self) -> dict[str, object]:
        if self.type == "audio/pcm":
            return {"type": "audio/pcm", "rate": PCM_RATE}
        return {"type": self.type}


PCM16 = AudioFormat("audio/pcm")
PCMU = AudioFormat("audio/pcmu")
PCMA = AudioFormat("audio/pcma")
FORMATS = {f.type: f for f in (PCM16, PCMU, PCMA)}


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    """Base class; ``type`` is the protocol's event type, ``event_id`` the client's id."""

    type = ""
    event_id: str | None = field(default=None, kw_only=True)

    def to_dict(self) -> Json:
        """The event as a normalized protocol dict (parsing it again gives an equal event)."""
        d: Json = {"type": self.type}
        if self.event_id is not None:
            d["event_id"] = self.event_id
        d.update(self._fields())
        return d

    def _fields(self) -> Json:
        return {}


@dataclass(frozen=True)
class TurnDetection:
    """``audio.input.turn_detection``: ``server_vad`` (or ``semantic_vad``, approximated)."""

    type: str = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: str | None = None
    idle_timeout_ms: int | None = None

    def to_dict(self) -> Json:
        d: Json = {"type": self.type}
        for k in (
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "create_response",
            "interrupt_response",
            "eagerness",
            "idle_timeout_ms",
        ):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    type = "session.update"
    instructions: str | None = None
    voice: str | None = None
    model: str | None = None
    max_output_tokens: int | str | None = None
    output_modalities: tuple[str, ...] | None = None
    input_format: AudioFormat | None = None
    output_format: AudioFormat | None = None
    turn_detection: TurnDetection | None | _Unset = UNSET
    noise_reduction: str | None = None  # audio.input.noise_reduction.type ("far_field" ...)
    # the rest of the protocol (conversation/responses.py, conversation/budget.py)
    kind: str | None = None  # session.type: "realtime" | "transcription"
    transcription: tuple[tuple[str, str], ...] | None = None  # language, prompt (model read)
    speed: float | None = None  # audio.output.speed
    truncation: tuple[str, float] | None = None  # (mode, retention_ratio)
    # the extension, checked: SessionSettings fields, and TurnSettings fields under "turn"
    seetalk: tuple[tuple[str, Any], ...] | None = None
    seetalk_turn: tuple[tuple[str, Any], ...] | None = None
    tool_options: ToolOptions = field(default_factory=ToolOptions)  # conversation/tool_schema

    def _fields(self) -> Json:
        s: Json = {"type": "realtime", **self.tool_options.to_dict()}
        if self.seetalk is not None:
            s["seetalk"] = dict(self.seetalk)
            if self.seetalk_turn is not None:
                s["seetalk"]["turn"] = dict(self.seetalk_turn)
        for k in ("instructions", "model", "max_output_tokens"):
            if getattr(self, k) is not None:
                s[k] = getattr(self, k)
        if self.output_modalities is not None:
            s["output_modalities"] = list(self.output_modalities)
        inp: Json = {}
        out: Json = {}
        if self.input_format is not None:
            inp["format"] = self.input_format.to_dict()
        if not isinstance(self.turn_detection, _Unset):
            td = self.turn_detection
            inp["turn_detection"] = None if td is None else td.to_dict()
        if self.noise_reduction is not None:
            inp["noise_reduction"] = {"type": self.noise_reduction}
        if self.output_format is not None:
            out["format"] = self.output_format.to_dict()
        if self.voice is not None:
            out["voice"] = self.voice
        if self.kind is not None:
            s["type"] = self.kind
        if self.truncation is not None:
            mode, ratio = self.truncation
            s["truncation"] = (
                mode if mode != "retention_ratio" else {"type": mode, "retention_ratio": ratio}
            )
        if self.transcription is not None:
            tr = dict(self.transcription)
            inp["transcription"] = {
                k: tr[f"transcription_{k}"]
                for k in ("language", "prompt")
                if tr[f"transcription_{k}"]
            }
        if self.speed is not None:
            out["speed"] = self.speed
        audio = {k: v for k, v in (("input", inp), ("output", out)) if v}
        if audio:
            s["audio"] = audio
        return {"session": s}


@dataclass(frozen=True)
class InputAudioAppend(ClientEvent):
    """``audio`` is the decoded bytes, in the session's input format (not yet checked)."""

    type = "input_audio_buffer.append"
    audio: bytes = b""

    def _fields(self) -> Json:
        return {"audio": base64.b64encode(self.audio).decode("ascii")}


@dataclass(frozen=True)
class InputAudioCommit(ClientEvent):
    type = "input_audio_buffer.commit"


@dataclass(frozen=True)
class InputAudioClear(ClientEvent):
    type = "input_audio_buffer.clear"


@dataclass(frozen=True)
class OutputAudioClear(ClientEvent):
    type = "output_audio_buffer.clear"


@dataclass(frozen=True)
class ContentPart:
    """One part of a message: ``input_text``/``output_text`` (``text``), ``input_audio``/
    ``output_audio`` (``audio`` bytes, ``transcript``), ``input_image`` (``image_url``)."""

    type: str
    text: str | None = None
    audio: bytes | None = None
    transcript: str | None = None
    image_url: str | None = None
    detail: str | None = None

    def to_dict(self) -> Json:
        d: Json = {"type": self.type}
        for k in ("text", "transcript", "image_url", "detail"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.audio is not None:
            d["audio"] = base64.b64encode(self.audio).decode("ascii")
        return d


@dataclass(frozen=True)
class MessageItem:
    role: str
    content: tuple[ContentPart, ...]
    id: str | None = None
    status: str | None = None

    def to_dict(self) -> Json:
        d: Json = {
            "type": "message",
            "role": self.role,
            "content": [c.to_dict() for c in self.content],
        }
        if self.id is not None:
            d["id"] = self.id
        if self.status is not None:
            d["status"] = self.status
        return d


AnyItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | McpApprovalResponseItem


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    type = "conversation.item.create"
    item: AnyItem = field(default_factory=lambda: MessageItem("user", ()))
    previous_item_id: str | None = None

    def _fields(self) -> Json:
        d: Json = {"item": self.item.to_dict()}
        if self.previous_item_id is not None:
            d["previous_item_id"] = self.previous_item_id
        return d


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    type = "conversation.item.truncate"
    item_id: str = ""
    content_index: int = 0
    audio_end_ms: int = 0

    def _fields(self) -> Json:
        return {
            "item_id": self.item_id,
            "content_index": self.content_index,
            "audio_end_ms": self.audio_end_ms,
        }


@dataclass(frozen=True)
class ItemDelete(ClientEvent):
    type = "conversation.item.delete"
    item_id: str = ""

    def _fields(self) -> Json:
        return {"item_id": self.item_id}


@dataclass(frozen=True)
class ItemRetrieve(ClientEvent):
    type = "conversation.item.retrieve"
    item_id: str = ""

    def _fields(self) -> Json:
        return {"item_id": self.item_id}


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    """``response`` holds the validated, supported response parameters (may be empty)."""

    type = "response.create"
    instructions: str | None = None
    max_output_tokens: int | str | None = None
    output_modalities: tuple[str, ...] | None = None
    conversation: str | None = None
    metadata: tuple[tuple[str, str], ...] | None = None
    input: tuple[AnyItem | str, ...] | None = None  # str: an item_reference id
    tool_options: ToolOptions = field(default_factory=ToolOptions)  # conversation/tool_schema

    def _fields(self) -> Json:
        r: Json = dict(self.tool_options.to_dict())
        for k in ("instructions", "max_output_tokens", "conversation"):
            if getattr(self, k) is not None:
                r[k] = getattr(self, k)
        if self.output_modalities is not None:
            r["output_modalities"] = list(self.output_modalities)
        if self.metadata is not None:
            r["metadata"] = dict(self.metadata)
        if self.input is not None:
            r["input"] = [
                {"type": "item_reference", "id": i} if isinstance(i, str) else i.to_dict()
                for i in self.input
            ]
        return {"response": r} if r else {}


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    type = "response.cancel"
    response_id: str | None = None

    def _fields(self) -> Json:
        return {} if self.response_id is None else {"response_id": self.response_id}


@dataclass(frozen=True)
class ImageAppend(ClientEvent):
    """Extension: one camera frame (JPEG or PNG data URL) into frame selection."""

    type = "seetalk.input_image.append"
    image_url: str = ""
    image: bytes = b""

    def _fields(self) -> Json:
        return {"image_url": self.image_url}


# --- the parser ---------------------------------------------------------------------------


def parse_client_event(raw: str | bytes, *, max_bytes: int) -> ClientEvent:
    """One client message as an event; raises :class:`InvalidEvent` and nothing else."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidEvent(
            f"message of {size} bytes exceeds the limit of {max_bytes} bytes",
            code="message_too_large",
        )
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidEvent(f"message is not valid JSON: {exc}", code="invalid_json") from None
    return parse_client_object(obj)


def parse_client_object(obj: object) -> ClientEvent:
    """An event from an already decoded JSON value (e.g. the initial ``session`` of a WebRTC
    offer); the checks of :func:`parse_client_event` but size and JSON syntax."""
    if not isinstance(obj, dict):
        raise InvalidEvent("an event must be a JSON object", code="invalid_event")
    event_id = obj.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise InvalidEvent("'event_id' must be a string", code="invalid_type", param="event_id")
    r = _Reader(obj, "", event_id)
    type_ = r.string("type")
    parser = _PARSERS.get(type_)
    if parser is None:
        raise InvalidEvent(
            f"unknown event type {type_[:100]!r}",
            code="unknown_event_type",
            param="type",
            event_id=event_id,
        )
    return parser(r)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _Reader:
    """Typed access to one JSON object; errors name the full parameter path."""

    def __init__(self, obj: Json, path: str, event_id: str | None) -> None:
        self.obj = obj
        self.path = path
        self.event_id = event_id

    def fail(self, key: str, message: str, code: str = "invalid_value") -> InvalidEvent:
        return InvalidEvent(message, code=code, param=self.path + key, event_id=self.event_id)

    def keys(self, allowed: set[str], ignored: frozenset[str] = frozenset()) -> None:
        for k in self.obj:
            if k not in allowed and k not in ignored:
                raise self.fail(
                    str(k)[:100],
                    f"unknown parameter {self.path + str(k)[:100]!r}",
                    "unknown_parameter",
                )

    def get(
        self,
        key: str,
        types: type | tuple[type, ...],
        tname: str,
        *,
        required: bool,
        nullable: bool = False,
    ) -> Any:
        if key not in self.obj:
            if required:
                raise self.fail(
                    key,
                    f"missing required parameter {self.path + key!r}",
                    "missing_required_parameter",
                )
            return None
        v = self.obj[key]
        if v is None and nullable:
            return None
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in _as_tuple(types)):
            raise self.fail(
                key, f"{self.path + key!r} must be {tname}, got {_jtype(v)}", "invalid_type"
            )
        return v

    def string(self, key: str, *, required: bool = True, max_chars: int = MAX_ID_CHARS) -> Any:
        v = self.get(key, str, "a string", required=required)
        if v is not None and len(v) > max_chars:
            raise self.fail(key, f"{self.path + key!r} is longer than {max_chars} characters")
        return v

    def integer(self, key: str, lo: int, hi: int, *, required: bool = False) -> Any:
        v = self.get(key, int, "an integer", required=required)
        if v is not None and not lo <= v <= hi:
            raise self.fail(key, f"{self.path + key!r} must be from {lo} to {hi}, got {v}")
        return v

    def boolean(self, key: str) -> Any:
        return self.get(key, bool, "a boolean", required=False)

    def choice(self, key: str, options: tuple[str, ...], *, required: bool = False) -> Any:
        v = self.string(key, required=required)
        if v is not None and v not in options:
            raise self.fail(
                key, f"{self.path + key!r} must be one of {list(options)}, got {v[:100]!r}"
            )
        return v

    def sub(self, key: str, *, required: bool = False, nullable: bool = False) -> _Reader | None:
        v = self.get(key, dict, "an object", required=required, nullable=nullable)
        return None if v is None else _Reader(v, f"{self.path}{key}.", self.event_id)

    def array(self, key: str, *, required: bool = False, max_len: int = 64) -> list[Any] | None:
        v = self.get(key, list, "an array", required=required)
        if v is not None and len(v) > max_len:
            raise self.fail(key, f"{self.path + key!r} has more than {max_len} entries")
        return v

    def b64(self, key: str, *, required: bool = True) -> bytes | None:
        v = self.get(key, str, "a base64 string", required=required)
        if v is None:
            return None
        try:
            return binascii.a2b_base64(v.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise self.fail(
                key, f"{self.path + key!r} is not valid base64", "invalid_base64"
            ) from None


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _jtype(v: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


_BASE = {"type", "event_id"}


def _simple(cls: type[ClientEvent]) -> Any:
    def parse(r: _Reader) -> ClientEvent:
        r.keys(_BASE)
        return cls(event_id=r.event_id)

    return parse


def _item_id_event(cls: type[ItemDelete] | type[ItemRetrieve]) -> Any:
    def parse(r: _Reader) -> ClientEvent:
        r.keys(_BASE | {"item_id"})
        return cls(item_id=r.string("item_id"), event_id=r.event_id)

    return parse


def _parse_append(r: _Reader) -> InputAudioAppend:
    r.keys(_BASE | {"audio"})
    return InputAudioAppend(audio=r.b64("audio") or b"", event_id=r.event_id)


def _parse_truncate(r: _Reader) -> ItemTruncate:
    r.keys(_BASE | {"item_id", "content_index", "audio_end_ms"})
    return ItemTruncate(
        item_id=r.string("item_id"),
        content_index=r.integer("content_index", 0, 1000, required=True),
        audio_end_ms=r.integer("audio_end_ms", 0, 24 * 3_600_000, required=True),
        event_id=r.event_id,
    )


def _parse_cancel(r: _Reader) -> ResponseCancel:
    r.keys(_BASE | {"response_id"})
    return ResponseCancel(response_id=r.string("response_id", required=False), event_id=r.event_id)


_DATA_URL = re.compile(r"data:(image/(?:jpeg|jpg|png));base64,(.*)", re.DOTALL)


def _image(r: _Reader, key: str) -> tuple[str, bytes]:
    url = r.get(key, str, "a string", required=True)
    m = _DATA_URL.fullmatch(url)
    if m is None:
        raise r.fail(
            key,
            f"{r.path + key!r} must be a data URL 'data:image/jpeg;base64,...' "
            "or 'data:image/png;base64,...'",
            "invalid_image",
        )
    try:
        data = binascii.a2b_base64(m.group(2).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise r.fail(key, f"{r.path + key!r} holds invalid base64", "invalid_base64") from None
    if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
        raise r.fail(key, f"{r.path + key!r} is neither a JPEG nor a PNG image", "invalid_image")
    try:
        check_image_header(data)  # pixels, sides and bytes, before anything decodes it
    except BadImage as exc:
        raise r.fail(key, f"{r.path + key!r}: {exc.message}", "invalid_image") from None
    return url, data


_PART_TYPES = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text", "output_audio"),
}


def _parse_part(r: _Reader, role: str) -> ContentPart:
    t = r.choice("type", _PART_TYPES[role], required=True)
    if t in ("input_text", "output_text"):
        r.keys({"type", "text"})
        return ContentPart(t, text=r.string("text", max_chars=MAX_TEXT_CHARS))
    if t == "input_image":
        r.keys({"type", "image_url", "detail"})
        url, _ = _image(r, "image_url")
        return ContentPart(t, image_url=url, detail=r.choice("detail", ("auto", "low", "high")))
    r.keys({"type", "audio", "transcript"})
    audio = r.b64("audio", required=False)
    transcript = r.string("transcript", required=False, max_chars=MAX_TEXT_CHARS)
    if audio is None and transcript is None:
        raise r.fail(
            "audio", f"{t} content needs 'audio' or 'transcript'", "missing_required_parameter"
        )
    return ContentPart(t, audio=audio, transcript=transcript)


def _parse_item(r: _Reader) -> AnyItem:
    item_type = r.string("type")
    if item_type in ("function_call", "function_call_output"):
        return parse_function_item(r.obj, r.path, r.event_id)  # conversation/tool_schema.py
    if item_type == "mcp_approval_response":
        return parse_mcp_approval_response(r.obj, r.path, r.event_id)
    if item_type != "message":
        raise r.fail(
            "type",
            f"item type {item_type[:100]!r} is not supported (only 'message', "
            "'function_call', 'function_call_output' and 'mcp_approval_response')",
            "unsupported",
        )
    r.keys({"type", "role", "content", "id", "object", "status"})
    role = r.choice("role", ("user", "system", "assistant"), required=True)
    r.choice("object", ("realtime.item",))
    status = r.choice("status", ("completed", "incomplete", "in_progress"))
    parts = r.array("content", required=True, max_len=32) or []
    content = []
    for i, p in enumerate(parts):
        if not isinstance(p, dict):
            raise r.fail(
                f"content[{i}]", f"'{r.path}content[{i}]' must be an object", "invalid_type"
            )
        content.append(_parse_part(_Reader(p, f"{r.path}content[{i}].", r.event_id), role))
    if not content:
        raise r.fail("content", "a message needs at least one content part")
    return MessageItem(
        role=role, content=tuple(content), id=r.string("id", required=False), status=status
    )


def _parse_item_create(r: _Reader) -> ItemCreate:
    r.keys(_BASE | {"item", "previous_item_id"})
    sub = r.sub("item", required=True)
    assert sub is not None
    return ItemCreate(
        item=_parse_item(sub),
        previous_item_id=r.string("previous_item_id", required=False),
        event_id=r.event_id,
    )


def _modalities(r: _Reader) -> tuple[str, ...] | None:
    mods = r.array("output_modalities", max_len=2)
    if mods is None:
        return None
    if mods not in (["audio"], ["text"]):
        raise r.fail(
            "output_modalities",
            "output_modalities is ['audio'] (spoken, with its transcript) or ['text']",
        )
    return (str(mods[0]),)


def _max_tokens(r: _Reader) -> int | str | None:
    v = r.get("max_output_tokens", (int, str), "an integer or 'inf'", required=False)
    if v is None:
        return None
    if v == "inf" or (isinstance(v, int) and 1 <= v <= 4096):
        return v
    raise r.fail("max_output_tokens", "'max_output_tokens' must be from 1 to 4096 or 'inf'")


_IGNORED_RESPONSE = frozenset(
    {"tool_choice", "prompt", "reasoning", "parallel_tool_calls", "audio"}
)


def _parse_response_create(r: _Reader) -> ResponseCreate:
    r.keys(_BASE | {"response"})
    p = r.sub("response")
    if p is None:
        return ResponseCreate(event_id=r.event_id)
    p.keys(
        {
            "instructions",
            "max_output_tokens",
            "output_modalities",
            "conversation",
            "metadata",
            "input",
            "tools",
        },
        _IGNORED_RESPONSE,
    )
    _no_stored_prompt(p)
    tool_options = _tools(p)
    meta = p.sub("metadata", nullable=True)
    metadata = None
    if meta is not None:
        if len(meta.obj) > 16:
            raise p.fail("metadata", "'response.metadata' holds at most 16 pairs")
        metadata = tuple((k, meta.string(k, max_chars=512)) for k in meta.obj if len(k) <= 64)
        if len(metadata) != len(meta.obj):
            raise p.fail("metadata", "metadata keys are at most 64 characters")
    inputs = p.array("input", max_len=256)
    items: list[AnyItem | str] = []
    for i, it in enumerate(inputs or []):
        if not isinstance(it, dict):
            raise p.fail(f"input[{i}]", f"'response.input[{i}]' must be an object", "invalid_type")
        ir = _Reader(it, f"response.input[{i}].", r.event_id)
        if it.get("type") == "item_reference":
            ir.keys({"type", "id"})
            items.append(ir.string("id"))
        else:
            items.append(_parse_item(ir))
    return ResponseCreate(
        instructions=p.string("instructions", required=False, max_chars=MAX_TEXT_CHARS),
        max_output_tokens=_max_tokens(p),
        output_modalities=_modalities(p),
        conversation=p.choice("conversation", ("auto", "none")),
        metadata=metadata,
        input=None if inputs is None else tuple(items),
        tool_options=tool_options,
        event_id=r.event_id,
    )


def _tools(r: _Reader) -> ToolOptions:
    """``tools``, ``tool_choice``, ``parallel_tool_calls``: conversation/tool_schema.py."""
    return parse_tool_options(r.obj, r.path, r.event_id)


def _format(r: _Reader | None) -> AudioFormat | None:
    if r is None:
        return None
    r.keys({"type", "rate"})
    t = r.choice("type", tuple(FORMATS), required=True)
    fmt = FORMATS[t]
    rate = r.get("rate", int, "an integer", required=False)
    if rate is not None and rate != fmt.rate:
        raise r.fail("rate", f"{t} is {fmt.rate} Hz, got rate {rate}", "unsupported")
    return fmt


# ``semantic_vad`` eagerness -> the end-of-turn model's silences (``eot="smart_turn"``): how
# long a turn the model calls incomplete may wait (OpenAI's documented max timeouts: 8 s,
# 4 s, 2 s; auto is medium), the short silence after a complete verdict, and the silence
# alone for a server without the model.
SEMANTIC_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "auto": 4000, "high": 2000}
SEMANTIC_COMPLETE_MS = {"low": 500, "medium": 300, "auto": 300, "high": 200}
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 350}


def _turn_detection(r: _Reader) -> TurnDetection | None | _Unset:
    if "turn_detection" not in r.obj:
        return UNSET
    td = r.sub("turn_detection", nullable=True)
    if td is None:
        return None
    t = td.choice("type", ("server_vad", "semantic_vad"), required=True)
    common = {"type", "create_response", "interrupt_response"}
    if t == "server_vad":
        td.keys(
            common | {"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"}
        )
        idle = td.get("idle_timeout_ms", int, "an integer", required=False, nullable=True)
        if idle is not None and not 5_000 <= idle <= 30_000:
            raise td.fail("idle_timeout_ms", "'idle_timeout_ms' must be from 5000 to 30000")
        thr = td.get("threshold", (int, float), "a number", required=False)
        if thr is not None and not 0.0 < thr < 1.0:
            raise td.fail("threshold", "'threshold' must be between 0 and 1 (exclusive)")
        return TurnDetection(
            type=t,
            threshold=None if thr is None else float(thr),
            prefix_padding_ms=td.integer("prefix_padding_ms", 0, 10_000),
            silence_duration_ms=td.integer("silence_duration_ms", 0, 10_000),
            create_response=td.boolean("create_response"),
            interrupt_response=td.boolean("interrupt_response"),
            idle_timeout_ms=0 if idle is None and "idle_timeout_ms" in td.obj else idle,
        )
    td.keys(common | {"eagerness"})
    return TurnDetection(
        type=t,
        create_response=td.boolean("create_response"),
        interrupt_response=td.boolean("interrupt_response"),
        eagerness=td.choice("eagerness", tuple(SEMANTIC_SILENCE_MS)),
    )


_IGNORED_SESSION = frozenset(
    {
        "include",
        "prompt",
        "tool_choice",
        "tracing",
        "reasoning",
        "parallel_tool_calls",
        "temperature",
    }
)


def _no_stored_prompt(r: _Reader) -> None:
    """``prompt`` names a prompt template stored at OpenAI; seetalk stores none, and a client
    relying on one would notice it ignored, so anything but ``null`` is refused."""
    if r.obj.get("prompt") is not None:
        raise r.fail(
            "prompt",
            "stored prompt templates ('prompt') are not supported: send 'instructions'",
            "unsupported",
        )


def _voice(r: _Reader) -> str | None:
    v = r.get("voice", (str, dict), "a string or {'id': ...}", required=False)
    if isinstance(v, dict):
        vr = r.sub("voice")
        assert vr is not None
        vr.keys({"id"})
        return str(vr.string("id"))
    if isinstance(v, str) and len(v) > MAX_ID_CHARS:
        raise r.fail("voice", "'voice' is too long")
    return v


def _parse_session_update(r: _Reader) -> SessionUpdate:
    r.keys(_BASE | {"session"})
    s = r.sub("session", required=True)
    assert s is not None
    s.keys(
        {
            "type",
            "instructions",
            "model",
            "max_output_tokens",
            "output_modalities",
            "audio",
            "tools",
            "object",
            "id",
            "expires_at",
            "seetalk",
            "truncation",
        },
        _IGNORED_SESSION,
    )
    _no_stored_prompt(s)
    kind = s.choice("type", ("realtime", "transcription"))  # absent: realtime
    transcription = speed = None
    truncation = _truncation(s)
    tool_options = _tools(s)
    turn: TurnDetection | None | _Unset = UNSET
    in_fmt = out_fmt = None
    voice = noise_reduction = None
    audio = s.sub("audio")
    if audio is not None:
        audio.keys({"input", "output"})
        inp = audio.sub("input")
        if inp is not None:
            inp.keys({"format", "turn_detection", "noise_reduction", "transcription"})
            transcription = _transcription(inp)
            in_fmt = _format(inp.sub("format"))
            nr = inp.sub("noise_reduction", nullable=True)
            if nr is not None:
                nr.keys({"type"})
                noise_reduction = nr.choice("type", ("near_field", "far_field"))
            turn = _turn_detection(inp)
        out = audio.sub("output")
        if out is not None:
            out.keys({"format", "voice", "speed"})
            spd = out.get("speed", (int, float), "a number", required=False)
            if spd is not None and not 0.25 <= spd <= 1.5:
                raise out.fail("speed", "'speed' must be from 0.25 to 1.5")
            speed = None if spd is None else float(spd)
            out_fmt = _format(out.sub("format"))
            voice = _voice(out)
    ext = s.sub("seetalk")
    fields, turn_fields = (None, None) if ext is None else _extension(ext)
    return SessionUpdate(
        tool_options=tool_options,
        seetalk=fields,
        seetalk_turn=turn_fields,
        instructions=s.string("instructions", required=False, max_chars=MAX_TEXT_CHARS),
        voice=voice,
        model=s.string("model", required=False),
        max_output_tokens=_max_tokens(s),
        output_modalities=_modalities(s),
        input_format=in_fmt,
        output_format=out_fmt,
        turn_detection=turn,
        noise_reduction=noise_reduction,
        kind=kind,
        transcription=transcription,
        speed=speed,
        truncation=truncation,
        event_id=r.event_id,
    )


def _transcription(inp: _Reader) -> tuple[tuple[str, str], ...] | None:
    """``audio.input.transcription``: ``language`` (ISO-639-1) and ``prompt`` reach the
    recognizer; ``model`` names it (seetalk's configured ASR serves any name). ``null``
    keeps transcribing (seetalk always transcribes: turn-taking needs the words)."""
    t = inp.sub("transcription", nullable=True)
    if t is None:
        return None
    t.keys({"model", "language", "prompt"})
    t.string("model", required=False)
    lang = t.string("language", required=False, max_chars=16)
    if lang is not None and not re.fullmatch(r"[a-z]{2,3}", lang):
        raise t.fail("language", "'language' must be an ISO-639-1 code such as 'fr'")
    out = [("transcription_language", lang or "")]
    prompt = t.string("prompt", required=False, max_chars=4000)
    out.append(("transcription_prompt", prompt or ""))
    return tuple(out)


def _truncation(s: _Reader) -> tuple[str, float] | None:
    """``truncation``: ``"auto"``, ``"disabled"`` or ``{"type": "retention_ratio",
    "retention_ratio": 0..1}`` (conversation/budget.py)."""
    v = s.get("truncation", (str, dict), "a string or an object", required=False)
    if v is None:
        return None
    if isinstance(v, str):
        if v not in ("auto", "disabled"):
            raise s.fail("truncation", "'truncation' is 'auto', 'disabled' or an object")
        return (v, 1.0)
    t = s.sub("truncation")
    assert t is not None
    t.keys({"type", "retention_ratio", "token_limits"})
    t.choice("type", ("retention_ratio",), required=True)
    ratio = t.get("retention_ratio", (int, float), "a number", required=True)
    if not 0.0 <= ratio <= 1.0:
        raise t.fail("retention_ratio", "'retention_ratio' must be from 0 to 1")
    if "token_limits" in t.obj:
        raise t.fail("token_limits", "token_limits is not supported", "unsupported")
    return ("retention_ratio", float(ratio))


_EXTENSION: dict[str, Limit] = {k: v for k, v in SESSION_LIMITS.items() if not k.endswith("format")}
_FIXED_BY_TRANSPORT = "output_rate"


def _extension(
    ext: _Reader,
) -> tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, Any], ...] | None]:
    """The ``seetalk`` extension: :class:`~seetalk.config.SessionSettings` fields (and
    ``turn``: :class:`~seetalk.config.TurnSettings` fields), each checked against its range.
    ``output_rate`` is refused on every transport alike: the transport fixes it (48 kHz on
    WebRTC, ``audio.output.format`` on the WebSocket)."""
    ext.keys(set(_EXTENSION) | {"turn"})
    if _FIXED_BY_TRANSPORT in ext.obj:
        raise ext.fail(
            _FIXED_BY_TRANSPORT,
            "the output rate is fixed by the transport for the whole session (48 kHz on "
            "WebRTC; audio.output.format on the WebSocket API) and cannot be set",
            "unsupported",
        )
    fields = tuple((k, _setting(ext, k, _EXTENSION[k])) for k in ext.obj if k != "turn")
    turn = ext.sub("turn")
    if turn is None:
        return fields, None
    turn.keys(set(TURN_LIMITS))
    return fields, tuple((k, _setting(turn, k, TURN_LIMITS[k])) for k in turn.obj)


_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "a boolean"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _setting(r: _Reader, key: str, limit: Limit) -> Any:
    types, tname = _KINDS[limit[0]]
    value = r.get(key, types, tname, required=True)
    try:
        return check_setting(key, value, limit)
    except ConfigError as exc:
        raise r.fail(key, f"{r.path + key!r}: {exc.message}") from None


def _parse_image_append(r: _Reader) -> ImageAppend:
    r.keys(_BASE | {"image_url"})
    url, data = _image(r, "image_url")
    return ImageAppend(image_url=url, image=data, event_id=r.event_id)


_PARSERS: dict[str, Any] = {
    "session.update": _parse_session_update,
    "input_audio_buffer.append": _parse_append,
    "input_audio_buffer.commit": _simple(InputAudioCommit),
    "input_audio_buffer.clear": _simple(InputAudioClear),
    "output_audio_buffer.clear": _simple(OutputAudioClear),
    "conversation.item.create": _parse_item_create,
    "conversation.item.truncate": _parse_truncate,
    "conversation.item.delete": _item_id_event(ItemDelete),
    "conversation.item.retrieve": _item_id_event(ItemRetrieve),
    "response.create": _parse_response_create,
    "response.cancel": _parse_cancel,
    "seetalk.input_image.append": _parse_image_append,
}
CLIENT_EVENT_TYPES: Final = tuple(_PARSERS)
