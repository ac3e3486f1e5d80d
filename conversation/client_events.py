"""Client events (OpenAI Realtime shape) acting on a :class:`~conversation.session.Session`.

Anything wrong in an event becomes a typed ``error`` event and the session goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seetalk.config import updated
from seetalk.errors import InvalidEvent, SeetalkError
from conversation import events as ev
from conversation.history import Item
from conversation.settings import session_changes

if TYPE_CHECKING:
    from conversation.session import Session


async def handle(sess: Session, event: dict[str, Any]) -> None:
    """Act on a client event (OpenAI Realtime shape). Anything wrong becomes an ``error``
    event; the session goes on."""
    event_id = event.get("event_id") if isinstance(event, dict) else None
    try:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise InvalidEvent(
                "an event is a JSON object with a string 'type'",
                code="invalid_event",
                param="type",
            )
        handler = _HANDLERS.get(event["type"])
        if handler is None:
            raise InvalidEvent(
                f"unknown event type {event['type']!r}", code="unknown_event_type", param="type"
            )
        await handler(sess, event)
    except SeetalkError as exc:
        exc.event_id = exc.event_id or (event_id if isinstance(event_id, str) else None)
        sess.emit(ev.error(exc.to_event_error()))


async def _on_session_update(sess: Session, event: dict[str, Any]) -> None:
    session = event.get("session")
    if not isinstance(session, dict):
        raise InvalidEvent("session.update needs a 'session' object", param="session")
    sess.settings = updated(sess.settings, session_changes(session))
    sess.turns.update_settings(sess.settings.turn)
    sess.emit(ev.session_updated(sess.describe()))


async def _on_item_create(sess: Session, event: dict[str, Any]) -> None:
    item = event.get("item")
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        raise InvalidEvent("conversation.item.create needs a message 'item'", param="item")
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        raise InvalidEvent("item.role must be user, assistant or system", param="item.role")
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise InvalidEvent("item.content must be a non-empty list", param="item.content")
    texts: list[str] = []
    images: list[bytes] = []
    for part in content:
        if not isinstance(part, dict):
            raise InvalidEvent("each content part is an object", param="item.content")
        kind = part.get("type")
        if kind in ("input_text", "text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise InvalidEvent("a text part needs 'text'", param="item.content.text")
            texts.append(part["text"])
        elif kind == "input_image":
            from vision.images import decode_data_url  # type: ignore[import-not-found]

            images.append(decode_data_url(part.get("image_url")))
        elif kind == "input_audio" and isinstance(part.get("transcript"), str):
            texts.append(part["transcript"])
        else:
            raise InvalidEvent(f"unsupported content part {kind!r}", param="item.content.type")
    given = item.get("id")
    item_id = given if isinstance(given, str) and given else ev.new_id("item")
    new = Item(
        item_id,
        "assistant" if role == "assistant" else "user",
        " ".join(texts),
        images=tuple(images),
        source="text",
    )
    previous = sess.conversation.add(new)
    sess.emit(ev.item_added(new.to_event_item(), previous))
    sess.emit(ev.item_done(new.to_event_item(), previous))


async def _on_response_create(sess: Session, event: dict[str, Any]) -> None:
    sess._final_clock = sess.clock.now()
    sess._endpoint_clock = sess._final_clock
    sess._speech_end_clock = sess._final_clock
    sess._respond()


async def _on_response_cancel(sess: Session, event: dict[str, Any]) -> None:
    reply = sess._reply
    if reply is None:
        return  # nothing to cancel is not an error (OpenAI clients send it freely)
    sess._interrupt_reply(reply.id, "client_cancelled")


async def _on_input_commit(sess: Session, event: dict[str, Any]) -> None:
    if not sess.turns.in_utterance:
        raise InvalidEvent(
            "the input audio buffer is empty", code="input_audio_buffer_commit_empty"
        )
    sess._speech_end_clock = sess.clock.now()
    sess._apply(sess.turns.commit(sess.input_time))


async def _on_input_clear(sess: Session, event: dict[str, Any]) -> None:
    if sess.turns.in_utterance:
        sess.turns.final("")
    sess._discard_utterance()


async def _on_item_truncate(sess: Session, event: dict[str, Any]) -> None:
    item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
    if not isinstance(item_id, str):
        raise InvalidEvent("item_id is required", param="item_id")
    if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
        raise InvalidEvent("audio_end_ms must be a non-negative integer", param="audio_end_ms")
    candidates = [sess._reply, *sess._finished]
    reply = next((r for r in candidates if r is not None and r.item_id == item_id), None)
    item = sess.conversation.get(item_id)
    if reply is None and (item is None or item.role != "assistant"):
        raise InvalidEvent(
            f"no assistant audio item {item_id!r}", code="item_not_found", param="item_id"
        )
    if reply is None:
        raise InvalidEvent(f"item {item_id!r} has no audio to truncate", param="item_id")
    position = min(reply.total_samples, end_ms * reply.rate // 1000)
    if reply.status == "in_progress":
        reply.played = min(reply.played, position)
        sess._interrupt_reply(reply.id, "client_cancelled")
    heard = reply.heard_text(position)
    target = sess.conversation.get(item_id)
    if target is not None:
        target.text, target.interrupted = heard, True
    sess.emit(ev.item_truncated(item_id, end_ms, heard))


async def _on_item_delete(sess: Session, event: dict[str, Any]) -> None:
    item_id = event.get("item_id")
    if not isinstance(item_id, str) or not sess.conversation.delete(item_id):
        raise InvalidEvent(f"no item {item_id!r}", code="item_not_found", param="item_id")
    sess.emit(ev.item_deleted(item_id))


async def _on_output_clear(sess: Session, event: dict[str, Any]) -> None:
    reply = sess.audio_out.clear()
    if reply is not None:
        sess.emit(ev.output_audio_cleared(reply.id))


_HANDLERS = {
    "session.update": _on_session_update,
    "conversation.item.create": _on_item_create,
    "response.create": _on_response_create,
    "response.cancel": _on_response_cancel,
    "input_audio_buffer.commit": _on_input_commit,
    "input_audio_buffer.clear": _on_input_clear,
    "conversation.item.truncate": _on_item_truncate,
    "conversation.item.delete": _on_item_delete,
    "output_audio_buffer.clear": _on_output_clear,
}
