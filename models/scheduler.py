"""Shared compute, scheduled: one :class:`RoleScheduler` per model role, used by every session.

Work is ordered by what a person is waiting for (:class:`Priority`): the final transcript of
a finished turn, then the first clause of a reply, then the rest of replies, then background
work (partial transcripts, scene notes). Within a priority, sessions share the role fairly:
the session that has used the least of it goes first (start-time fair queueing on the
seconds each session's jobs ran). Skippable work (partials) is dropped rather than run late.

The decisions are the pure :class:`Schedule` (jobs and times in, the next job out; tested on
a fake clock in tests/test_scheduler.py). :class:`RoleScheduler` is the thin threaded glue:
an :class:`concurrent.futures.Executor`, so ``loop.run_in_executor`` works with it, with
:meth:`RoleScheduler.lane` for work tagged with a session and a priority.

Bounds and overflow policies (per role):

- each session holds at most ``per_session`` queued jobs. A new skippable job replaces the
  session's queued one of the same kind (latest wins); a session over its bound loses its
  oldest queued skippable job; a must-run job (a final) over the bound with nothing
  skippable to drop raises :class:`~seetalk.errors.SchedulerFull` (the callers keep far below
  it: a recognizer has one final in flight, a reply one clause), so the queue's length is at
  most ``per_session`` times the sessions that admission lets in;
- a skippable job that waited longer than ``max_wait_s`` is dropped when the role gets to
  it (:class:`~seetalk.errors.Skipped`): a partial that late is worth less than the next;
- with ``yield_to`` (the partial model yields to the final model: both share the cores),
  skippable work does not start while the other role has must-run work queued or running.

Must-run jobs are never dropped. Cancelling the future of a queued job removes it.

Work that is not one blocking call (a language model's streamed generation, whose tokens
the event loop consumes) takes the role for its whole length with :meth:`RoleScheduler.hold`:
an async context that waits for its turn, keeps a worker until it exits, and is charged to
its session for that time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from seetalk.errors import SchedulerFull, Skipped


class Priority(enum.IntEnum):
    """Lower goes first."""

    FINAL = 0  # the final transcript of a finished turn; the input path (VAD, end of turn)
    FIRST = 1  # the first clause (first tokens) of a reply
    REST = 2  # the rest of a reply
    BACKGROUND = 3  # partial transcripts, scene notes


@dataclass(eq=False)
class Job:
    """One unit of work on a role. ``payload`` is the glue's (the call and its future)."""

    session: str
    priority: Priority
    kind: str = "job"
    skippable: bool = False
    enqueued: float = 0.0
    seq: int = 0
    payload: Any = None
    started: float | None = None


@dataclass
class _Account:
    vtime: float = 0.0  # seconds of the role this session used (fair-share clock)
    queued: list[Job] = field(default_factory=list)
    running: int = 0
    running_must: int = 0  # of ``running``, the jobs that are not skippable


class Schedule:
    """The pure decisions of one role: which queued job runs next. No threads, no clock."""

    def __init__(self, *, per_session: int = 8, max_wait_s: float = 1.0) -> None:
        self.per_session = per_session
        self.max_wait_s = max_wait_s
        self._accounts: dict[str, _Account] = {}
        self._seq = itertools.count()
        self.skipped = 0
        self.done = 0
        self.wait_s: dict[Priority, float] = dict.fromkeys(Priority, 0.0)  # summed
        self.started_n: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self.busy_s = 0.0

    # -- state -----------------------------------------------------------------------------

    def queued(self) -> list[Job]:
        return [j for a in self._accounts.values() for j in a.queued]

    def depth(self) -> dict[str, int]:
        out = {p.name.lower(): 0 for p in Priority}
        for j in self.queued():
            out[j.priority.name.lower()] += 1
        return out

    @property
    def running(self) -> int:
        return sum(a.running for a in self._accounts.values())

    def urgent(self) -> bool:
        """Must-run work is queued or running (a role that yields to this one waits)."""
        return any(
            a.running_must or any(not j.skippable for j in a.queued)
            for a in self._accounts.values()
        )

    # -- pushing and popping -----------------------------------------------------------------

    def push(self, job: Job, now: float) -> list[Job]:
        """Queue ``job``; returns the jobs this drops (each to be failed with ``Skipped``),
        which may include ``job`` itself. Raises :class:`SchedulerFull` for a must-run job
        over the session's bound."""
        job.enqueued, job.seq = now, next(self._seq)
        account = self._accounts.get(job.session)
        if account is None:
            account = self._accounts[job.session] = _Account()
        if not account.queued and not account.running:
            # A session coming back from idle starts level with the least-served active
            # session: it cannot claim the role for the time it was away.
            active = [a.vtime for a in self._accounts.values() if a.queued or a.running]
            if active:
                account.vtime = max(account.vtime, min(active))
        dropped: list[Job] = []
        if job.skippable:
            same = [j for j in account.queued if j.skippable and j.kind == job.kind]
            for j in same:  # latest wins
                account.queued.remove(j)
                dropped.append(j)
        if len(account.queued) >= self.per_session:
            skippable = [j for j in account.queued if j.skippable]
            if skippable:
                account.queued.remove(skippable[0])
                dropped.append(skippable[0])
            elif job.skippable:
                dropped.append(job)
                self.skipped += len(dropped)
                return dropped
            else:
                raise SchedulerFull(
                    f"{len(account.queued)} jobs already queued for session {job.session}"
                )
        account.queued.append(job)
        self.skipped += len(dropped)
        return dropped

    def remove(self, job: Job) -> bool:
        """Take a queued job out (its caller cancelled it). False if it is not queued."""
        account = self._accounts.get(job.session)
        if account is None or job not in account.queued:
            return False
        account.queued.remove(job)
        self._forget_idle(job.session)
        return True

    def pop(self, now: float, *, background_ok: bool = True) -> tuple[Job | None, list[Job]]:
        """The job to run now (or ``None``), and the skippable jobs dropped as too late.

        ``background_ok=False`` (the role this one yields to is busy with must-run work):
        skippable jobs wait."""
        stale = [j for j in self.queued() if j.skippable and now - j.enqueued > self.max_wait_s]
        for j in stale:
            self._accounts[j.session].queued.remove(j)
        self.skipped += len(stale)
        best: Job | None = None
        best_key: tuple[int, float, int] | None = None
        for account in self._accounts.values():
            for j in account.queued:
                if j.skippable and not background_ok:
                    continue
                key = (int(j.priority), account.vtime, j.seq)
                if best_key is None or key < best_key:
                    best, best_key = j, key
        for j in stale:
            self._forget_idle(j.session)
        if best is None:
            return None, stale
        account = self._accounts[best.session]
        account.queued.remove(best)
        account.running += 1
        if not best.skippable:
            account.running_must += 1
        best.started = now
        self.wait_s[best.priority] += now - best.enqueued
        self.started_n[best.priority] += 1
        return best, stale

    def finished(self, job: Job, now: float) -> None:
        """``job`` (returned by :meth:`pop`) ended at ``now``: charge its session."""
        account = self._accounts[job.session]
        ran = max(0.0, now - (job.started if job.started is not None else now))
        account.vtime += ran
        account.running -= 1
        if not job.skippable:
            account.running_must -= 1
        self.busy_s += ran
        self.done += 1
        self._forget_idle(job.session)

    def forget(self, session: str) -> None:
        """The session ended: drop its account once it has nothing queued or running."""
        self._forget_idle(session, force=True)

    def _forget_idle(self, session: str, force: bool = False) -> None:
        account = self._accounts.get(session)
        if account is None or account.queued or account.running:
            return
        active = [a.vtime for a in self._accounts.values() if a.queued or a.running]
        # An idle account whose clock is not ahead of the active ones carries no
        # information (it would be levelled up on return anyway).
        if force or not active or account.vtime <= min(active):
            del self._accounts[session]


# --- the glue: threads that run what the schedule picks ---------------------------------------


@dataclass(eq=False)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: concurrent.futures.Future[Any]


class RoleScheduler(concurrent.futures.Executor):
    """One model role's compute: ``workers`` threads running the jobs :class:`Schedule`
    picks. A plain :meth:`submit` (``loop.run_in_executor``) is anonymous work at
    ``Priority.REST``; :meth:`lane` tags work with a session and a priority.

    Thread-safe; bound to no event loop (results travel as concurrent futures)."""

    def __init__(
        self,
        name: str,
        *,
        workers: int = 1,
        per_session: int = 8,
        max_wait_s: float = 1.0,
        yield_to: RoleScheduler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.workers = workers
        self.yield_to = yield_to
        self.clock = clock
        self.schedule = Schedule(per_session=per_session, max_wait_s=max_wait_s)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._dependents: list[RoleScheduler] = []
        if yield_to is not None:
            yield_to._dependents.append(self)

    # -- submitting ------------------------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:  # type: ignore[override]
        return self.submit_job(fn, *args, session="", priority=Priority.REST, **kwargs)

    def submit_job(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        session: str,
        priority: Priority,
        kind: str = "job",
        skippable: bool = False,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """Queue ``fn(*args, **kwargs)``. The future fails with :class:`Skipped` if the
        job is dropped; cancelling it while queued removes the job."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        job = Job(session, priority, kind, skippable, payload=_Call(fn, args, kwargs, future))
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} scheduler is closed")
            dropped = self.schedule.push(job, self.clock())
            self._start_threads()
            self._cond.notify()
        _skip(dropped, self.name)
        future.add_done_callback(lambda f: self._cancelled(job) if f.cancelled() else None)
        return future

    def lane(
        self, session: str, priority: Priority, *, kind: str = "job", skippable: bool = False
    ) -> Lane:
        """An executor whose every job is ``session``'s at ``priority``."""
        return Lane(self, session, priority, kind, skippable)

    @contextlib.asynccontextmanager
    async def hold(
        self, session: str, priority: Priority, *, kind: str = "job"
    ) -> AsyncIterator[None]:
        """Take one worker of the role for ``session`` at ``priority`` until the block exits.

        Waits for the job's turn; the worker thread then waits, idle, while the block's body
        runs on the loop (e.g. a streamed generation whose compute runs in the model's own
        thread): the role's order and fair share cover work that is not one blocking call.
        Cancelling while waiting removes the job; cancelling inside releases the worker.
        Raises ``RuntimeError`` if the role is closed (or closes while this waits)."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        release = threading.Event()

        def granted(error: BaseException | None) -> None:
            if turn.done():
                return
            if error is None:
                turn.set_result(None)
            else:
                turn.set_exception(error)

        def run() -> None:  # on the worker: hold it until the block exits
            try:
                loop.call_soon_threadsafe(granted, None)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return
            release.wait()

        def ended(f: concurrent.futures.Future[Any]) -> None:  # dropped or shut down
            if f.cancelled() or f.exception() is not None:
                error = RuntimeError(f"{self.name} scheduler closed")
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(granted, error)

        future = self.submit_job(run, session=session, priority=priority, kind=kind)
        future.add_done_callback(ended)
        try:
            await turn
            yield
        finally:
            turn.cancel()  # no-op once granted; else nothing is left to hear the answer
            release.set()  # a running job ends now
            future.cancel()  # a queued one goes

    def forget(self, session: str) -> None:
        with self._cond:
            self.schedule.forget(session)

    def _cancelled(self, job: Job) -> None:
        with self._cond:
            self.schedule.remove(job)

    # -- state -----------------------------------------------------------------------------

    def urgent(self) -> bool:
        with self._cond:
            return self.schedule.urgent()

    def stats(self) -> dict[str, Any]:
        """Queue depth by priority, jobs running, done and skipped, mean wait by priority
        (ms; and the totals it comes from), and seconds of work done: for ``/metrics`` and
        ``/healthz``."""
        with self._cond:
            s = self.schedule
            return {
                "queued": s.depth(),
                "running": s.running,
                "workers": self.workers,
                "done": s.done,
                "skipped": s.skipped,
                "busy_s": round(s.busy_s, 3),
                "mean_wait_ms": {
                    p.name.lower(): round(1000 * s.wait_s[p] / s.started_n[p], 1)
                    for p in Priority
                    if s.started_n[p]
                },
                # cumulative, for waits over an interval (bench/capacity.py)
                "started": {p.name.lower(): s.started_n[p] for p in Priority if s.started_n[p]},
                "waited_s": {
                    p.name.lower(): round(s.wait_s[p], 3) for p in Priority if s.started_n[p]
                },
            }

    # -- the workers -----------------------------------------------------------------------

    def _start_threads(self) -> None:
        while len(self._threads) < self.workers:
            t = threading.Thread(
                target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    background_ok = self.yield_to is None or not self.yield_to.urgent()
                    job, stale = self.schedule.pop(self.clock(), background_ok=background_ok)
                    _skip(stale, self.name)
                    if job is not None:
                        break
                    # Gated by the other role: it wakes us when it finishes a job.
                    self._cond.wait(timeout=None if background_ok else 0.1)
            call: _Call = job.payload
            try:
                if call.future.set_running_or_notify_cancel():
                    try:
                        result = call.fn(*call.args, **call.kwargs)
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        call.future.set_exception(exc)
                    else:
                        call.future.set_result(result)
            finally:
                with self._cond:
                    self.schedule.finished(job, self.clock())
                for other in self._dependents:
                    with other._cond:
                        other._cond.notify_all()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers; queued jobs are cancelled (``cancel_futures``) or dropped as
        ``Skipped`` only if skippable, else still cancelled: nothing runs after this."""
        with self._cond:
            self._closed = True
            queued = self.schedule.queued()
            for j in queued:
                self.schedule.remove(j)
            self._cond.notify_all()
        for j in queued:
            j.payload.future.cancel()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()


class Lane(concurrent.futures.Executor):
    """A :class:`RoleScheduler` seen as an executor for one session's work of one kind."""

    def __init__(
        self, role: RoleScheduler, session: str, priority: Priority, kind: str, skippable: bool
    ) -> None:
        self.role, self.session, self.priority = role, session, priority
        self.kind, self.skippable = kind, skippable

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:  # type: ignore[override]
        return self.role.submit_job(
            fn,
            *args,
            session=self.session,
            priority=self.priority,
            kind=self.kind,
            skippable=self.skippable,
            **kwargs,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A lane owns no threads: nothing to stop (the role is the engine's)."""


def _skip(jobs: list[Job], role: str) -> None:
    for j in jobs:
        future = j.payload.future
        if future.set_running_or_notify_cancel():  # False: its caller cancelled it already
            future.set_exception(Skipped(f"{role}: {j.kind} skipped (role behind)"))
