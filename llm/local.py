"""llama-cpp-python in-process: the default backend, on the embedded SmolLM2 GGUF.

Threading: the model is loaded lazily, once, and every call into llama.cpp (load,
generation, free) runs on ONE dedicated single-thread executor per model, so the event loop
never blocks on it and requests to the same model run one after another. Which request goes
next is not decided here: sessions reach the model through the engine's ``llm`` role
(``models.engine.Engine.llm_for``), which lets one generation at a time through, ordered by
who waits for it and fair between sessions. A whole generation is the unit: llama.cpp holds
one context (KV cache) per model, so a second generation interleaved token by token would
evict the first's prompt and make it evaluate again.

Sessions take turns on the one context, and a context that re-reads a session's whole history
on every switch costs seconds (about 300 tokens: 1-2 s on one core). So each conversation's
place in it is kept (``GenerationSettings.conversation``, the session id): when another
conversation's prompt comes, the context's key-value cells are copied out
(``llama_state_seq_get_data``, a few MB, 15-45 ms) into a bounded LRU, one state per
conversation, and that conversation's saved state is copied back in (1-3 ms); llama.cpp then
evaluates only what follows the part of the prompt they share. Measured with two alternating
sessions: first token 2.1-2.3 s -> 17-33 ms. Not with a vision projector (its chat handler
evaluates images into the context itself).

Tokens go back to the loop through a bounded :class:`asyncio.Queue` fed with
``loop.call_soon_threadsafe``. Overflow policy: backpressure. When ``queue_size`` deltas
wait unread, the generation thread blocks (polling the cancel flag every 50 ms) instead of
dropping text or letting the queue grow; a slow consumer slows generation down.

Cancellation: closing the ``stream()`` generator or cancelling the task that iterates it
sets a flag that the generation thread checks between tokens; it stops within a token and
the executor is free for the next request. ``CancelledError`` always propagates.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import re
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llm.backend import ChatMessage, GenerationSettings, has_images, openai_messages
from llm.tools import (
    CALL_MAX_TOKENS,
    ToolCallDelta,
    ToolUse,
    call_schema,
    parse_call,
    plain_messages,
    with_tools_prompt,
)
from seetalk.errors import (
    BackendError,
    ConfigError,
    ImagesRejected,
    ModelNotFound,
    SeetalkError,
)

_END = object()
_POLL_S = 0.05
STATE_CACHE_MB = 256  # saved session states kept (LRU; one of 2048 tokens is about 47 MB)


@dataclasses.dataclass
class _SavedState:
    """One conversation's place in the context: its key-value cells and the tokens they hold."""

    conversation: str
    ids: Any  # numpy array of the tokens in the cells
    data: Any  # ctypes buffer from llama_state_seq_get_data
    size: int


class StateCache:
    """Saved context states, one per conversation, bounded by bytes, least recently saved
    out. Pure bookkeeping (no llama.cpp calls), used from the model's one thread."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.states: dict[str, _SavedState] = {}  # oldest first
        self.saves = 0
        self.restores = 0

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.states.values())

    def put(self, state: _SavedState) -> None:
        """Keep ``state`` (it replaces its conversation's older one)."""
        self.states.pop(state.conversation, None)
        self.states[state.conversation] = state
        self.saves += 1
        while self.states and self.bytes > self.max_bytes:
            del self.states[next(iter(self.states))]

    def take(self, conversation: str) -> _SavedState | None:
        """The conversation's saved state, out of the cache (the context holds it now)."""
        state = self.states.pop(conversation, None)
        if state is not None:
            self.restores += 1
        return state

    def forget(self, conversation: str) -> None:
        self.states.pop(conversation, None)


class _Pipe:
    """Hand-off of one generation's deltas from the generation thread to the loop.

    At most ``size`` deltas wait in the queue (a semaphore counts the free slots); one more
    slot is kept for the terminal item (``_END`` or an exception), so ``put_nowait`` on the
    loop never overflows.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=size + 1)
        self.cancelled = threading.Event()
        self._slots = threading.Semaphore(size)

    def stopped(self) -> bool:
        return self.cancelled.is_set() or self.loop.is_closed()

    # -- generation thread side --
    def put(self, text: str) -> bool:
        """Hand over one delta, blocking while the queue is full. False: stop generating."""
        while not self._slots.acquire(timeout=_POLL_S):
            if self.stopped():
                return False
        return not self.stopped() and self._send(text)

    def finish(self, item: object) -> None:
        self._send(item)

    def _send(self, item: object) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    # -- loop side --
    async def get(self) -> object:
        item = await self.queue.get()
        if isinstance(item, str):
            self._slots.release()
        return item


def _handler_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()).removesuffix("chathandler")


def chat_handler_class(name: str | None) -> type:
    """The llama-cpp-python multimodal chat handler class called ``name``.

    ``name`` is a class of ``llama_cpp.llama_chat_format`` (``"Qwen25VLChatHandler"``) or a
    short spelling of it (``"qwen2.5-vl"``, ``"llava-1.5"``, ``"moondream"``,
    ``"minicpm-v-2.6"``). ``None`` is the generic ``MTMDChatHandler``, which formats the
    prompt with the chat template stored in the model file; older models without one
    (LLaVA 1.5) need their named handler.
    """
    from llama_cpp import llama_chat_format as fmt

    bases = tuple(
        cls
        for cls in (getattr(fmt, "Llava15ChatHandler", None), getattr(fmt, "MTMDChatHandler", None))
        if isinstance(cls, type)
    )
    handlers = {
        _handler_key(attr): obj
        for attr, obj in vars(fmt).items()
        if attr.endswith("ChatHandler") and isinstance(obj, type) and issubclass(obj, bases)
    }
    key = _handler_key(name or "MTMDChatHandler")
    if key not in handlers:
        known = ", ".join(sorted(handlers))
        raise ConfigError(
            f"unknown multimodal chat handler {name!r}; known: {known}", param="chat_handler"
        )
    return handlers[key]


class LlamaCppBackend:
    """A GGUF model run in-process by llama-cpp-python.

    - ``model_path``: the language model GGUF.
    - ``n_ctx``: context length in tokens; images cost hundreds each, so give a vision model
      4096 or more.
    - ``threads``: CPU threads for llama.cpp (generation and prompt batches).
    - ``mmproj_path``: the vision projector GGUF; only with it ``supports_images`` is True.
    - ``chat_handler_name``: the multimodal chat handler (see :func:`chat_handler_class`).
    - ``repeat_penalty``: 1.1 keeps the tiny SmolLM2 from looping.
    - ``queue_size``: deltas that may wait unread before generation blocks (backpressure).
    - ``state_cache_mb``: saved session states kept for switching between sessions (module
      docstring); 0 turns it off.

    Nothing is loaded by the constructor: the first ``stream()`` or :meth:`warmup` loads the
    model, once.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        threads: int = 2,
        mmproj_path: str | Path | None = None,
        chat_handler_name: str | None = None,
        repeat_penalty: float = 1.1,
        queue_size: int = 32,
        state_cache_mb: int = STATE_CACHE_MB,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.model_path = Path(model_path)
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        self.chat_handler_name = chat_handler_name
        self.n_ctx = n_ctx
        self.threads = threads
        self.repeat_penalty = repeat_penalty
        self.name = f"llama.cpp:{self.model_path.stem}"
        self.supports_images = self.mmproj_path is not None
        self.load_seconds: float | None = None
        self._queue_size = queue_size
        self.states = StateCache(state_cache_mb * 1_000_000)
        self._held: str | None = None  # the conversation the context holds
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llm-{self.model_path.stem}"
        )
        self._active: set[_Pipe] = set()
        self._closed = False

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the model's own tokenizer (the vocabulary only: cheap and
        safe beside a running generation); before the model is loaded, an estimate of one
        token per 4 characters."""
        llama = self._llama
        if llama is None:
            return -(-len(text) // 4)
        return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def warmup(self) -> None:
        """Load the model now (blocking; on the model's executor). Call it off the loop,
        e.g. ``await asyncio.to_thread(backend.warmup)``."""
        self._executor.submit(self._load).result()

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncGenerator[str, None]:
        """Stream the reply as text deltas.

        Raises :class:`ImagesRejected`, before anything runs, when a message has images and
        no projector is loaded; :class:`ModelNotFound` when the file is missing;
        :class:`BackendError` when llama.cpp fails (prompt longer than the context, bad
        file). Cancelling is safe: the generation thread stops at the next token and
        ``CancelledError`` propagates.
        """
        async for text in self._stream(messages, settings, None):
            yield text

    async def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        """The reply with tools (:mod:`llm.tools`). When a call is required (``required``
        or a named function) the model writes it under a grammar built from the tools' JSON
        Schemas, so its arguments always parse and match; with ``auto`` it answers in
        words. One call per reply. Cancelling is safe, as for :meth:`stream`."""
        if not tools.forced:
            async for text in self._stream(plain_messages(messages), settings, None):
                yield text
            return
        budget = dataclasses.replace(settings, max_tokens=max(settings.max_tokens, CALL_MAX_TOKENS))
        prompt = with_tools_prompt(messages, tools)
        pieces = [t async for t in self._stream(prompt, budget, call_schema(tools))]
        name, arguments = parse_call("".join(pieces))
        yield ToolCallDelta(0, call_id=None, name=name, arguments=arguments)

    async def _stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        schema: dict[str, Any] | None,
    ) -> AsyncGenerator[str, None]:
        if self._closed:
            raise BackendError(f"{self.name} is closed")
        if has_images(messages) and not self.supports_images:
            raise ImagesRejected(
                f"{self.name} is a text-only model (no vision projector); images were not sent"
            )
        pipe = _Pipe(asyncio.get_running_loop(), self._queue_size)
        payload = openai_messages(plain_messages(messages))  # no tool roles in templates
        self._active.add(pipe)
        try:
            self._executor.submit(self._generate, payload, settings, pipe, schema)
            while True:
                item = await pipe.get()
                if isinstance(item, str):
                    yield item
                elif item is _END:
                    return
                elif isinstance(item, SeetalkError):
                    raise item
                else:
                    assert isinstance(item, BaseException)
                    raise BackendError(f"{self.name} failed: {item}") from item
        finally:
            pipe.cancelled.set()
            self._active.discard(pipe)

    async def aclose(self) -> None:
        """Stop running generations and free the model. Idempotent. Cancelling it is safe:
        the model is still freed, on its executor, in the background."""
        if self._closed:
            return
        self._closed = True
        for pipe in list(self._active):
            pipe.cancelled.set()
        freed = self._executor.submit(self._free)
        self._executor.shutdown(wait=False)
        await asyncio.wrap_future(freed)

    # -- on the executor --
    def _load(self) -> Any:
        with self._load_lock:
            if self._llama is not None:
                return self._llama
            if not self.model_path.is_file():
                raise ModelNotFound(f"language model file {self.model_path} does not exist")
            if self.mmproj_path is not None and not self.mmproj_path.is_file():
                raise ModelNotFound(f"vision projector file {self.mmproj_path} does not exist")
            try:
                import llama_cpp
            except ImportError as exc:
                raise ModelNotFound(
                    "llama-cpp-python is not installed: pip install 'llama-cpp-python==0.3.36' "
                    "(or set llm_base_url to an OpenAI-compatible server)"
                ) from exc
            handler = None
            if self.mmproj_path is not None:
                cls = chat_handler_class(self.chat_handler_name)
                handler = cls(clip_model_path=str(self.mmproj_path), verbose=False)
            t0 = time.perf_counter()
            try:
                self._llama = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    chat_handler=handler,
                    verbose=False,
                )
            except (ValueError, RuntimeError, OSError) as exc:
                raise BackendError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
            self.load_seconds = time.perf_counter() - t0
            return self._llama

    def _generate(
        self,
        payload: list[dict[str, Any]],
        settings: GenerationSettings,
        pipe: _Pipe,
        schema: dict[str, Any] | None = None,
    ) -> None:
        try:
            if pipe.stopped():
                return
            llama = self._load()
            grammar = None
            if schema is not None:  # a tool call: the output must match the schema
                from llama_cpp import LlamaGrammar

                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            if self.mmproj_path is None and self.states.max_bytes > 0:
                self._switch(llama, settings.conversation)
            chunks = llama.create_chat_completion(
                grammar=grammar,
                messages=payload,
                stream=True,
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                stop=list(settings.stop),
                repeat_penalty=self.repeat_penalty,
            )
            try:
                for chunk in chunks:
                    if pipe.stopped():
                        break
                    choices = chunk.get("choices") or [{}]
                    text = (choices[0].get("delta") or {}).get("content")
                    if text and not pipe.put(text):
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the loop, raised there
            pipe.finish(exc)
        else:
            pipe.finish(_END)

    def _switch(self, llama: Any, conversation: str | None) -> None:
        """Before a prompt of ``conversation``: unless the context holds that conversation
        already, save the one it holds and restore this one's saved state."""
        import llama_cpp

        held, self._held = self._held, conversation
        if conversation is not None and conversation == held:
            return  # llama.cpp reuses the prefix it holds by itself
        if held is not None and getattr(llama, "n_tokens", 0) > 0:
            ctx = llama._ctx.ctx
            size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
            data = (ctypes.c_uint8 * size)()
            got = int(llama_cpp.llama_state_seq_get_data(ctx, data, size, 0))
            if 0 < got <= size:
                ids = llama.input_ids[: llama.n_tokens].copy()
                self.states.put(_SavedState(held, ids, data, got))
        state = self.states.take(conversation) if conversation is not None else None
        if state is None:
            return
        llama._ctx.kv_cache_seq_rm(0, -1, -1)
        if int(llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, state.data, state.size, 0)):
            llama.input_ids[: state.ids.size] = state.ids
            llama.n_tokens = int(state.ids.size)
        else:  # could not restore: start from nothing (llama.cpp evaluates the whole prompt)
            llama._ctx.kv_cache_seq_rm(0, -1, -1)
            llama.n_tokens = 0

    def forget(self, conversation: str) -> None:
        """The conversation ended: its saved state goes (on the model's thread)."""
        if not self._closed:
            self._executor.submit(self.states.forget, conversation)

    def _free(self) -> None:
        with self._load_lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None
