"""Coming back after a dropped connection: single-use, expiring resume tokens bound to the
credential that opened the session, and the hand-over of a session to a new socket.

:class:`ResumeRegistry` is pure (the time is an argument): :meth:`~ResumeRegistry.issue`
gives a live session a token (its previous token stops working), :meth:`~ResumeRegistry.park`
starts the window when its connection drops, :meth:`~ResumeRegistry.claim` hands the session
to whoever presents the token in time with the same credential, once.
:class:`Handover` passes the new socket to the task that owns the session, which serves
it in place of the old one; the claiming request waits until that socket is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
W = TypeVar("W")

WINDOW_S = 60.0  # how long a dropped session waits for its client
MAX_TOKENS = 1024  # live tokens kept (overflow: the oldest is forgotten, its session unresumable)


class ResumeRefused(Exception):
    """A resume that cannot be granted: ``status`` (HTTP) and ``code`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def binding(credential: str | None, *, is_token: bool) -> str:
    """What a session is bound to: the API key that opened it (hashed), or, for a session
    opened with a short-lived session token (single-use, so a page reconnecting holds a new
    one), any valid token of this server; ``""`` on a server without a key."""
    if credential is None:
        return ""
    if is_token:
        return "token"
    return hashlib.sha256(credential.encode("utf-8")).hexdigest()


@dataclass
class _Entry(Generic[T]):
    owner: T
    binding: str
    parked_until: float | None = None  # None while its connection is up


class ResumeRegistry(Generic[T]):
    """Resume tokens, pure. Overflow: past ``max_tokens`` the oldest token is forgotten."""

    def __init__(self, window_s: float = WINDOW_S, max_tokens: int = MAX_TOKENS) -> None:
        self.window_s = window_s
        self.max_tokens = max_tokens
        self._tokens: OrderedDict[str, _Entry[T]] = OrderedDict()
        self._by_owner: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, owner: T, bound_to: str) -> str:
        """A new token for ``owner`` (its previous token, if any, stops working)."""
        self.forget(owner)
        token = "rsm_" + secrets.token_urlsafe(24)
        self._tokens[token] = _Entry(owner, bound_to)
        self._by_owner[id(owner)] = token
        while len(self._tokens) > self.max_tokens:
            old, entry = self._tokens.popitem(last=False)
            self._by_owner.pop(id(entry.owner), None)
        return token

    def park(self, owner: T, now: float) -> float | None:
        """``owner``'s connection dropped: its token works until ``now + window_s``
        (returned; ``None`` if it has no token)."""
        token = self._by_owner.get(id(owner))
        if token is None:
            return None
        until = now + self.window_s
        self._tokens[token].parked_until = until
        return until

    def claim(self, token: str, bound_to: str, now: float) -> T:
        """The session of ``token``, once. Raises :class:`ResumeRefused`: 404 for a token
        that is unknown or already used, 410 for an expired one (then forgotten), 403 for
        a credential other than the one that opened the session (the token stays valid
        for its owner)."""
        entry = self._tokens.get(token)
        if entry is None:
            raise ResumeRefused(404, "resume_token_invalid", "unknown or already used resume token")
        if entry.parked_until is not None and now > entry.parked_until:
            self.forget(entry.owner)
            raise ResumeRefused(410, "resume_token_expired", "the resume window has passed")
        if not hmac.compare_digest(entry.binding, bound_to):
            raise ResumeRefused(
                403,
                "resume_token_forbidden",
                "this session was opened with another credential",
            )
        self.forget(entry.owner)  # single use: the resumed connection gets a new token
        return entry.owner

    def forget(self, owner: T) -> None:
        token = self._by_owner.pop(id(owner), None)
        if token is not None:
            self._tokens.pop(token, None)


class Handover(Generic[W]):
    """Sockets handed to the task that owns a session, one at a time (latest wins: a newer
    resume replaces a pending one, whose request ends at once)."""

    def __init__(self) -> None:
        self._next: tuple[W, asyncio.Event] | None = None
        self._ready = asyncio.Event()

    @property
    def pending(self) -> bool:
        return self._next is not None

    def offer(self, socket: W) -> asyncio.Event:
        """Hand ``socket`` over; the returned event is set when the owner is done with it
        (or never took it)."""
        if self._next is not None:
            self._next[1].set()
        done = asyncio.Event()
        self._next = (socket, done)
        self._ready.set()
        return done

    def take(self) -> tuple[W, asyncio.Event] | None:
        taken, self._next = self._next, None
        self._ready.clear()
        return taken

    async def wait(self, timeout_s: float, stop: asyncio.Event) -> tuple[W, asyncio.Event] | None:
        """The next socket, or ``None`` after ``timeout_s`` or once ``stop`` is set.
        Cancelling it is safe."""
        if self._next is None:
            stopped = asyncio.ensure_future(stop.wait())
            ready = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait(
                    [stopped, ready], timeout=timeout_s, return_when="FIRST_COMPLETED"
                )
            finally:
                for task in (stopped, ready):
                    task.cancel()
                await asyncio.gather(stopped, ready, return_exceptions=True)
            if stop.is_set():
                return None
        return self.take()

    def release(self) -> None:
        """The owner is gone: a pending socket's request ends."""
        taken = self.take()
        if taken is not None:
            taken[1].set()
