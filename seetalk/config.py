"""Settings: a few frozen, documented objects.

What is loaded once (``ModelConfig``, ``ServerConfig``) is separate from what a session or a
call chooses (``SessionSettings`` and the turn-taking settings inside it). Values come from, in
order of precedence: command-line flags, ``SEETALK_*`` environment variables, defaults.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from seetalk.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Which model serves each role. ``None`` means the embedded default from a package.

    - ``vad``: path to a Silero VAD ``.onnx`` file.
    - ``asr``: ``"base"`` (default), ``"tiny.en"``, or a path to a CTranslate2 whisper directory.
    - ``asr_partial``: a smaller, faster model for partial transcripts while the person speaks
      (default ``"tiny.en"``), so the final pass (``asr``) starts at the first silence instead of
      waiting for a partial; ``""`` uses ``asr`` for both. English-only: set ``""`` for other
      languages.
    - ``voice``: path to a piper ``.onnx`` voice (its ``.onnx.json`` config beside it).
    - ``llm``: path to a GGUF file for the in-process llama.cpp backend.
    - ``llm_base_url``: an OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, OpenAI, xAI);
      when set it replaces the local model. ``llm_model`` and ``llm_api_key`` go with it.
    - ``mmproj``: the projector GGUF of a local vision-language model (with ``llm``).
    - ``asr_base_url``: an OpenAI-compatible transcription server (``seetalk models serve``,
      vLLM, a faster-whisper server, OpenAI) for final transcripts, replacing ``asr``;
      ``asr_model``, ``asr_api_key`` and ``asr_timeout_s`` go with it. Partials stay local
      on ``asr_partial`` unless it is ``""`` (then they go to the server too).
    - ``tts_base_url``: an OpenAI-compatible speech server (``/audio/speech``, streamed PCM),
      replacing ``voice``; ``tts_model``, ``tts_voice``, ``tts_api_key`` and
      ``tts_timeout_s`` go with it.
    """

    vad: str | None = None
    asr: str = "base"
    asr_partial: str = "tiny.en"
    voice: str | None = None
    llm: str | None = None
    llm_base_url: str | None = None
    llm_model: str = "default"
    llm_api_key: str | None = None
    llm_timeout_s: float = 20.0
    mmproj: str | None = None
    asr_threads: int = 2
    # One: the local model never has the cores to itself (finals, partials and the voice
    # run beside it), and llama.cpp's threads wait for each other at every layer: on 2
    # busy cores 2 threads were 3-20x slower than 1 (issue 8, docs/architecture.md).
    llm_threads: int = 1
    asr_base_url: str | None = None
    asr_model: str = "whisper-1"
    asr_api_key: str | None = None
    asr_timeout_s: float = 15.0
    tts_base_url: str | None = None
    tts_model: str = "tts-1"
    tts_voice: str = "alloy"
    tts_api_key: str | None = None
    tts_timeout_s: float = 15.0


MAX_INSTRUCTIONS_CHARS = 100_000  # as the protocol's top-level ``instructions``
OUTPUT_RATES = (8_000, 16_000, 24_000, 48_000)
AUDIO_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")

Limit = tuple[type, Any, Any]
"""``(type, low, high)``: numbers in ``[low, high]``; strings at most ``high`` characters;
a tuple ``low`` of strings or ints is the set of allowed values (``high`` unused)."""

TURN_LIMITS: dict[str, Limit] = {
    "silence_ms": (int, 0, 10_000),
    "vad_threshold": (float, 0.0, 1.0),  # exclusive at both ends
    "prefix_padding_ms": (int, 0, 10_000),
    "min_speech_ms": (int, 0, 10_000),
    "min_silence_ms": (int, 0, 10_000),
    "preemptive": (bool, None, None),
    "interrupt": (bool, None, None),
    "false_interruption_timeout_ms": (int, 0, 10_000),
    "resume_false_interruption": (bool, None, None),
    "mode": (str, ("server_vad", "none"), None),
    "create_response": (bool, None, None),
    "idle_timeout_ms": (int, 0, 600_000),
    "eot": (str, ("silence", "smart_turn"), None),
    "eot_complete_silence_ms": (int, 0, 10_000),
    "eot_incomplete_silence_ms": (int, 0, 10_000),
    "eagerness": (str, ("", "low", "medium", "high", "auto"), None),
}
"""Every :class:`TurnSettings` field and its range: the one table that both the settings
objects and the ``session.update`` parser (``conversation/protocol.py``) check against."""

SESSION_LIMITS: dict[str, Limit] = {
    "instructions": (str, 0, MAX_INSTRUCTIONS_CHARS),
    "voice": (str, 0, 256),
    "max_output_tokens": (int, 1, 4096),
    "temperature": (float, 0.0, 2.0),
    "output_rate": (int, OUTPUT_RATES, None),
    "history_turns": (int, 0, 200),
    "camera_max_side": (int, 64, 4096),
    "jpeg_quality": (int, 1, 100),
    "max_keyframes": (int, 0, 8),
    "input_format": (str, AUDIO_FORMATS, None),
    "output_format": (str, AUDIO_FORMATS, None),
    "echo": (str, ("auto", "on", "off"), None),
    "output_modalities": (str, ("audio", "text"), None),
    "kind": (str, ("realtime", "transcription"), None),
    "speed": (float, 0.25, 1.5),
    "transcription_language": (str, 0, 16),
    "transcription_prompt": (str, 0, 4000),
    "truncation": (str, ("auto", "disabled", "retention_ratio"), None),
    "retention_ratio": (float, 0.0, 1.0),
    "timezone": (str, 0, 64),  # an IANA name ("" = the deployment's --timezone)
}
"""Every :class:`SessionSettings` field but ``turn`` (see :data:`TURN_LIMITS`)."""


def check_setting(name: str, value: Any, limit: Limit) -> Any:
    """``value`` if it has the type and range of ``limit`` (an int is a float), else
    :class:`ConfigError` naming ``name``. Returns floats as ``float``."""
    kind, lo, hi = limit
    if isinstance(value, bool) != (kind is bool) or not isinstance(
        value, (int, float) if kind is float else kind
    ):
        raise ConfigError(f"{name} must be {_KIND_NAMES[kind]}", param=name)
    if kind is float:
        value = float(value)  # type: ignore[arg-type]  # an int or a float, checked above
        if name == "vad_threshold" and not lo < value < hi:
            raise ConfigError(f"{name} must be between {lo:g} and {hi:g} (exclusive)", param=name)
    if isinstance(lo, tuple):
        if value not in lo:
            raise ConfigError(f"{name} must be one of {list(lo)}, got {value!r}", param=name)
    elif kind is str and len(value) > hi:
        raise ConfigError(f"{name} is longer than {hi} characters", param=name)
    elif kind in (int, float) and not lo <= value <= hi:
        raise ConfigError(f"{name} must be from {lo:g} to {hi:g}, got {value!r}", param=name)
    if name == "timezone" and value and not is_time_zone(value):
        raise ConfigError(
            f"timezone must be an IANA time zone name such as 'Europe/Paris', got {value!r}",
            param=name,
        )
    return value


def is_time_zone(name: str) -> bool:
    """``name`` is an IANA time zone this machine knows (``Europe/Paris``, ``UTC``)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def check_settings(obj: Any, limits: dict[str, Limit]) -> None:
    """Check every field of a frozen settings object against its limit."""
    for name, limit in limits.items():
        value = check_setting(name, getattr(obj, name), limit)
        if value is not getattr(obj, name):  # an int given for a float
            object.__setattr__(obj, name, value)


_KIND_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
}


@dataclass(frozen=True)
class TurnSettings:
    """Turn-taking and barge-in, per session (``session.update`` can change them).

    - ``silence_ms``: silence after speech that ends the user's turn (endpoint).
    - ``vad_threshold``: Silero speech probability that counts as speech.
    - ``prefix_padding_ms``: audio kept before detected speech onset.
    - ``min_speech_ms``: speech needed before it counts as speech (and as a barge-in).
    - ``min_silence_ms``: silence needed before speech counts as stopped (VAD hangover).
    - ``preemptive``: start the reply on a stable partial transcript before the endpoint.
    - ``interrupt``: whether user speech interrupts a playing reply.
    - ``false_interruption_timeout_ms``: a barge-in that yields no words within this time
      is false; the reply resumes where it stopped if ``resume_false_interruption``.
    - ``mode``: ``"server_vad"`` (automatic turns) or ``"none"`` (the client commits turns).
    - ``create_response``: answer each detected turn (else commit and transcribe it, and
      wait for ``response.create``).
    - ``idle_timeout_ms``: after a reply has played, this much input without speech
      triggers ``input_audio_buffer.timeout_triggered`` and a reply (0: off).
    - ``eot``: what ends a turn: ``"silence"`` (``silence_ms``) or ``"smart_turn"`` (an
      end-of-turn model hears the speech at the first silence: a complete turn ends after
      ``eot_complete_silence_ms``, an incomplete one, or one without a verdict yet, after
      ``eot_incomplete_silence_ms``). ``semantic_vad`` eagerness maps onto these.
    - ``eagerness``: ``""`` for ``server_vad``; else the ``semantic_vad`` eagerness asked
      for, which chose ``eot="smart_turn"`` and its two silences (and, for a server without
      the end-of-turn model, ``silence_ms``): see ``conversation/settings.py``.
    """

    silence_ms: int = 500
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    min_speech_ms: int = 64
    min_silence_ms: int = 96
    preemptive: bool = True
    interrupt: bool = True
    false_interruption_timeout_ms: int = 1500
    resume_false_interruption: bool = True
    mode: str = "server_vad"
    create_response: bool = True
    idle_timeout_ms: int = 0
    eot: str = "silence"
    eot_complete_silence_ms: int = 200
    eot_incomplete_silence_ms: int = 2000
    eagerness: str = ""

    def __post_init__(self) -> None:
        check_settings(self, TURN_LIMITS)


DEFAULT_INSTRUCTIONS = (
    "You are seetalk, a friendly voice assistant. Your words are spoken aloud, so answer in "
    "one or two short sentences of plain speech, without lists, markup or emoji."
)


@dataclass(frozen=True)
class SessionSettings:
    """What a session chooses; ``session.update`` replaces fields with :func:`updated`.
    Every field is checked against :data:`SESSION_LIMITS` (:class:`ConfigError` otherwise).

    ``input_format``/``output_format`` are the client's audio formats on the WebSocket API
    (``audio/pcm`` 24 kHz, ``audio/pcmu``, ``audio/pcma``); the transport reads them when it
    decodes and encodes audio (WebRTC carries audio on its media tracks and ignores them).
    ``output_rate`` is the session's playout rate, chosen by the transport at the start.
    ``echo``: server-side echo cancellation with the reply as the reference (docs/echo.md):
    ``"auto"`` (on, unless the client says it cancels echo itself: the page sets ``"off"``),
    ``"on"`` or ``"off"``.
    ``output_modalities``: ``"audio"`` (spoken, with its transcript) or ``"text"`` (text
    only, nothing synthesized). ``kind``: ``"realtime"``, or ``"transcription"`` (captions
    only: turns are transcribed, never answered). ``speed``: the voice's rate (0.25-1.5).
    ``transcription_language`` (ISO-639-1, ``""``: detected) and ``transcription_prompt``
    go to the recognizer. ``truncation`` bounds the model input by its context in tokens
    (``conversation/budget.py``; ``retention_ratio`` for ``"retention_ratio"``).
    ``timezone``: the person's IANA time zone, for the ``time`` built-in tool (``""``: the
    deployment's, :class:`BuiltinTools`).
    """

    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = "default"
    turn: TurnSettings = field(default_factory=TurnSettings)
    max_output_tokens: int = 120
    temperature: float = 0.3
    output_rate: int = 48_000
    history_turns: int = 12
    camera_max_side: int = 1024
    jpeg_quality: int = 75
    max_keyframes: int = 2
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    echo: str = "auto"
    output_modalities: str = "audio"
    kind: str = "realtime"
    speed: float = 1.0
    transcription_language: str = ""
    transcription_prompt: str = ""
    truncation: str = "auto"
    retention_ratio: float = 1.0
    timezone: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.turn, TurnSettings):
            raise ConfigError("turn must be TurnSettings", param="turn")
        check_settings(self, SESSION_LIMITS)


BUILTIN_TOOL_NAMES = ("time", "look")


@dataclass(frozen=True)
class BuiltinTools:
    """Built-in tools a deployment switches on for every session (``--tools time,look``,
    env ``SEETALK_TOOLS``; default none) and its default time zone (``--timezone``, env
    ``SEETALK_TIMEZONE``; a session may set its own with ``seetalk.timezone``).

    - ``time``: ``get_current_time``, the date and time in the session's time zone.
    - ``look``: a fresh, sharp camera frame's scene notes (and the frame itself for a
      vision-language model). See docs/tools.md.
    """

    names: tuple[str, ...] = ()
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in BUILTIN_TOOL_NAMES]
        if unknown:
            raise ConfigError(
                f"unknown built-in tool {unknown[0]!r}: choose from {', '.join(BUILTIN_TOOL_NAMES)}",
                param="tools",
            )
        if len(set(self.names)) != len(self.names):
            raise ConfigError("a built-in tool is named twice", param="tools")
        if not is_time_zone(self.timezone):
            raise ConfigError(
                f"timezone must be an IANA time zone name such as 'Europe/Paris', "
                f"got {self.timezone!r}",
                param="timezone",
            )


def builtin_tools_from_env(tools: str | None = None, timezone: str | None = None) -> BuiltinTools:
    """:class:`BuiltinTools` from ``tools`` (comma-separated) and ``timezone`` (flags), else
    ``SEETALK_TOOLS`` and ``SEETALK_TIMEZONE``."""
    raw = tools if tools is not None else _env("TOOLS") or ""
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    return BuiltinTools(names, timezone or _env("TIMEZONE") or "UTC")


@dataclass(frozen=True)
class McpConfig:
    """MCP servers of the deployment (docs/tools.md): started with the server, listed once,
    offered to every session, closed at shutdown.

    - ``servers``: ``NAME=COMMAND ARGS...`` (stdio) or ``NAME=https://...`` (streamable
      HTTP), from ``--mcp`` (repeatable).
    - ``allow_urls``: prefixes a session's ``mcp`` tool may name in ``server_url``
      (``--mcp-allow-url``, repeatable; default none: a client may not make the server
      connect where it chooses).
    - ``max_per_session``: servers with a ``server_url`` one session may open at once.
    """

    servers: tuple[str, ...] = ()
    allow_urls: tuple[str, ...] = ()
    max_per_session: int = 4

    def __post_init__(self) -> None:
        for spec in self.servers:
            name, sep, target = spec.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ConfigError(
                    f"--mcp takes NAME=COMMAND or NAME=URL, got {spec!r}", param="mcp"
                )
        for prefix in self.allow_urls:
            if not prefix.startswith(("http://", "https://")):
                raise ConfigError(
                    f"--mcp-allow-url takes an http(s) URL prefix, got {prefix!r}",
                    param="mcp_allow_url",
                )
        if self.max_per_session < 0:
            raise ConfigError("max_per_session must be 0 or more", param="mcp")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_sessions: int = 8
    idle_timeout_s: float = 300.0
    ice_servers: tuple[dict[str, Any], ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    max_ws_message_bytes: int = 4 * 1024 * 1024
    # Web pages of other origins that may open sessions ("*": any); the page's own origin
    # and clients that send no Origin (apps, servers) always may. See docs/security.md.
    allow_origins: tuple[str, ...] = ()
    # coturn REST-API shared secret: each session and page gets its own TURN credentials
    # for turn_urls, valid turn_ttl_s seconds (docs/webrtc.md).
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl_s: float = 3600.0
    docs: bool = False  # serve /docs, /redoc and /openapi.json
    max_body_bytes: int = 64 * 1024  # offer bodies; larger ones get 413
    # Session tokens signed with this secret are accepted by every instance that shares it
    # (None: a random secret per process, so tokens work only where they were minted).
    token_secret: str | None = None
    # SIGTERM: stop admitting, let open sessions run up to this long, then exit.
    drain_timeout_s: float = 30.0
    # a session whose connection dropped waits this long for its client to resume it (0: off)
    resume_window_s: float = 60.0
    # built-in tools offered to every session's model, and the default time zone
    tools: BuiltinTools = field(default_factory=BuiltinTools)
    # MCP servers offered to every session and the URLs sessions may name (--mcp)
    mcp: McpConfig = field(default_factory=McpConfig)


def updated(obj: Any, changes: dict[str, Any], *, path: str = "") -> Any:
    """A copy of a frozen settings object with ``changes`` applied, nested dicts recursing.

    Unknown keys and wrong types raise :class:`ConfigError` naming the parameter.
    """
    fields = {f.name: f for f in dataclasses.fields(obj)}
    new: dict[str, Any] = {}
    for key, value in changes.items():
        name = f"{path}{key}"
        if key not in fields:
            raise ConfigError(f"unknown setting {name!r}", param=name)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be an object", param=name)
            new[key] = updated(current, value, path=f"{name}.")
            continue
        expected = type(current) if current is not None else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (
            expected is not None
            and not isinstance(value, expected)
            or (expected is int and isinstance(value, bool))
        ):
            raise ConfigError(f"{name} must be of type {expected.__name__}", param=name)
        new[key] = value
    try:
        return dataclasses.replace(obj, **new)
    except ConfigError as exc:  # a range check of the new object: name its full path
        if exc.param is not None and path and not exc.param.startswith(path):
            exc.param = f"{path}{exc.param}"
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), param=path.rstrip(".") or None) from exc


def _env(name: str) -> str | None:
    value = os.environ.get(f"SEETALK_{name}")
    return value if value else None


def model_config_from_env(**overrides: Any) -> ModelConfig:
    """``ModelConfig`` from ``SEETALK_VAD``, ``SEETALK_ASR``, ``SEETALK_VOICE``, ``SEETALK_LLM``,
    ``SEETALK_LLM_BASE_URL``, ``SEETALK_LLM_MODEL``, ``SEETALK_LLM_API_KEY``, ``SEETALK_MMPROJ``;
    ``overrides`` (flags) win when not ``None``."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ModelConfig):
        raw = _env(f.name.upper())
        if raw is not None:
            values[f.name] = (
                float(raw) if f.type == "float" else int(raw) if f.type == "int" else raw
            )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**values)
