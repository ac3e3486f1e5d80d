"""The per-role compute scheduler: the pure schedule on a fake clock, then the threaded glue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from models.scheduler import Job, Priority, RoleScheduler, Schedule
from seetalk.errors import SchedulerFull, Skipped


def job(session: str, priority: Priority, kind: str = "job", skippable: bool = False) -> Job:
    return Job(session, priority, kind, skippable)


def run(schedule: Schedule, now: float, duration: float = 1.0) -> tuple[Job | None, float]:
    """Pop the next job at ``now`` and finish it ``duration`` later."""
    j, _ = schedule.pop(now)
    if j is not None:
        schedule.finished(j, now + duration)
    return j, now + duration


# --- ordering -------------------------------------------------------------------------------


def test_a_final_goes_before_replies_and_background_work_whatever_the_order_queued() -> None:
    s = Schedule()
    s.push(job("a", Priority.BACKGROUND, "partial", skippable=True), 0.0)
    s.push(job("b", Priority.REST, "tts"), 0.1)
    s.push(job("c", Priority.FIRST, "tts"), 0.2)
    s.push(job("d", Priority.FINAL, "final"), 0.3)
    order = []
    t = 0.3
    for _ in range(4):
        j, t = run(s, t, 0.1)
        assert j is not None
        order.append((j.session, j.priority))
    assert order == [
        ("d", Priority.FINAL),
        ("c", Priority.FIRST),
        ("b", Priority.REST),
        ("a", Priority.BACKGROUND),
    ]
    assert s.pop(t) == (None, [])


def test_sessions_share_a_role_fairly_within_a_priority() -> None:
    """Session a queues six clauses before b queues two: b is not served after all of a's."""
    s = Schedule()
    for _ in range(6):
        s.push(job("a", Priority.REST), 0.0)
    t = 0.0
    first, t = run(s, t)  # a runs one (1 s of the role)
    assert first is not None and first.session == "a"
    s.push(job("b", Priority.REST), t)
    s.push(job("b", Priority.REST), t)
    served = []
    for _ in range(7):
        j, t = run(s, t)
        assert j is not None
        served.append(j.session)
    # b starts level with a (a's floor), then the two alternate until b's work is done
    assert served[:4] == ["a", "b", "a", "b"]
    assert served.count("b") == 2


def test_a_session_back_from_idle_does_not_claim_the_time_it_was_away() -> None:
    s = Schedule()
    for _ in range(8):
        s.push(job("a", Priority.REST), 0.0)
    s.push(job("b", Priority.REST), 0.0)
    t = 0.0
    served = []
    for _ in range(6):  # a, b, then a alone for 4 s while b is idle
        j, t = run(s, t)
        assert j is not None
        served.append(j.session)
    assert served == ["a", "b", "a", "a", "a", "a"]
    for _ in range(3):
        s.push(job("b", Priority.REST), t)
    for _ in range(3):
        j, t = run(s, t)
        assert j is not None
        served.append(j.session)
    # levelled with a's floor: b shares the role from now on instead of taking it for the
    # 4 s it was away (without levelling: b, b, b)
    assert served[6:] == ["a", "b", "a"]


# --- skipping and bounds ---------------------------------------------------------------------


def test_a_newer_partial_replaces_the_queued_one_latest_wins() -> None:
    s = Schedule()
    old = job("a", Priority.BACKGROUND, "partial", skippable=True)
    new = job("a", Priority.BACKGROUND, "partial", skippable=True)
    assert s.push(old, 0.0) == []
    assert s.push(new, 0.1) == [old]
    assert s.pop(0.2) == (new, [])


def test_a_partial_that_waited_too_long_is_skipped_but_a_final_never_is() -> None:
    s = Schedule(max_wait_s=1.0)
    partial = job("a", Priority.BACKGROUND, "partial", skippable=True)
    final = job("b", Priority.FINAL, "final")
    s.push(partial, 0.0)
    s.push(final, 0.0)
    picked, stale = s.pop(5.0)  # both waited 5 s
    assert picked is final and stale == [partial]
    s.finished(final, 6.0)
    assert s.pop(6.0) == (None, [])
    assert s.skipped == 1


def test_background_work_waits_while_the_role_it_yields_to_is_busy() -> None:
    s = Schedule()
    partial = job("a", Priority.BACKGROUND, "partial", skippable=True)
    s.push(partial, 0.0)
    assert s.pop(0.1, background_ok=False) == (None, [])
    assert s.pop(0.2, background_ok=True) == (partial, [])


def test_urgent_means_must_run_work_queued_or_running() -> None:
    s = Schedule()
    assert not s.urgent()
    s.push(job("a", Priority.BACKGROUND, "partial", skippable=True), 0.0)
    assert not s.urgent()
    final = job("a", Priority.FINAL, "final")
    s.push(final, 0.0)
    assert s.urgent()
    picked, _ = s.pop(0.0)
    assert picked is final and s.urgent()  # running
    s.finished(final, 1.0)
    assert not s.urgent()


def test_a_session_over_its_bound_loses_background_work_never_a_final() -> None:
    s = Schedule(per_session=2)
    p1 = job("a", Priority.BACKGROUND, "scene", skippable=True)
    s.push(p1, 0.0)
    s.push(job("a", Priority.REST, "tts"), 0.0)
    assert s.push(job("a", Priority.FINAL, "final"), 0.0) == [p1]  # room made for the final
    assert s.push(job("a", Priority.BACKGROUND, "partial", skippable=True), 0.0)  # refused
    with pytest.raises(SchedulerFull):
        s.push(job("a", Priority.FINAL, "final"), 0.0)
    assert len(s.queued()) == 2


def test_a_removed_job_does_not_run_and_idle_sessions_are_forgotten() -> None:
    s = Schedule()
    j = job("a", Priority.REST)
    s.push(j, 0.0)
    assert s.remove(j) and not s.remove(j)
    assert s.pop(0.0) == (None, [])
    assert s._accounts == {}  # no state left for a session with nothing queued


# --- the threaded glue -----------------------------------------------------------------------


def test_the_role_runs_finals_before_queued_background_work_and_reports_skips() -> None:
    role = RoleScheduler("test")
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = role.submit_job(gate.wait, session="x", priority=Priority.REST)
        futures = [
            role.submit_job(
                order.append,
                "partial",
                session="a",
                priority=Priority.BACKGROUND,
                kind="partial",
                skippable=True,
            ),
            role.submit_job(
                order.append,
                "partial2",
                session="a",
                priority=Priority.BACKGROUND,
                kind="partial",
                skippable=True,
            ),
            role.submit_job(order.append, "tts", session="b", priority=Priority.FIRST),
            role.submit_job(order.append, "final", session="c", priority=Priority.FINAL),
        ]
        gate.set()
        blocker.result(timeout=30)
        with pytest.raises(Skipped):
            futures[0].result(timeout=30)  # replaced by the newer partial
        for f in futures[1:]:
            f.result(timeout=30)
        assert order == ["final", "tts", "partial2"]
        stats = role.stats()
        assert stats["skipped"] == 1 and stats["done"] == 4
        assert stats["queued"] == {"final": 0, "first": 0, "rest": 0, "background": 0}
    finally:
        role.shutdown()


def test_partials_wait_while_the_final_model_has_must_run_work() -> None:
    final_role = RoleScheduler("asr")
    partial_role = RoleScheduler("asr_partial", yield_to=final_role)
    gate = threading.Event()
    try:
        running = final_role.submit_job(gate.wait, session="a", priority=Priority.FINAL)
        partial = partial_role.submit_job(
            lambda: "p", session="b", priority=Priority.BACKGROUND, skippable=True
        )
        done, _ = concurrent.futures.wait([partial], timeout=0.3)
        assert not done  # held back while the final runs
        gate.set()
        running.result(timeout=30)
        assert partial.result(timeout=30) == "p"
    finally:
        final_role.shutdown()
        partial_role.shutdown()


async def test_cancelling_a_queued_job_removes_it_and_errors_reach_the_caller() -> None:
    role = RoleScheduler("test")
    gate = threading.Event()
    ran: list[int] = []
    loop = asyncio.get_running_loop()
    lane = role.lane("a", Priority.REST)
    try:
        blocker = loop.run_in_executor(lane, gate.wait)
        while role.stats()["running"] == 0:  # the worker took the blocker
            await asyncio.sleep(0.01)
        queued = loop.run_in_executor(lane, ran.append, 1)
        assert role.stats()["queued"]["rest"] == 1
        queued.cancel()
        await asyncio.sleep(0)
        assert role.stats()["queued"]["rest"] == 0
        gate.set()
        await blocker

        def boom() -> None:
            raise ValueError("model failed")

        with pytest.raises(ValueError, match="model failed"):
            await loop.run_in_executor(lane, boom)
        assert ran == []
    finally:
        role.shutdown()


def test_shutdown_cancels_queued_work() -> None:
    role = RoleScheduler("test")
    gate = threading.Event()
    blocker = role.submit(gate.wait)
    queued = role.submit(lambda: None)
    threading.Timer(0.05, gate.set).start()
    role.shutdown(wait=True)
    assert blocker.result(timeout=30) is True
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        role.submit(lambda: None)


# --- the recognizer on scheduler lanes ---------------------------------------------------------


class Fake:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def transcribe(self, audio, *, prompt=None):  # type: ignore[no-untyped-def]
        self.calls.append(("final", audio.size))
        return f"final:{audio.size}"

    def transcribe_partial(self, audio, *, prompt=None):  # type: ignore[no-untyped-def]
        self.calls.append(("partial", audio.size))
        return f"partial:{audio.size}"


async def test_the_first_silence_drops_a_queued_partial_and_the_final_runs() -> None:
    import numpy as np

    from voice.asr import SAMPLE_RATE, StreamingRecognizer

    final_role = RoleScheduler("asr")
    partial_role = RoleScheduler("asr_partial", yield_to=final_role)
    gate = threading.Event()
    fake = Fake()
    blocker = partial_role.submit_job(gate.wait, session="other", priority=Priority.REST)
    rec = StreamingRecognizer(
        fake,
        final_role.lane("a", Priority.FINAL, kind="final"),
        partial_interval_s=0.05,
        partial_transcriber=fake,
        partial_executor=partial_role.lane(
            "a", Priority.BACKGROUND, kind="partial", skippable=True
        ),
    )
    try:
        rec.begin()
        rec.append(np.full(SAMPLE_RATE, 0.1, np.float32))
        while partial_role.stats()["queued"]["background"] == 0:  # behind the other session
            await asyncio.sleep(0.01)
        rec.pause()
        assert partial_role.stats()["queued"]["background"] == 0  # dropped at once
        assert await rec.finalize() == f"final:{SAMPLE_RATE}"
        gate.set()
        await asyncio.wrap_future(blocker)
        assert fake.calls == [("final", SAMPLE_RATE)]  # the partial never ran
    finally:
        gate.set()
        await rec.aclose()
        final_role.shutdown()
        partial_role.shutdown()
