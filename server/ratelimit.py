"""A token bucket: pure, time is an argument; and the client-event limits of every transport.

Each WebSocket connection and each WebRTC peer holds one bucket for client messages (and the
WebSocket one more for appended audio, in seconds of audio per second of wall time), so a
client can neither flood memory with audio nor the event loop with events. Overflow policy:
an event that finds too few tokens is refused whole (the caller answers it with a
``rate_limit_exceeded`` error); nothing is queued.
"""

from __future__ import annotations

from typing import Final

# The same limits on both transports (docs/realtime.md, "Limits").
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024  # larger client messages: ``message_too_large``
EVENTS_PER_S: Final = 200.0  # client messages per second, sustained ...
EVENTS_BURST: Final = 400.0  # ... and in one burst


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full.

    >>> b = TokenBucket(rate=1.0, burst=2.0)
    >>> b.take(2.0, now=0.0), b.take(1.0, now=0.5), b.take(1.0, now=1.0)
    (True, False, True)
    """

    def __init__(self, rate: float, burst: float, *, now: float = 0.0) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._t = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many; else take none and return False.

        An amount above ``burst`` can never be taken.
        """
        self._refill(now)
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True

    def _refill(self, now: float) -> None:
        if now > self._t:
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
