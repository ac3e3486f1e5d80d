"""One admission path for every transport: credential, readiness, capacity, accounting.

A WebRTC offer and a WebSocket connection both go through :meth:`Admission.reserve`, which
in one synchronous step (so no other request can slip in between) verifies the credential
without spending it, checks that the models are ready and that a slot is free, and only then
spends the token and counts the slot as starting. The transport then builds its session
inside the returned :class:`Slot` and calls :meth:`Slot.admit` with the live session; if it
fails first, leaving the ``async with`` block frees the slot, refunds the token and counts the
refusal. A refusal is a :class:`Refused` (HTTP status, code, message); a 503 at capacity
leaves a single-use token usable.

``peers`` is the live-session table of all transports (``/sessions``, ``max_sessions``,
hang-up, shutdown); a session leaves it, counted by its end reason, when it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from conversation.contract import SessionSource
from seetalk.errors import Unauthorized
from server.auth import Authenticator, Grant
from server.metrics import Metrics


class LiveSession(Protocol):
    """What the server holds of an open session of any transport."""

    @property
    def id(self) -> str: ...

    @property
    def close_reason(self) -> str | None: ...

    @property
    def on_closed(self) -> list[Callable[[Any], None]]: ...

    async def close(self, reason: str = "closed") -> None: ...

    def stats(self) -> dict[str, Any]: ...


class Refused(Exception):
    """A session refused before it opened: answered with ``status`` and an error body."""

    def __init__(self, status: int, code: str, message: str, type_: str = "server_error"):
        super().__init__(message)
        self.status, self.code, self.message, self.type = status, code, message, type_


class Admission:
    """The session table and the gate in front of it."""

    def __init__(
        self,
        *,
        max_sessions: int,
        auth: Authenticator,
        metrics: Metrics,
        clock: Callable[[], float],
    ):
        self.max_sessions = max_sessions
        self.auth = auth
        self.metrics = metrics
        self.clock = clock
        self.peers: dict[str, LiveSession] = {}
        self.starting = 0
        self.source: SessionSource | None = None
        self.source_error: str | None = None
        self.draining = False  # SIGTERM: no new sessions; open ones run on (server.app)

    @property
    def status(self) -> str:
        if self.draining:
            return "draining"
        if self.source is not None:
            return "ready"
        return "failed" if self.source_error else "loading"

    def reserve(self, credential: str | None) -> Slot:
        """A slot for one new session, or :class:`Refused` (401, 503). Synchronous."""
        now = self.clock()
        try:
            grant = self.auth.verify(credential, now)
        except Unauthorized as exc:
            self.metrics.session_rejected("unauthorized")
            raise Refused(401, exc.code, exc.message, exc.type) from exc
        if self.source is None:
            self.metrics.session_rejected("not_ready")
            state = "failed to load: " + self.source_error if self.source_error else "loading"
            raise Refused(503, "not_ready", f"the models are {state}; see /healthz")
        if self.draining:
            self.metrics.session_rejected("draining")
            raise Refused(
                503,
                "draining",
                "this server is shutting down and takes no new sessions; connect again "
                "(a balancer sends you to another instance)",
            )
        if len(self.peers) + self.starting >= self.max_sessions:
            self.metrics.session_rejected("capacity")
            raise Refused(
                503,
                "session_limit",
                f"the server holds its maximum of {self.max_sessions} sessions; try again later",
            )
        self.auth.spend(grant, now)
        self.starting += 1
        return Slot(self, self.source, grant)

    def refuse(self, reason: str) -> None:
        """Count a refusal that happened before :meth:`reserve` (origin, bad input)."""
        self.metrics.session_rejected(reason)

    async def close_all(self, reason: str = "server_shutdown") -> None:
        await asyncio.gather(
            *(p.close(reason) for p in list(self.peers.values())), return_exceptions=True
        )

    def _forget(self, live: Any) -> None:
        key, reason = live.id, live.close_reason
        if self.peers.get(key) is live:
            del self.peers[key]
            self.metrics.session_ended(reason or "closed")


class Slot:
    """A reserved place for one session. Use as ``async with``; call :meth:`admit` once the
    session is live. ``reason`` names the refusal counted if the block ends without it."""

    def __init__(self, admission: Admission, source: SessionSource, grant: Grant):
        self.admission = admission
        self.source = source
        self.reason = "start_failed"
        self._grant = grant
        self._open = True
        self.admitted = False

    def admit(self, live: LiveSession) -> None:
        """Enter ``live`` in the session table; it leaves it when it closes."""
        adm = self.admission
        self._release()
        adm.peers[live.id] = live
        self.admitted = True
        adm.metrics.session_started()
        live.on_closed.append(adm._forget)

    def _release(self) -> None:
        if self._open:
            self._open = False
            self.admission.starting -= 1

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.admitted:
            return
        self._release()
        self.admission.auth.refund(self._grant)  # the token opened nothing
        self.admission.metrics.session_rejected(
            "cancelled" if isinstance(exc, asyncio.CancelledError) else self.reason
        )
