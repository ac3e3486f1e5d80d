"""The language model is scheduled like the other roles (models/engine.py ``llm_for``): a
generation holds the ``llm`` role for its whole length, a turn's reply goes before other
sessions' repeated or out-of-band responses, and cancelling frees the role.

Order, never time: a scripted backend blocks its first generation until the test lets it
go, so what is queued behind it is known exactly."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from conversation import events as ev
from conversation.protocol import parse_client_object
from conversation.responses import generation_priority
from conversation.session import Session
from llm.backend import ChatMessage, GenerationSettings
from models.engine import ScheduledBackend
from models.scheduler import Priority, RoleScheduler
from seetalk.config import SessionSettings
from seetalk.errors import SeetalkError


class Gated:
    """A chat backend that records which conversation each generation answers (the last
    user message), and holds its first generation until ``go`` is set."""

    name = "gated"
    supports_images = False

    def __init__(self) -> None:
        self.started: list[str] = []
        self.go = asyncio.Event()
        self.first_running = asyncio.Event()

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncGenerator[str, None]:
        user = next((m.text for m in reversed(messages) if m.role == "user"), "")
        self.started.append(user)
        if len(self.started) == 1:
            self.first_running.set()
            await self.go.wait()
        yield "Fine."

    async def aclose(self) -> None:
        return None


# --- the pure decision ------------------------------------------------------------------------


def test_a_turn_reply_is_first_and_a_repeated_response_create_is_not() -> None:
    assert generation_priority(requested=False, latest_user="u1", answered="u1") == Priority.FIRST
    # push-to-talk: the client committed u2 and asks for its answer
    assert generation_priority(requested=True, latest_user="u2", answered="u1") == Priority.FIRST
    # u2 was answered already: asking again is not what a person's turn waits for
    assert generation_priority(requested=True, latest_user="u2", answered="u2") == Priority.REST
    assert generation_priority(requested=True, latest_user=None, answered=None) == Priority.REST


# --- the role ---------------------------------------------------------------------------------


async def test_hold_orders_waiters_by_priority_and_cancelling_a_waiter_removes_it() -> None:
    role = RoleScheduler("llm")
    order: list[str] = []
    try:
        release = asyncio.Event()

        async def take(name: str, session: str, priority: Priority) -> None:
            async with role.hold(session, priority):
                order.append(name)
                if name == "a1":
                    await release.wait()

        first = asyncio.create_task(take("a1", "a", Priority.FIRST))
        while not order:
            await asyncio.sleep(0.01)
        waiters = [
            asyncio.create_task(take("a2", "a", Priority.REST)),
            asyncio.create_task(take("a3", "a", Priority.REST)),
            asyncio.create_task(take("b1", "b", Priority.FIRST)),
        ]
        gone = asyncio.create_task(take("c1", "c", Priority.FINAL))
        while sum(role.stats()["queued"].values()) < 4:
            await asyncio.sleep(0.01)
        gone.cancel()  # removed from the queue: it never runs
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert sum(role.stats()["queued"].values()) == 3
        release.set()
        await asyncio.gather(first, *waiters)
        assert order == ["a1", "b1", "a2", "a3"]
        while role.stats()["running"]:  # the worker's accounting trails the loop
            await asyncio.sleep(0.01)
        assert role.stats()["done"] == 4
    finally:
        role.shutdown()


async def test_a_generation_cancelled_while_it_runs_frees_the_role() -> None:
    role = RoleScheduler("llm")
    backend = Gated()
    try:
        llm = ScheduledBackend(backend, role, "a", Priority.FIRST)

        async def consume() -> list[str]:
            return [t async for t in llm.stream([ChatMessage("user", "one")], GenerationSettings())]

        task = asyncio.create_task(consume())
        await backend.first_running.wait()
        assert role.stats()["running"] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        other = ScheduledBackend(backend, role, "b", Priority.REST)
        got = [t async for t in other.stream([ChatMessage("user", "two")], GenerationSettings())]
        assert got == ["Fine."] and backend.started == ["one", "two"]
    finally:
        role.shutdown()


async def test_a_closed_role_refuses_a_waiting_generation_loudly() -> None:
    role = RoleScheduler("llm")
    release = asyncio.Event()

    async def hold_it() -> None:
        async with role.hold("a", Priority.FIRST):
            await release.wait()

    holder = asyncio.create_task(hold_it())
    while role.stats()["running"] == 0:
        await asyncio.sleep(0.01)

    async def wait_for_it() -> None:
        async with role.hold("b", Priority.FIRST):
            pass

    waiter = asyncio.create_task(wait_for_it())
    while sum(role.stats()["queued"].values()) == 0:
        await asyncio.sleep(0.01)
    role.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
    release.set()
    await holder


# --- sessions on the real scheduler -----------------------------------------------------------


async def _send(session: Session, obj: dict[str, Any]) -> None:
    try:
        event = parse_client_object(obj)
    except SeetalkError as exc:  # pragma: no cover - the test sends valid events
        session.emit(ev.error(exc.to_event_error()))
        return
    await session.handle_client_event(event)


def _user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


@pytest.mark.models
async def test_a_turn_reply_starts_before_another_sessions_queued_responses(engine) -> None:
    """Session A asks, then spams: out-of-band responses and a repeated ``response.create``.
    Session B's turn ends meanwhile: B's reply is the next generation, before all of A's."""
    backend = Gated()
    role = RoleScheduler("llm")
    scripted = dataclasses.replace(engine, backend=backend, llm_executor=role)
    a = Session(scripted, SessionSettings(), playout="push")
    b = Session(scripted, SessionSettings(), playout="push")
    await a.start()
    await b.start()
    try:
        await _send(a, _user_text("alpha question"))
        await _send(a, {"type": "response.create"})  # A's turn: generating (held by the test)
        await backend.first_running.wait()
        for _ in range(3):
            await _send(
                a,
                {
                    "type": "response.create",
                    "response": {"conversation": "none", "output_modalities": ["text"]},
                },
            )
        await _send(b, _user_text("bravo question"))
        await _send(b, {"type": "response.create"})  # B's turn ends: its person waits
        while sum(role.stats()["queued"].values()) < 4:
            await asyncio.sleep(0.01)
        assert role.stats()["queued"]["first"] == 1  # B's; A's three wait at REST
        # A asks again for the answer it is getting: this one interrupts A's reply (the
        # role is freed) and queues at REST, behind B.
        await _send(a, {"type": "response.create"})
        backend.go.set()
        while len(backend.started) < 6:
            await asyncio.sleep(0.01)
        assert backend.started[0] == "alpha question"
        assert backend.started[1] == "bravo question"
        assert backend.started[2:] == ["alpha question"] * 4
        assert role.stats()["mean_wait_ms"].keys() >= {"first", "rest"}
    finally:
        backend.go.set()
        await a.aclose()
        await b.aclose()
        role.shutdown()


@pytest.mark.models
async def test_out_of_band_responses_past_the_bound_fail_with_a_typed_error(engine) -> None:
    """The role holds at most ``per_session`` queued jobs per session: one more out-of-band
    response is refused with ``scheduler_full`` (an ``error`` event and a failed response),
    and the session goes on answering once the model is free."""
    backend = Gated()
    role = RoleScheduler("llm", per_session=2)
    scripted = dataclasses.replace(engine, backend=backend, llm_executor=role)
    a = Session(scripted, SessionSettings(), playout="push")
    await a.start()
    oob = {
        "type": "response.create",
        "response": {"conversation": "none", "output_modalities": ["text"]},
    }
    try:
        await _send(a, _user_text("alpha question"))
        await _send(a, oob)  # runs (held by the test)
        await backend.first_running.wait()
        for _ in range(3):  # two queue, the third is over the bound
            await _send(a, oob)
        errors: list[dict[str, Any]] = []
        done: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not errors or not done:
                event = await a.events.get()
                if event["type"] == "error":
                    errors.append(event)
                elif event["type"] == "response.done":
                    done.append(event)
        assert errors[0]["error"]["code"] == "scheduler_full"
        assert done[0]["response"]["status"] == "failed"
        backend.go.set()
        async with asyncio.timeout(30):
            while len(done) < 4:
                event = await a.events.get()
                if event["type"] == "response.done":
                    done.append(event)
        assert [d["response"]["status"] for d in done[1:]] == ["completed"] * 3
    finally:
        backend.go.set()
        await a.aclose()
        role.shutdown()
