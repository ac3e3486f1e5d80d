"""``session.update`` and the session object: OpenAI Realtime's shape <-> SessionSettings."""

from __future__ import annotations

from typing import Any

from seetalk.config import SessionSettings
from seetalk.errors import ConfigError


def describe_session(session_id: str, settings: SessionSettings) -> dict[str, Any]:
    """The session object of ``session.created``/``session.updated`` (OpenAI shape), with
    every seetalk setting under ``seetalk``."""
    turn = settings.turn
    detection = (
        None
        if turn.mode == "none"
        else {
            "type": "server_vad",
            "threshold": turn.vad_threshold,
            "prefix_padding_ms": turn.prefix_padding_ms,
            "silence_duration_ms": turn.silence_ms,
            "create_response": True,
            "interrupt_response": turn.interrupt,
        }
    )
    return {
        "type": "realtime",
        "id": session_id,
        "object": "realtime.session",
        "model": "seetalk",
        "instructions": settings.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": detection,
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": settings.voice,
            },
        },
        "seetalk": {
            "turn": {k: getattr(turn, k) for k in turn.__dataclass_fields__},
            "output_rate": settings.output_rate,
        },
    }


def session_changes(session: dict[str, Any]) -> dict[str, Any]:
    """Map an OpenAI ``session.update`` session object onto :class:`SessionSettings` changes.

    ``instructions``, ``audio.output.voice``, ``audio.input.turn_detection`` (``server_vad``
    with ``threshold``, ``prefix_padding_ms``, ``silence_duration_ms``, ``interrupt_response``;
    or ``null`` for client-committed turns), ``max_output_tokens``, and the extension
    ``seetalk`` (any :class:`SessionSettings` fields, e.g. ``{"turn": {"preemptive": false}}``).
    """
    changes: dict[str, Any] = {}
    turn: dict[str, Any] = {}
    if "instructions" in session:
        changes["instructions"] = session["instructions"]
    if "max_output_tokens" in session:
        value = session["max_output_tokens"]
        changes["max_output_tokens"] = 4096 if value == "inf" else value
    audio = session.get("audio") or {}
    if not isinstance(audio, dict):
        raise ConfigError("session.audio must be an object", param="session.audio")
    output = audio.get("output") or {}
    if isinstance(output, dict) and "voice" in output:
        changes["voice"] = output["voice"] if isinstance(output["voice"], str) else "default"
    inp = audio.get("input") or {}
    if isinstance(inp, dict) and "turn_detection" in inp:
        td = inp["turn_detection"]
        if td is None:
            turn["mode"] = "none"
        elif isinstance(td, dict):
            if td.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
                raise ConfigError(
                    "turn_detection.type must be server_vad", param="turn_detection.type"
                )
            turn["mode"] = "server_vad"
            for src, dst in (
                ("threshold", "vad_threshold"),
                ("prefix_padding_ms", "prefix_padding_ms"),
                ("silence_duration_ms", "silence_ms"),
                ("interrupt_response", "interrupt"),
            ):
                if src in td:
                    turn[dst] = td[src]
        else:
            raise ConfigError("turn_detection must be an object or null", param="turn_detection")
    extension = session.get("seetalk") or {}
    if not isinstance(extension, dict):
        raise ConfigError("session.seetalk must be an object", param="session.seetalk")
    changes.update({k: v for k, v in extension.items() if k != "turn"})
    if isinstance(extension.get("turn"), dict):
        turn.update(extension["turn"])
    if turn:
        changes["turn"] = turn
    return changes
