"""A session on the real voice models with a scripted model, driven by parsed client events,
its events collected and its audio drained: the harness of the server-tool tests."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from conversation.protocol import parse_client_event
from conversation.session import Sessions
from seetalk.config import BuiltinTools

LIMIT_S = 300  # a guard against a hang, not a latency target


class SessionRun:
    """``async with SessionRun(engine, model) as run``: ``run.session`` started, with
    ``model`` as its language model and ``builtins`` switched on (``--tools``)."""

    def __init__(self, engine: Any, model: Any, builtins: BuiltinTools | None = None) -> None:
        eng = copy.copy(engine)
        eng.backend = model
        self.session = Sessions(eng, builtins).new_session(playout="push")
        self.events: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> SessionRun:
        await self.session.start()
        self._tasks = [
            asyncio.create_task(self._drain_audio()),
            asyncio.create_task(self._collect()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.aclose()

    async def _drain_audio(self) -> None:
        while True:
            await self.session.audio_out.read()

    async def _collect(self) -> None:
        while True:
            self.events.append(await self.session.events.get())

    async def send(self, event: dict[str, Any]) -> None:
        await self.session.handle_client_event(
            parse_client_event(json.dumps(event), max_bytes=1 << 20)
        )

    async def ask(self, text: str) -> None:
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        await self.send({"type": "conversation.item.create", "item": item})
        await self.send({"type": "response.create"})

    async def wait(self, pred: Any, what: str) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                await asyncio.sleep(0.01)

        try:
            return await asyncio.wait_for(poll(), LIMIT_S)
        except TimeoutError:
            types = [e["type"] for e in self.events]
            raise AssertionError(f"no {what}; events: {types}") from None

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]
