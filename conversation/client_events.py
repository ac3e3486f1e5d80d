"""The one set of handlers for client events: typed events of :mod:`conversation.protocol`
acting on a session, whatever the transport.

Every transport parses with :func:`~conversation.protocol.parse_client_event` and hands the
typed event to ``session.handle_client_event``, which calls :func:`handle`. Anything wrong
becomes a typed ``error`` event and the session goes on. What only a transport can do stays
there: the WebSocket decodes ``input_audio_buffer.append`` in the client's format (here an
append is refused: on WebRTC audio travels on the media track).

The handlers see the session through :class:`SessionCore`, a Protocol, so this module
imports neither :mod:`conversation.session` nor anything that imports it (no import cycle).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from conversation import events as ev
from conversation import responses
from conversation.history import Conversation, Item
from conversation.mcp import SessionMcp
from conversation.playout import AudioOutput
from conversation.protocol import (
    ClientEvent,
    ImageAppend,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    McpApprovalResponseItem,
    MessageItem,
    OutputAudioClear,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)
from conversation.settings import settings_for
from conversation.tools import SessionTools
from seetalk.config import SessionSettings
from seetalk.errors import InvalidEvent, SeetalkError
from vision.images import decode_data_url_async, decode_image_async


class SessionCore(Protocol):
    """What the handlers use of a :class:`~conversation.session.Session` (public names only)."""

    settings: SessionSettings
    conversation: Conversation
    audio_out: AudioOutput
    rest: responses.SessionRest
    tools: SessionTools
    mcp: SessionMcp

    def emit(self, event: dict[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def apply_settings(self, new: SessionSettings) -> None: ...

    def push_video(self, frame: np.ndarray, t: float | None = None) -> None: ...

    def respond_now(self) -> str | None: ...

    def cancel_reply(self, reason: str = "client_cancelled") -> None: ...

    def run_approved(self) -> bool: ...

    def truncate_item(self, item_id: str, end_ms: int) -> str: ...

    async def commit_input(self) -> None: ...

    def clear_input(self) -> None: ...


async def handle(sess: SessionCore, event: ClientEvent) -> None:
    """Act on one parsed client event. Anything wrong becomes an ``error`` event carrying
    the event's ``event_id``; the session goes on. Cancelling it is safe."""
    try:
        await _dispatch(sess, event)
    except SeetalkError as exc:
        exc.event_id = exc.event_id or event.event_id
        sess.emit(ev.error(exc.to_event_error()))


async def _dispatch(sess: SessionCore, event: ClientEvent) -> None:
    match event:
        case SessionUpdate():
            _session_update(sess, event)
        case ItemCreate():
            await _item_create(sess, event)
        case ItemRetrieve(item_id=item_id):
            _item_retrieve(sess, item_id)
        case ItemTruncate(item_id=item_id, audio_end_ms=end_ms):
            heard = sess.truncate_item(item_id, end_ms)
            sess.emit(ev.item_truncated(item_id, end_ms, heard))
        case ItemDelete(item_id=item_id):
            if not sess.conversation.delete(item_id):
                raise InvalidEvent(f"no item {item_id!r}", code="item_not_found", param="item_id")
            sess.emit(ev.item_deleted(item_id))
        case ResponseCreate():
            if sess.settings.kind == "transcription":
                raise InvalidEvent(
                    "a transcription session gives transcripts only, no responses",
                    code="unsupported",
                    param="type",
                )
            sess.mcp.check(event.tool_options.mcp, response=True)
            sess.tools.next_response(event.tool_options)  # this response's tools
            sess.mcp.next_response(event.tool_options.mcp)  # ... and MCP servers
            if sess.run_approved():  # approved MCP calls run first (conversation/mcp.py)
                return
            if responses.is_default(event):
                sess.respond_now()
            else:  # options, text, out of band, custom input: conversation/responses.py
                await sess.rest.create(event)
        case ResponseCancel():
            sess.cancel_reply("client_cancelled")
        case InputAudioCommit():
            await sess.commit_input()  # queued audio first, then the utterance ends
        case InputAudioClear():
            sess.clear_input()
        case OutputAudioClear():
            reply = sess.audio_out.clear()
            if reply is not None:
                sess.emit(ev.output_audio_cleared(reply.id))
        case ImageAppend(image=image):
            sess.push_video(await decode_image_async(image))
        case InputAudioAppend():
            raise InvalidEvent(
                "input_audio_buffer.append carries audio on the WebSocket API only; over "
                "WebRTC the microphone audio travels on the media track",
                code="unsupported",
                param="type",
            )
        case _:
            raise InvalidEvent(
                f"event type {event.type!r} is not supported here", code="unsupported"
            )


def _session_update(sess: SessionCore, event: SessionUpdate) -> None:
    """Validate (the parser checked each value; :func:`settings_for` the combination), apply
    the whole update or refuse it whole, and say ``session.updated`` only once applied."""
    new = settings_for(sess.settings, event)
    sess.tools.check(event.tool_options)  # before anything applies: refused whole
    sess.mcp.check(event.tool_options.mcp)  # labels, allowed URLs, the per-session bound
    sess.apply_settings(new)
    sess.tools.update(event.tool_options)
    sess.emit(ev.session_updated(sess.describe()))
    sess.mcp.update(event.tool_options.mcp)  # mcp_list_tools items (conversation/mcp.py)


async def _item_create(sess: SessionCore, event: ItemCreate) -> None:
    item = event.item
    if isinstance(item, McpApprovalResponseItem):  # the answer to an approval request
        answer = sess.mcp.answer(item)
        previous = sess.conversation.add(answer)
        sess.emit(ev.item_added(answer.to_event_item(), previous))
        sess.emit(ev.item_done(answer.to_event_item(), previous))
        return
    if not isinstance(item, MessageItem):  # function_call / function_call_output
        new = sess.tools.add_item(sess.conversation, item)  # conversation/tools.py
        previous = sess.conversation.add(new)
        sess.emit(ev.item_added(new.to_event_item(), previous))
        sess.emit(ev.item_done(new.to_event_item(), previous))
        return
    texts: list[str] = []
    images: list[bytes] = []
    for i, part in enumerate(item.content):
        if part.type in ("input_text", "output_text"):
            texts.append(part.text or "")
        elif part.type == "input_image":
            images.append(await decode_data_url_async(part.image_url))  # off the loop
        elif part.transcript is not None:  # input_audio / output_audio
            texts.append(part.transcript)
        else:
            raise InvalidEvent(
                f"{part.type} content needs a 'transcript': seetalk does not transcribe "
                "audio inside items",
                code="unsupported",
                param=f"item.content[{i}].transcript",
            )
    new = Item(
        item.id or ev.new_id("item"),
        "assistant" if item.role == "assistant" else "user",
        " ".join(texts),
        images=tuple(images),
        source="text",
    )
    previous = sess.conversation.add(new)
    sess.emit(ev.item_added(new.to_event_item(), previous))
    sess.emit(ev.item_done(new.to_event_item(), previous))


def _item_retrieve(sess: SessionCore, item_id: str) -> None:
    item = sess.conversation.get(item_id)
    if item is None:
        raise InvalidEvent(
            f"no item {item_id!r} in the conversation", code="item_not_found", param="item_id"
        )
    sess.emit(
        {
            "type": "conversation.item.retrieved",
            "event_id": ev.new_id("event"),
            "item": item.to_event_item(),
        }
    )
