"""``session.update`` and the session object: OpenAI Realtime's shape <-> SessionSettings.

:func:`settings_for` is the one validator's last step: the parser
(:mod:`conversation.protocol`) has checked every value's type and range; here the typed
update becomes a new :class:`~seetalk.config.SessionSettings` (whose own checks run again on
the combination). The session then applies it whole, or refuses it whole.
"""

from __future__ import annotations

from typing import Any

from conversation.protocol import (
    FORMATS,
    PCM16,
    SEMANTIC_COMPLETE_MS,
    SEMANTIC_MAX_WAIT_MS,
    SEMANTIC_SILENCE_MS,
    SessionUpdate,
    TurnDetection,
)
from seetalk.config import SessionSettings, updated


def describe_session(session_id: str, settings: SessionSettings) -> dict[str, Any]:
    """The session object of ``session.created``/``session.updated`` (OpenAI shape), with
    every seetalk setting under ``seetalk``."""
    turn = settings.turn
    detection: dict[str, Any] | None = (
        None
        if turn.mode == "none"
        else {
            "type": "semantic_vad",  # what was asked; the end-of-turn model carries it out
            "eagerness": turn.eagerness,
            "create_response": turn.create_response,
            "interrupt_response": turn.interrupt,
        }
        if turn.eagerness
        else {
            "type": "server_vad",
            "threshold": turn.vad_threshold,
            "prefix_padding_ms": turn.prefix_padding_ms,
            "silence_duration_ms": turn.silence_ms,
            "create_response": turn.create_response,
            "interrupt_response": turn.interrupt,
            "idle_timeout_ms": turn.idle_timeout_ms or None,
        }
    )
    seetalk: dict[str, Any] = {
        k: getattr(settings, k)
        for k in settings.__dataclass_fields__
        if k not in ("turn", "instructions", "voice", "input_format", "output_format")
    }
    seetalk["turn"] = {k: getattr(turn, k) for k in turn.__dataclass_fields__}
    transcription = {
        "model": "seetalk",
        "language": settings.transcription_language or None,
        "prompt": settings.transcription_prompt or None,
    }
    if settings.kind == "transcription":  # captions only: no output, no model, no voice
        return {
            "type": "transcription",
            "id": session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": FORMATS.get(settings.input_format, PCM16).to_dict(),
                    "transcription": transcription,
                    "turn_detection": detection,
                }
            },
            "seetalk": seetalk,
        }
    truncation: Any = settings.truncation
    if truncation == "retention_ratio":
        truncation = {"type": "retention_ratio", "retention_ratio": settings.retention_ratio}
    return {
        "type": "realtime",
        "id": session_id,
        "object": "realtime.session",
        "model": "seetalk",
        "instructions": settings.instructions,
        "output_modalities": [settings.output_modalities],
        "max_output_tokens": settings.max_output_tokens,
        "truncation": truncation,
        "audio": {
            "input": {
                "format": FORMATS.get(settings.input_format, PCM16).to_dict(),
                "transcription": transcription,
                "turn_detection": detection,
            },
            "output": {
                "format": FORMATS.get(settings.output_format, PCM16).to_dict(),
                "voice": settings.voice,
                "speed": settings.speed,
            },
        },
        "seetalk": seetalk,
    }


def settings_for(current: SessionSettings, update: SessionUpdate) -> SessionSettings:
    """The settings ``update`` asks for, from ``current``: ``instructions``,
    ``max_output_tokens`` (``"inf"`` is the most, 4096), ``audio.output.voice``, the audio
    formats, ``audio.input.turn_detection`` (``server_vad``; ``semantic_vad`` becomes the
    end-of-turn model, ``eot="smart_turn"``, its silences chosen by the eagerness; ``null``
    means the client commits turns), and
    the ``seetalk`` extension (its ``turn`` applied after ``turn_detection``).

    Raises :class:`~seetalk.errors.ConfigError` naming the parameter if the combination is
    invalid (the parser has checked each value on its own)."""
    changes: dict[str, Any] = {}
    turn: dict[str, Any] = {}
    if update.instructions is not None:
        changes["instructions"] = update.instructions
    if update.max_output_tokens is not None:
        tokens = update.max_output_tokens
        changes["max_output_tokens"] = 4096 if tokens == "inf" else tokens
    if update.voice is not None:
        changes["voice"] = update.voice
    if update.input_format is not None:
        changes["input_format"] = update.input_format.type
    if update.output_format is not None:
        changes["output_format"] = update.output_format.type
    td = update.turn_detection
    if td is None:
        turn["mode"] = "none"
    elif isinstance(td, TurnDetection):
        turn.update(_turn_changes(td))
        if td.type == "server_vad" and current.turn.eagerness:
            turn.update(eagerness="", eot="silence")  # semantic_vad's model no longer asked
    if update.noise_reduction == "far_field":
        changes["echo"] = "on"  # a speakerphone: cancel the reply's echo (docs/echo.md)
    changes.update(_rest_of_protocol(update))
    changes.update(dict(update.seetalk or ()))
    turn.update(dict(update.seetalk_turn or ()))
    if turn:
        changes["turn"] = turn
    new: SessionSettings = updated(current, changes)
    return new


def _rest_of_protocol(update: SessionUpdate) -> dict[str, Any]:
    """``output_modalities``, ``session.type``, ``audio.output.speed``,
    ``audio.input.transcription`` and ``truncation`` as settings."""
    changes: dict[str, Any] = {}
    if update.output_modalities is not None:
        changes["output_modalities"] = update.output_modalities[0]
    if update.kind is not None:
        changes["kind"] = update.kind
    if update.speed is not None:
        changes["speed"] = update.speed
    if update.transcription is not None:
        changes.update(dict(update.transcription))
    if update.truncation is not None:
        changes["truncation"], changes["retention_ratio"] = update.truncation
    return changes


def _turn_changes(td: TurnDetection) -> dict[str, Any]:
    turn: dict[str, Any] = {"mode": "server_vad"}
    if td.type == "semantic_vad":
        eagerness = td.eagerness or "auto"
        turn.update(
            eagerness=eagerness,
            eot="smart_turn",
            eot_incomplete_silence_ms=SEMANTIC_MAX_WAIT_MS[eagerness],
            eot_complete_silence_ms=SEMANTIC_COMPLETE_MS[eagerness],
            silence_ms=SEMANTIC_SILENCE_MS[eagerness],  # without the model (turns.for_model)
        )
    for src, dst in (
        ("threshold", "vad_threshold"),
        ("prefix_padding_ms", "prefix_padding_ms"),
        ("silence_duration_ms", "silence_ms"),
        ("interrupt_response", "interrupt"),
        ("create_response", "create_response"),
        ("idle_timeout_ms", "idle_timeout_ms"),
    ):
        value = getattr(td, src)
        if value is not None:
            turn[dst] = value
    return turn
