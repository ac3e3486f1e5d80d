"""The conversation history: items in order, as the person experienced them.

An interrupted assistant message holds only the words that were played (or, over the
WebSocket API, what the client reports as heard with ``conversation.item.truncate``),
and is marked interrupted.

Memory is bounded per session: at most ``MAX_ITEMS`` items (the oldest go first) and at most
``MAX_IMAGE_BYTES`` of image bytes in all (the oldest images go first; their items and text
stay, so the model only loses the old pictures, which it is not shown anyway: images go
with the newest user message that has them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conversation import events as ev
from conversation import tool_items
from llm.backend import ChatMessage


@dataclass
class Item:
    id: str
    role: str  # "user" | "assistant"
    text: str
    interrupted: bool = False
    images: tuple[bytes, ...] = field(default=(), repr=False)
    source: str = "audio"  # "audio" | "text" | "text_reply" (a text-only response)
    notes: str = ""  # scene notes of the camera frames, for a model that cannot see
    # a tool call (role "assistant") or its output (``text``): conversation/tool_items.py
    kind: str = "message"  # "message" | "function_call" | "function_call_output" | "mcp_*"
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    data: dict = field(default_factory=dict)  # MCP items' protocol fields (tool_items.py)

    def to_event_item(self) -> dict:
        if self.kind in tool_items.MCP_KINDS:
            return tool_items.mcp_event_item(self.kind, self.id, self.data)
        if self.kind != "message":
            status = "incomplete" if self.interrupted else "completed"
            return tool_items.event_item(
                self.kind, self.id, self.call_id, self.name, self.arguments, self.text, status
            )
        if self.role == "user":
            if self.source == "text":
                return ev.user_item(self.id, text=self.text, images=len(self.images))
            return ev.user_item(self.id, transcript=self.text, images=len(self.images))
        status = "incomplete" if self.interrupted else "completed"
        modality = "output_text" if self.source == "text_reply" else "output_audio"
        return ev.assistant_item(self.id, self.text, status=status, modality=modality)


MAX_ITEMS = 200
MAX_IMAGE_BYTES = 32 * 1024 * 1024


class Conversation:
    """Bounded history: at most ``max_items`` items and ``max_image_bytes`` of images."""

    def __init__(self, max_items: int = MAX_ITEMS, max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.items: list[Item] = []
        self.max_items = max_items
        self.max_image_bytes = max_image_bytes
        self.images_dropped = 0  # images removed from history by the byte budget
        self._window_from: str | None = None  # the first item the model sees (messages())

    @property
    def image_bytes(self) -> int:
        return sum(len(image) for item in self.items for image in item.images)

    @property
    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item) -> str | None:
        """Append ``item``; returns the id of the item before it."""
        previous = self.last_id
        self.items.append(item)
        del self.items[: max(0, len(self.items) - self.max_items)]
        self._trim_images()
        return previous

    def _trim_images(self) -> None:
        """Drop the oldest images until the history holds at most ``max_image_bytes``."""
        excess = self.image_bytes - self.max_image_bytes
        for item in self.items:
            if excess <= 0:
                return
            while item.images and excess > 0:
                excess -= len(item.images[0])
                item.images = item.images[1:]
                self.images_dropped += 1

    def get(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    def delete(self, item_id: str) -> bool:
        before = len(self.items)
        self.items = [i for i in self.items if i.id != item_id]
        return len(self.items) != before

    def _window_start(self, recent: list[Item], turns: int) -> int:
        """Where the model's view of ``recent`` begins: it holds at most ``turns`` items.
        The start stays where it was while the items after it fit, and when they no longer
        do it moves on to leave half of ``turns``. A window sliding by one item every turn
        changes the model input from its first message on, so llama.cpp re-read the whole
        window at every reply (12 items: 1-2 s at four sessions on 2 cores); now it re-reads
        it once every ``turns / 4`` or so exchanges. ``turns`` 0: everything, as before."""
        if turns <= 0:
            return 0
        ids = [i.id for i in recent]
        start = ids.index(self._window_from) if self._window_from in ids else 0
        if len(recent) - start > turns:
            start = len(recent) - max(1, turns // 2)
        self._window_from = ids[start] if start < len(ids) else None
        return start

    def messages(
        self, instructions: str, turns: int, *, with_images: bool = True
    ) -> list[ChatMessage]:
        """The chat the model sees: the instructions, then at most the last ``turns`` items
        (:meth:`_window_start`). Images go only with the newest user message that has them
        (older frames cost context)."""
        recent = [i for i in self.items if i.text.strip() or i.images or i.kind != "message"]
        recent = recent[self._window_start(recent, turns) :]
        newest_with_images = next((i.id for i in reversed(recent) if i.images), None)
        out = [ChatMessage("system", instructions)]
        for item in recent:
            if item.kind != "message":  # calls and outputs, in order
                tool_items.append_message(
                    out, item.kind, item.call_id, item.name, item.arguments, item.text
                )
                continue
            text = item.text.strip()
            if item.notes:
                text = f"{item.notes}\n{text}"
            if item.role == "assistant" and item.interrupted:
                text = f"{text} ..." if text else "..."
            images = item.images if with_images and item.id == newest_with_images else ()
            role = "user" if item.role == "user" else "assistant"
            if out[-1].role == role and role == "user" and not out[-1].images:
                out[-1] = ChatMessage("user", f"{out[-1].text}\n{text}", images)
            else:
                out.append(ChatMessage(role, text or "...", images))  # type: ignore[arg-type]
        return out
