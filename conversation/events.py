"""The event vocabulary: OpenAI Realtime server events, plus ``seetalk.*`` extensions.

Every event a session reports is built here, as a plain JSON-ready dict whose names and
fields follow the ``openai`` package's ``openai.types.realtime`` models (a test validates
them against those models). WebRTC data channels, the WebSocket API and ``run-file`` event
logs all carry these same dicts. See docs/events.md for the whole vocabulary.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

Event = dict[str, Any]

_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    """A short unique id such as ``item_3f9a1c2b0d4e``."""
    return f"{prefix}_{secrets.token_hex(6)}{next(_counter):x}"


def _event(type_: str, **fields: Any) -> Event:
    return {"type": type_, "event_id": new_id("event"), **fields}


# --- session -----------------------------------------------------------------------------


def session_created(session: dict[str, Any]) -> Event:
    return _event("session.created", session=session)


def session_updated(session: dict[str, Any]) -> Event:
    return _event("session.updated", session=session)


def error(err: dict[str, Any]) -> Event:
    """``err`` has ``type``, ``code``, ``message``, ``param``, ``event_id`` (see errors.py)."""
    return _event("error", error=err)


# --- input audio ---------------------------------------------------------------------------


def speech_started(item_id: str, audio_start_ms: int) -> Event:
    return _event(
        "input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=audio_start_ms
    )


def speech_stopped(item_id: str, audio_end_ms: int) -> Event:
    return _event("input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=audio_end_ms)


def input_committed(item_id: str, previous_item_id: str | None) -> Event:
    return _event(
        "input_audio_buffer.committed", item_id=item_id, previous_item_id=previous_item_id
    )


def input_cleared() -> Event:
    return _event("input_audio_buffer.cleared")


def transcription_delta(item_id: str, delta: str, partial: str) -> Event:
    """``delta`` appends to what came before (OpenAI's meaning); streaming recognition can
    also revise earlier words, so ``partial`` (an extension) carries the whole text so far."""
    return _event(
        "conversation.item.input_audio_transcription.delta",
        item_id=item_id,
        content_index=0,
        delta=delta,
        partial=partial,
    )


def transcription_completed(item_id: str, transcript: str, audio_seconds: float) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.completed",
        item_id=item_id,
        content_index=0,
        transcript=transcript,
        usage={"type": "duration", "seconds": round(audio_seconds, 3)},
    )


def transcription_failed(item_id: str, err: dict[str, Any]) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item_id,
        content_index=0,
        error=err,
    )


# --- conversation items ----------------------------------------------------------------------


def user_item(
    item_id: str,
    *,
    transcript: str | None = None,
    text: str | None = None,
    status: str = "completed",
    images: int = 0,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "input_text", "text": text})
    else:
        content.append({"type": "input_audio", "transcript": transcript})
    content.extend({"type": "input_image"} for _ in range(images))
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": status,
        "content": content,
    }


def assistant_item(
    item_id: str,
    transcript: str | None,
    status: str = "in_progress",
    modality: str = "output_audio",
) -> dict[str, Any]:
    part: dict[str, Any] = {"type": modality}
    if modality == "output_audio":
        part["transcript"] = transcript
    else:
        part["text"] = transcript
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part] if transcript is not None else [],
    }


def item_added(item: dict[str, Any], previous_item_id: str | None) -> Event:
    return _event("conversation.item.added", item=item, previous_item_id=previous_item_id)


def item_done(item: dict[str, Any], previous_item_id: str | None) -> Event:
    return _event("conversation.item.done", item=item, previous_item_id=previous_item_id)


def item_truncated(item_id: str, audio_end_ms: int, transcript: str) -> Event:
    """``transcript`` (an extension) is the text the person actually heard."""
    return _event(
        "conversation.item.truncated",
        item_id=item_id,
        content_index=0,
        audio_end_ms=audio_end_ms,
        transcript=transcript,
    )


def item_deleted(item_id: str) -> Event:
    return _event("conversation.item.deleted", item_id=item_id)


# --- responses -------------------------------------------------------------------------------


def response_object(
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    reason: str | None = None,
    err: dict[str, Any] | None = None,
    *,
    modalities: tuple[str, ...] | list[str] = ("audio",),
    **extra: Any,
) -> dict[str, Any]:
    """The protocol's response object; ``extra`` fields (``conversation_id``, ``metadata``,
    ``usage``, ...) are added as given."""
    resp: dict[str, Any] = {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "output": output,
        "output_modalities": list(modalities),
        **extra,
    }
    if status != "in_progress":
        details: dict[str, Any] = {"type": status}
        if reason is not None:
            details["reason"] = reason
        if err is not None:
            details["error"] = {k: err.get(k) for k in ("type", "code", "message")}
        resp["status_details"] = details
    return resp


def response_created(response_id: str) -> Event:
    return _event("response.created", response=response_object(response_id, "in_progress", []))


def output_item_added(response_id: str, item: dict[str, Any]) -> Event:
    return _event("response.output_item.added", response_id=response_id, output_index=0, item=item)


def output_item_done(response_id: str, item: dict[str, Any]) -> Event:
    return _event("response.output_item.done", response_id=response_id, output_index=0, item=item)


def content_part_added(response_id: str, item_id: str) -> Event:
    return _event(
        "response.content_part.added",
        response_id=response_id,
        item_id=item_id,
        output_index=0,
        content_index=0,
        part={"type": "audio", "transcript": ""},
    )


def content_part_done(response_id: str, item_id: str, transcript: str) -> Event:
    return _event(
        "response.content_part.done",
        response_id=response_id,
        item_id=item_id,
        output_index=0,
        content_index=0,
        part={"type": "audio", "transcript": transcript},
    )


def _response_part(type_: str, response_id: str, item_id: str, **fields: Any) -> Event:
    return _event(
        type_, response_id=response_id, item_id=item_id, output_index=0, content_index=0, **fields
    )


def audio_transcript_delta(response_id: str, item_id: str, delta: str) -> Event:
    return _response_part(
        "response.output_audio_transcript.delta", response_id, item_id, delta=delta
    )


def audio_transcript_done(response_id: str, item_id: str, transcript: str) -> Event:
    return _response_part(
        "response.output_audio_transcript.done", response_id, item_id, transcript=transcript
    )


def audio_delta(response_id: str, item_id: str, b64: str) -> Event:
    return _response_part("response.output_audio.delta", response_id, item_id, delta=b64)


def audio_done(response_id: str, item_id: str) -> Event:
    return _response_part("response.output_audio.done", response_id, item_id)


def response_done(
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    reason: str | None = None,
    err: dict[str, Any] | None = None,
) -> Event:
    return _event(
        "response.done", response=response_object(response_id, status, output, reason, err)
    )


def output_audio_started(response_id: str) -> Event:
    return _event("output_audio_buffer.started", response_id=response_id)


def output_audio_stopped(response_id: str) -> Event:
    return _event("output_audio_buffer.stopped", response_id=response_id)


def output_audio_cleared(response_id: str) -> Event:
    return _event("output_audio_buffer.cleared", response_id=response_id)


# --- seetalk extensions ------------------------------------------------------------------


def turn_metrics(response_id: str, metrics: dict[str, float | None]) -> Event:
    """Per-stage timings of one turn in milliseconds (see docs/events.md for each field)."""
    return _event("seetalk.turn.metrics", response_id=response_id, metrics=metrics)


def reply_paused(response_id: str, audio_end_ms: int) -> Event:
    """Barge-in: the reply's audio stopped at ``audio_end_ms``; it may still resume."""
    return _event("seetalk.reply.paused", response_id=response_id, audio_end_ms=audio_end_ms)


def reply_resumed(response_id: str, audio_end_ms: int) -> Event:
    """The interruption held no words: the reply plays on from ``audio_end_ms``."""
    return _event("seetalk.reply.resumed", response_id=response_id, audio_end_ms=audio_end_ms)


def barge_in(response_id: str, onset_ms: int, stopped_ms: int) -> Event:
    """Speech onset at ``onset_ms`` (input timeline) stopped the reply's audio at ``stopped_ms``
    (output timeline, the same clock for file sessions)."""
    return _event(
        "seetalk.barge_in", response_id=response_id, onset_ms=onset_ms, stopped_ms=stopped_ms
    )


def frames_selected(item_id: str, frames: list[dict[str, Any]], reason: str | None = None) -> Event:
    """What the model saw for a user turn: each frame's time, size, sharpness and why chosen."""
    return _event(
        "seetalk.frames.selected", item_id=item_id, count=len(frames), frames=frames, reason=reason
    )


def images_dropped(item_id: str, reason: str) -> Event:
    return _event("seetalk.images.dropped", item_id=item_id, reason=reason)
