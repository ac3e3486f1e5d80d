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
    llm_threads: int = 2


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

    def __post_init__(self) -> None:
        if not 0.0 < self.vad_threshold < 1.0:
            raise ConfigError("vad_threshold must be between 0 and 1", param="vad_threshold")
        for name in (
            "silence_ms",
            "prefix_padding_ms",
            "min_speech_ms",
            "min_silence_ms",
            "false_interruption_timeout_ms",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10_000:
                raise ConfigError(f"{name} must be an integer from 0 to 10000", param=name)
        if self.mode not in ("server_vad", "none"):
            raise ConfigError("turn mode must be 'server_vad' or 'none'", param="mode")


DEFAULT_INSTRUCTIONS = (
    "You are seetalk, a friendly voice assistant. Your words are spoken aloud, so answer in "
    "one or two short sentences of plain speech, without lists, markup or emoji."
)


@dataclass(frozen=True)
class SessionSettings:
    """What a session chooses; ``session.update`` replaces fields with :func:`updated`."""

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
