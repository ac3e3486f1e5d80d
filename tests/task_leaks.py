"""Finds asyncio tasks that a test leaves running (used by the autouse fixture in conftest).

While a test runs, every task created through ``loop.create_task`` (``asyncio.create_task``,
``TaskGroup``, ``ensure_future``) is noted. When a loop is closed during the test (the
pytest-asyncio runner of a function-scoped loop closes after the test's own fixtures are
torn down, and cancels what is left), the tasks still pending are given a grace of a few loop
iterations to finish; the ones that do not are leaks. Tasks of loops still open at the end
(a wider-scoped loop, idle between tests) are checked the same way. Tasks that existed before
the test are never counted: they were not created during it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GRACE_ITERATIONS = 50  # loop iterations a task gets to finish once its test is over
_SLEEPS = (0.0,) * 40 + (0.002,) * 10  # mostly bare iterations, a few that let I/O land


class TaskWatch:
    """Notes the tasks created while installed, and the ones left pending at loop close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._created: weakref.WeakKeyDictionary[asyncio.Task[Any], str] = (
            weakref.WeakKeyDictionary()
        )
        self.leaked: list[str] = []

    def _note(self, task: asyncio.Task[Any]) -> None:
        site = _creation_site()
        with self._lock:
            self._created[task] = site

    def pending(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
        with self._lock:
            tasks = list(self._created)
        return [t for t in tasks if t.get_loop() is loop and not t.done()]

    def drain(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
        """Run ``loop`` (idle, not closed) a few iterations until this test's tasks are done;
        the ones still pending are recorded as leaks and returned."""
        if loop.is_closed() or loop.is_running():
            return []
        for delay in _SLEEPS[:GRACE_ITERATIONS]:
            if not self.pending(loop):
                return []
            loop.run_until_complete(asyncio.sleep(delay))
        left = self.pending(loop)
        with self._lock:
            self.leaked += [f"{_describe(t)}, created at {self._created.get(t, '?')}" for t in left]
        return left

    def loops(self) -> set[asyncio.AbstractEventLoop]:
        with self._lock:
            return {t.get_loop() for t in self._created}

    @contextmanager
    def installed(self) -> Iterator[TaskWatch]:
        """Patch task creation and loop/runner close for the duration of a test."""
        watch = self
        create_task = asyncio.BaseEventLoop.create_task
        loop_close = asyncio.SelectorEventLoop.close
        runner_close = asyncio.Runner.close

        def patched_create_task(self: Any, *args: Any, **kwargs: Any) -> Any:
            task = create_task(self, *args, **kwargs)
            watch._note(task)
            return task

        def patched_loop_close(self: Any) -> None:
            left = watch.drain(self)
            for task in left:  # cancel, so the loop closes without "destroyed but pending"
                task.cancel()
            if left:
                self.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop_close(self)

        def patched_runner_close(self: asyncio.Runner) -> None:
            loop = getattr(self, "_loop", None)
            if loop is not None:
                watch.drain(loop)  # before the runner cancels everything that is left
            runner_close(self)

        asyncio.BaseEventLoop.create_task = patched_create_task  # type: ignore[method-assign]
        asyncio.SelectorEventLoop.close = patched_loop_close  # type: ignore[method-assign]
        asyncio.Runner.close = patched_runner_close  # type: ignore[method-assign]
        try:
            yield self
        finally:
            asyncio.BaseEventLoop.create_task = create_task  # type: ignore[method-assign]
            asyncio.SelectorEventLoop.close = loop_close  # type: ignore[method-assign]
            asyncio.Runner.close = runner_close  # type: ignore[method-assign]

    def check_open_loops(self) -> None:
        """At the end of the test: tasks of this test on loops that are still open."""
        for loop in self.loops():
            self.drain(loop)


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)


def _creation_site() -> str:
    """The first caller outside asyncio and this module, as ``file:line`` (a few frames up)."""
    frame = sys._getframe(2)
    for _ in range(12):
        if frame is None:
            break
        name = frame.f_code.co_filename
        if not name.startswith(_ASYNCIO_DIR) and name != __file__:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _describe(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", None) or repr(coro)
    frame = getattr(coro, "cr_frame", None)
    line = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
    return f"{task.get_name()} ({where}{line})"
