"""What a transport may call on a session, and what it receives: the contract as code.

Transports (``server/webrtc.py``, ``server/realtime_ws.py``, the file session) hold a
:class:`TransportSession` and never reach past it. The real
:class:`~conversation.session.Session` and the media-path stand-in
:class:`~conversation.replay.ReplaySession` both implement it; mypy checks that they do
(see the assignments at the end of those modules).

- Input: ``push_audio`` (non-blocking, bounded: the oldest audio is dropped when the session
  falls behind), ``push_video`` (latest wins), ``camera_stopped``, and
  ``handle_client_event`` with an event of the one parser (:mod:`conversation.protocol`).
- Output: ``events`` (bounded; the oldest is dropped when the transport stalls) and
  ``audio_out``: ``pull(n)`` for paced playout (WebRTC's 20 ms frames) or ``read()`` for
  push playout (the WebSocket API), never both in one session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from conversation.protocol import ClientEvent
    from seetalk.config import SessionSettings


class AudioChunk(Protocol):
    """One chunk of push playout: int16 samples of one reply's item, from ``start``."""

    @property
    def reply_id(self) -> str: ...

    @property
    def item_id(self) -> str: ...

    @property
    def samples(self) -> np.ndarray: ...

    @property
    def start(self) -> int: ...


class Playout(Protocol):
    """The session's output audio, at ``settings.output_rate``."""

    @property
    def buffered_samples(self) -> int: ...

    def pull(self, n: int) -> np.ndarray:
        """Exactly ``n`` int16 samples (silence when nothing plays); paced playout."""
        ...

    async def read(self) -> AudioChunk:
        """The next chunk as soon as it is synthesized; push playout. Cancelling is safe."""
        ...


class EventSource(Protocol):
    async def get(self) -> dict[str, Any]:
        """The next server event (OpenAI Realtime shape). Cancelling is safe."""
        ...


@runtime_checkable
class TransportSession(Protocol):
    """One person's conversation, as a transport sees it."""

    @property
    def id(self) -> str: ...

    @property
    def settings(self) -> SessionSettings: ...

    @property
    def events(self) -> EventSource: ...

    @property
    def audio_out(self) -> Playout: ...

    async def start(self) -> None:
        """Start the session's tasks and emit ``session.created``."""
        ...

    async def aclose(self) -> None:
        """End every task the session owns. Idempotent; a caller's cancellation is
        re-raised after the clean-up."""
        ...

    def push_audio(self, samples: np.ndarray, rate: int, channels: int = 1) -> None: ...

    def push_video(self, frame: np.ndarray, t: float | None = None) -> None: ...

    def camera_stopped(self) -> None: ...

    async def handle_client_event(self, event: ClientEvent) -> None:
        """Act on one parsed client event; anything wrong becomes an ``error`` event and the
        session goes on."""
        ...


@runtime_checkable
class SessionSource(Protocol):
    """What the server opens sessions from: loaded models, or a stand-in."""

    def new_session(
        self, settings: SessionSettings | None = None, *, playout: str = "paced"
    ) -> TransportSession: ...

    async def aclose(self) -> None: ...
