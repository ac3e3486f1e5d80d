"""LlamaCppBackend: the real SmolLM2 model, and the thread/loop plumbing on a scripted model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm.backend import ChatMessage, GenerationSettings
from llm.local import LlamaCppBackend, StateCache, _SavedState, chat_handler_class
from seetalk.errors import BackendError, ConfigError, ImagesRejected, ModelNotFound

FRANCE = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What is the capital of France?"),
]
RAMBLE = [ChatMessage("user", "Count from 1 to 1000, one number per line.")]


async def executor_frees(backend: LlamaCppBackend) -> None:
    """Returns once the model's executor runs a no-op, i.e. once generation has stopped.

    Stopping is checked by behaviour, not by time: a generation that ignored the stop would
    hold the executor until its 1000 tokens are done (and, with backpressure, block forever
    on a full pipe). The 120 s guard only keeps a broken build from hanging the suite; how
    fast generation stops is measured by bench/timing.py."""
    await asyncio.wait_for(asyncio.wrap_future(backend._executor.submit(lambda: None)), 120)


class CountingLlama:
    """Wraps the loaded ``llama_cpp.Llama``: counts the chunks generation pulled from it."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.chunks = 0

    def create_chat_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for chunk in self.llama.create_chat_completion(**kwargs):
            self.chunks += 1
            yield chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llama, name)


@pytest.fixture
def counted(smol: LlamaCppBackend) -> Iterator[CountingLlama]:
    """The real model with its generated chunks counted (restored afterwards)."""
    counting = CountingLlama(smol._llama)
    smol._llama = counting
    yield counting
    smol._llama = counting.llama


# --- the real model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(smollm2_gguf)
    backend.warmup()
    yield backend
    asyncio.run(backend.aclose())


@pytest.mark.models
async def test_streams_an_answer(smol: LlamaCppBackend, counted: CountingLlama) -> None:
    # What a 135M model says differs by machine and build: assert the pipeline, not the fact.
    assert smol.load_seconds is not None  # how long it took: bench/timing.py
    settings = GenerationSettings(temperature=0.0, max_tokens=16)
    deltas = [d async for d in smol.stream(FRANCE, settings)]
    assert deltas and all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas).strip()
    assert len(deltas) <= 16  # one delta per token at most, max_tokens bounds them
    assert counted.chunks >= len(deltas)  # every delta came from the model, streamed


def prompt_tokens_evaluated(backend: LlamaCppBackend) -> int:
    import llama_cpp

    return int(llama_cpp.llama_perf_context(backend._llama._ctx.ctx).n_p_eval)


@pytest.mark.models
async def test_sessions_taking_turns_keep_their_place_in_the_context(
    smol: LlamaCppBackend,
) -> None:
    """Two conversations alternate on the one context: coming back to the first restores
    its saved cells, so llama.cpp evaluates only the new words, not the whole history."""
    history = " ".join(f"Fact {i}: the number {i} appears in old calendars." for i in range(12))
    anna = [ChatMessage("system", "You are Anna's assistant. " + history)]
    bob = [ChatMessage("system", "You are Bob's assistant. " + history)]

    async def ask(convo: list[ChatMessage], who: str, question: str) -> int:
        before = prompt_tokens_evaluated(smol)
        convo.append(ChatMessage("user", question))
        settings = GenerationSettings(temperature=0.0, max_tokens=8, conversation=who)
        reply = "".join([d async for d in smol.stream(convo, settings)])
        convo.append(ChatMessage("assistant", reply))
        return prompt_tokens_evaluated(smol) - before

    cold = await ask(anna, "anna", "What is the capital of France?")
    saves, restores = smol.states.saves, smol.states.restores
    await ask(bob, "bob", "What is two plus two?")
    assert smol.states.saves == saves + 1  # Anna's place, before Bob's prompt replaced it
    back = await ask(anna, "anna", "And of Spain?")
    assert smol.states.restores == restores + 1
    assert back < cold / 3, (back, cold)  # the new turn only, not the history again
    assert set(smol.states.states) == {"bob"}  # Anna's state is in the context, not kept twice
    smol.forget("bob")  # the session ended
    await asyncio.wrap_future(smol._executor.submit(lambda: None))
    assert not smol.states.states


def saved(conversation: str, size: int = 10) -> _SavedState:
    return _SavedState(conversation, ids=None, data=None, size=size)


def test_state_cache_keeps_one_state_per_conversation_within_its_bound() -> None:
    cache = StateCache(max_bytes=30)
    cache.put(saved("anna"))
    cache.put(saved("bob"))
    cache.put(saved("anna", size=12))  # Anna's newer place replaces her older one
    assert list(cache.states) == ["bob", "anna"] and cache.bytes == 22
    cache.put(saved("carol"))  # over 30 bytes: the least recently saved goes
    assert list(cache.states) == ["anna", "carol"]
    state = cache.take("anna")
    assert state is not None and state.size == 12 and cache.restores == 1
    assert cache.take("anna") is None  # the context holds it now
    cache.forget("carol")
    assert not cache.states and cache.take("dave") is None


@pytest.mark.models
async def test_max_tokens_bounds_the_reply(smol: LlamaCppBackend) -> None:
    deltas = [d async for d in smol.stream(RAMBLE, GenerationSettings(max_tokens=5))]
    assert 1 <= len(deltas) <= 5


@pytest.mark.models
async def test_aclose_after_first_delta_stops_generation(
    smol: LlamaCppBackend, counted: CountingLlama
) -> None:
    gen = smol.stream(RAMBLE, GenerationSettings(max_tokens=1000, temperature=0.0))
    first = await anext(gen)
    assert first
    await gen.aclose()
    await executor_frees(smol)
    # Stopped within a token of the pipe filling: one delta read, at most queue_size (32)
    # waiting, one blocked and the role chunk; not the 1000 tokens asked for.
    assert counted.chunks <= 1 + 32 + 2
    deltas = [d async for d in smol.stream(FRANCE, GenerationSettings(max_tokens=20))]
    assert deltas  # the next request runs normally


@pytest.mark.models
async def test_cancelling_the_consumer_task_stops_generation(
    smol: LlamaCppBackend, counted: CountingLlama
) -> None:
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in smol.stream(RAMBLE, GenerationSettings(max_tokens=1000)):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await executor_frees(smol)
    assert counted.chunks <= 1 + 32 + 2  # see test_aclose_after_first_delta_stops_generation


# --- without loading anything -------------------------------------------------------------


async def test_images_without_projector_are_rejected(tmp_path: Path) -> None:
    backend = LlamaCppBackend(tmp_path / "never-loaded.gguf")
    assert backend.supports_images is False
    messages = [ChatMessage("user", "What is this?", images=(b"\xff\xd8\xff\xe0jpeg",))]
    with pytest.raises(ImagesRejected):
        async for _ in backend.stream(messages, GenerationSettings()):
            pass
    await backend.aclose()


async def test_missing_model_file_is_model_not_found(tmp_path: Path) -> None:
    backend = LlamaCppBackend(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFound, match="missing.gguf"):
        async for _ in backend.stream(FRANCE, GenerationSettings()):
            pass
    await backend.aclose()


def test_projector_enables_images_and_handlers_resolve(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    backend = LlamaCppBackend(tmp_path / "m.gguf", mmproj_path=tmp_path / "mmproj.gguf")
    assert backend.supports_images is True
    assert chat_handler_class(None).__name__ == "MTMDChatHandler"
    assert chat_handler_class("qwen2.5-vl").__name__ == "Qwen25VLChatHandler"
    assert chat_handler_class("Llava15ChatHandler").__name__ == "Llava15ChatHandler"
    with pytest.raises(ConfigError, match="unknown multimodal chat handler"):
        chat_handler_class("no-such-model")


# --- the plumbing, on a scripted model ------------------------------------------------------


class ScriptedLlama:
    """Stands in for ``llama_cpp.Llama``: yields numbered chunks, counts what it produced."""

    def __init__(self, n: int = 10_000, fail_after: int | None = None) -> None:
        self.n = n
        self.fail_after = fail_after
        self.produced = 0
        self.stopped = threading.Event()
        self.calls: list[dict[str, Any]] = []

    def create_chat_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(kwargs)
        return self._chunks()

    def _chunks(self) -> Iterator[dict[str, Any]]:
        try:
            yield {"choices": [{"delta": {"role": "assistant"}}]}
            for i in range(self.n):
                if self.fail_after is not None and i == self.fail_after:
                    raise ValueError("Requested tokens exceed context window")
                self.produced += 1
                time.sleep(0.001)
                yield {"choices": [{"delta": {"content": f"{i} "}}]}
        finally:
            self.stopped.set()

    def close(self) -> None:
        pass


def scripted(tmp_path: Path, llama: ScriptedLlama, queue_size: int = 32) -> LlamaCppBackend:
    backend = LlamaCppBackend(tmp_path / "scripted.gguf", queue_size=queue_size)
    backend._llama = llama
    return backend


async def test_settings_reach_llama(tmp_path: Path) -> None:
    llama = ScriptedLlama(n=3)
    backend = scripted(tmp_path, llama)
    settings = GenerationSettings(max_tokens=7, temperature=0.1, stop=("\n",))
    deltas = [d async for d in backend.stream(FRANCE, settings)]
    assert deltas == ["0 ", "1 ", "2 "]
    call = llama.calls[0]
    assert call["stream"] is True and call["max_tokens"] == 7 and call["temperature"] == 0.1
    assert call["stop"] == ["\n"] and call["repeat_penalty"] == pytest.approx(1.1)
    assert call["messages"][1] == {"role": "user", "content": "What is the capital of France?"}
    await backend.aclose()


async def test_slow_consumer_blocks_the_generator(tmp_path: Path) -> None:
    llama = ScriptedLlama()
    backend = scripted(tmp_path, llama, queue_size=4)
    gen = backend.stream(RAMBLE, GenerationSettings())
    assert await anext(gen) == "0 "
    await asyncio.sleep(0.3)
    # one delta consumed, four queued, at most one more produced and waiting for a slot
    assert llama.produced <= 1 + 4 + 1
    assert await anext(gen) == "1 "
    await gen.aclose()
    assert await asyncio.to_thread(llama.stopped.wait, 60)
    await backend.aclose()


async def test_aclose_stops_the_generation_thread(tmp_path: Path) -> None:
    llama = ScriptedLlama()
    backend = scripted(tmp_path, llama)
    gen = backend.stream(RAMBLE, GenerationSettings())
    await anext(gen)
    await gen.aclose()
    assert await asyncio.to_thread(llama.stopped.wait, 60)
    assert llama.produced < 1000
    await executor_frees(backend)
    await backend.aclose()


async def test_llama_failure_is_a_backend_error(tmp_path: Path) -> None:
    backend = scripted(tmp_path, ScriptedLlama(fail_after=2))
    deltas: list[str] = []
    with pytest.raises(BackendError, match="exceed context window"):
        async for d in backend.stream(FRANCE, GenerationSettings()):
            deltas.append(d)
    assert deltas == ["0 ", "1 "]
    await backend.aclose()


async def test_closed_backend_refuses_and_stops_running_streams(tmp_path: Path) -> None:
    llama = ScriptedLlama()
    backend = scripted(tmp_path, llama)
    gen = backend.stream(RAMBLE, GenerationSettings())
    await anext(gen)
    await backend.aclose()
    assert llama.stopped.is_set()
    await gen.aclose()
    with pytest.raises(BackendError, match="closed"):
        async for _ in backend.stream(FRANCE, GenerationSettings()):
            pass
