"""A long session's model input stays within the model's context (``truncation``): a
conversation far longer than the context is answered, the input counted with the model's
own tokenizer never exceeds the budget, the instructions are kept; with truncation
disabled the same conversation overflows the context and the reply fails, loudly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conversation.budget import context_of
from conversation.history import Item
from conversation.session import Session
from seetalk.config import SessionSettings

pytestmark = pytest.mark.models

TURNS = 120  # about 60 tokens each way: far past the 2048-token context


async def _reply(session: Session) -> dict[str, Any]:
    session.respond_now()
    async with asyncio.timeout(120):
        while True:
            event = await session.events.get()
            if event["type"] == "response.done":
                return event["response"]


def _long_history(session: Session) -> None:
    for i in range(TURNS):
        session.conversation.add(
            Item(f"u{i}", "user", f"Tell me fact number {i} about the sea. " * 4, source="text")
        )
        session.conversation.add(
            Item(f"a{i}", "assistant", f"Fact {i}: the sea is deep and salty and wide. " * 4)
        )
    session.conversation.add(Item("last", "user", "What colour is the sky?", source="text"))


@pytest.mark.parametrize("truncation", ["auto", "disabled"])
async def test_model_input_is_bounded_by_the_context(engine, truncation):
    settings = SessionSettings(
        output_rate=24_000,
        output_modalities="text",
        history_turns=200,
        max_output_tokens=20,
        truncation=truncation,
    )
    session = Session(engine, settings, playout="push")
    await session.start()
    try:
        _long_history(session)
        count = session.rest.count()
        everything = session.conversation.messages(settings.instructions, 200)
        assert sum(count(m.text) for m in everything) > context_of(engine.backend)
        response = await _reply(session)
        if truncation == "disabled":
            assert response["status"] == "failed"  # the model's context overflowed
            return
        assert response["status"] == "completed"
        budget = context_of(engine.backend) - settings.max_output_tokens
        assert 0 < response["usage"]["input_tokens"] <= budget
        assert session.rest.last_input_tokens == response["usage"]["input_tokens"]
        # a second reply, one turn longer: still bounded
        session.conversation.add(Item("more", "user", "And the grass?", source="text"))
        again = await _reply(session)
        assert again["status"] == "completed"
        assert again["usage"]["input_tokens"] <= budget
    finally:
        await session.aclose()


def test_a_cut_is_kept_while_it_fits_so_the_model_reuses_its_prefix():
    """``auto`` and ``retention_ratio`` cut once, below the budget, and keep that cut (the
    anchor) while the conversation grows into it: the model input keeps its prefix for
    several turns instead of changing at every turn once the context is full."""
    from conversation.budget import AUTO_RETENTION, Truncation, estimate, fit
    from llm.backend import ChatMessage

    chat = [ChatMessage("system", "Be brief.")]
    prefixes, cuts, anchor = [], 0, ()
    for i in range(60):
        chat.append(ChatMessage("user", f"Question {i} about the sea, " * 3))
        fitted = fit(chat, 400, estimate, Truncation("auto"), anchor)
        assert fitted.tokens <= 400 and fitted.messages[0].role == "system"
        assert fitted.messages[-1] == chat[-1]
        if fitted.anchor and fitted.anchor != anchor:
            cuts += 1
            assert fitted.tokens <= 400 * AUTO_RETENTION  # cut down to the retention share
        anchor = fitted.anchor
        prefixes.append(fitted.messages[1])
        chat.append(ChatMessage("assistant", f"Answer {i}: it is deep and wide."))
    changed = sum(1 for a, b in zip(prefixes, prefixes[1:], strict=False) if a != b)
    assert 2 <= cuts == changed < 20  # a stateless cut would move at nearly every turn
    stateless = [fit(chat[: 2 * k + 2], 400, estimate, Truncation("auto")) for k in range(30, 60)]
    assert (
        sum(
            1
            for a, b in zip(stateless, stateless[1:], strict=False)
            if a.messages[1] != b.messages[1]
        )
        > 20
    )
