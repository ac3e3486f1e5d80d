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

Capacity is measured, not only counted: a session source that reports its model roles' load
(:class:`ReportsLoad`: ``conversation.session.Sessions``) feeds :class:`CapacityGate`, a pure
object that turns the roles' queue depths and busy seconds into a verdict: a role whose
must-run work (finals, first clauses) queues up, or that was busy more than
``max_utilisation`` of the last ``window_s``, refuses new sessions (503 ``overloaded`` with
``Retry-After``); ``/healthz`` and ``/metrics`` report the load and the capacity estimate
(the sessions the busiest role could carry at ``max_utilisation``). An overloaded verdict
holds for ``hold_s`` (the ``Retry-After``) after the last moment it was true: queues come and
go within a turn, and a server that just said "full" does not admit the next offer a second
later only because its queue happened to be empty then.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from conversation.contract import SessionSource
from seetalk.errors import Unauthorized
from seetalk.memory import HeapTrimmer
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
    """A session refused before it opened: answered with ``status`` and an error body
    (and, with ``retry_after``, a ``Retry-After`` header in seconds)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        type_: str = "server_error",
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.type = status, code, message, type_
        self.retry_after = retry_after


@runtime_checkable
class ReportsLoad(Protocol):
    """A session source that reports each model role's scheduler statistics
    (``models.scheduler.RoleScheduler.stats``): ``queued`` (depth by priority),
    ``running``, ``busy_s`` (seconds of work done, cumulative), ``workers``."""

    def load(self) -> Mapping[str, Mapping[str, Any]]: ...


MUST_RUN = ("final", "first")  # queued work a person is waiting for


@dataclass(frozen=True)
class LoadVerdict:
    overloaded: bool
    reason: str
    utilisation: dict[str, float]  # per role, over the window
    capacity: int | None  # sessions the busiest role could carry; None: no load measured


class CapacityGate:
    """Pure: role statistics and times in, a verdict out. ``observe`` a snapshot whenever
    one is taken (each admission, ``/healthz``, ``/metrics``); utilisation is measured
    between the oldest snapshot in the last ``window_s`` and the newest. A verdict is taken
    at the newest snapshot's time; overloaded stays true ``hold_s`` (default
    ``retry_after_s``) past the last snapshot that found it so."""

    def __init__(
        self,
        *,
        window_s: float = 10.0,
        max_utilisation: float = 0.85,
        max_must_run_queued: int = 2,
        retry_after_s: int = 5,
        hold_s: float | None = None,
    ) -> None:
        self.window_s = window_s
        self.max_utilisation = max_utilisation
        self.max_must_run_queued = max_must_run_queued
        self.retry_after_s = retry_after_s
        self.hold_s = float(retry_after_s if hold_s is None else hold_s)
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=256)
        self._over_until = float("-inf")  # overloaded holds until then (snapshot time)
        self._over_reason = ""

    def observe(self, now: float, load: Mapping[str, Mapping[str, Any]]) -> None:
        busy = {
            role: float(s.get("busy_s", 0.0)) / max(1, int(s.get("workers", 1)))
            for role, s in load.items()
        }
        self._samples.append((now, busy))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def verdict(self, load: Mapping[str, Mapping[str, Any]], sessions: int) -> LoadVerdict:
        now = self._samples[-1][0] if self._samples else None
        v = self._verdict_now(load, sessions)
        if now is None:
            return v
        if v.overloaded:
            self._over_until, self._over_reason = now + self.hold_s, v.reason
            return v
        if now < self._over_until:
            reason = f"{self._over_reason}, {now - (self._over_until - self.hold_s):.0f} s ago"
            return LoadVerdict(True, reason, v.utilisation, v.capacity)
        return v

    def _verdict_now(self, load: Mapping[str, Mapping[str, Any]], sessions: int) -> LoadVerdict:
        util: dict[str, float] = {}
        if len(self._samples) >= 2:
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
            if t1 > t0:
                util = {r: max(0.0, b1[r] - b0.get(r, 0.0)) / (t1 - t0) for r in b1}
        for role, stats in load.items():
            queued = stats.get("queued", {})
            waiting = sum(int(queued.get(p, 0)) for p in MUST_RUN)
            if waiting > self.max_must_run_queued:
                return LoadVerdict(
                    True, f"{waiting} jobs waiting on {role}", util, self._capacity(util, sessions)
                )
        busiest = max(util.items(), key=lambda kv: kv[1], default=None)
        capacity = self._capacity(util, sessions)
        if busiest is not None and busiest[1] > self.max_utilisation:
            return LoadVerdict(
                True,
                f"{busiest[0]} busy {busiest[1]:.0%} of the last {self.window_s:.0f} s",
                util,
                capacity,
            )
        return LoadVerdict(False, "", util, capacity)

    def _capacity(self, util: Mapping[str, float], sessions: int) -> int | None:
        peak = max(util.values(), default=0.0)
        if sessions == 0 or peak <= 0.02:
            return None  # nothing measured: the configured maximum applies
        return int(sessions * self.max_utilisation / peak)


class Admission:
    """The session table and the gate in front of it."""

    def __init__(
        self,
        *,
        max_sessions: int,
        auth: Authenticator,
        metrics: Metrics,
        clock: Callable[[], float],
        gate: CapacityGate | None = None,
    ):
        self.max_sessions = max_sessions
        self.gate = gate or CapacityGate()
        self.auth = auth
        self.metrics = metrics
        self.clock = clock
        self.peers: dict[str, LiveSession] = {}
        self.starting = 0
        self.source: SessionSource | None = None
        self.source_error: str | None = None
        self.draining = False  # SIGTERM: no new sessions; open ones run on (server.app)
        self.trimmer = HeapTrimmer()  # freed memory back to the system as sessions end

    @property
    def status(self) -> str:
        if self.draining:
            return "draining"
        if self.source is not None:
            return "ready"
        return "failed" if self.source_error else "loading"

    def load(self) -> tuple[Mapping[str, Mapping[str, Any]], LoadVerdict | None]:
        """The model roles' statistics now and the gate's verdict (empty and ``None`` for
        a source that reports no load). Observes the snapshot."""
        if not isinstance(self.source, ReportsLoad):
            return {}, None
        stats = self.source.load()
        self.gate.observe(self.clock(), stats)
        return stats, self.gate.verdict(stats, len(self.peers))

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
                retry_after=self.gate.retry_after_s,
            )
        _, verdict = self.load()
        if verdict is not None and verdict.overloaded and self.peers:
            self.metrics.session_rejected("overloaded")
            raise Refused(
                503,
                "overloaded",
                f"the server is at capacity ({verdict.reason}); try again later",
                retry_after=self.gate.retry_after_s,
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
            self.trimmer.request(self.clock())


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
