"""The task-leak check (tests/task_leaks.py) that the autouse fixture runs on every test."""

import asyncio

from task_leaks import TaskWatch


def _loop_with_watch(body):
    """Run ``body(loop, watch)`` with a fresh loop and an installed watch; the loop is
    cleaned up (every task cancelled) before it closes, so the outer fixture sees no leak."""
    loop = asyncio.new_event_loop()
    watch = TaskWatch()
    try:
        with watch.installed():
            body(loop, watch)
    finally:
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in left:
            t.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.close()
    return watch


def test_a_task_that_never_ends_is_a_leak():
    def body(loop, watch):
        forever = loop.create_future()
        loop.run_until_complete(asyncio.sleep(0))
        loop.create_task(asyncio.wait_for(forever, None), name="stuck")
        assert watch.drain(loop)

    watch = _loop_with_watch(body)
    assert len(watch.leaked) == 1 and watch.leaked[0].startswith("stuck")


def test_a_task_that_ends_within_a_few_iterations_is_not():
    async def a_few_steps():
        for _ in range(5):
            await asyncio.sleep(0)

    def body(loop, watch):
        loop.create_task(a_few_steps())
        assert watch.drain(loop) == []

    assert _loop_with_watch(body).leaked == []


def test_tasks_from_before_the_test_are_not_counted():
    loop = asyncio.new_event_loop()
    try:
        older = loop.create_task(asyncio.sleep(3600))
        watch = TaskWatch()
        with watch.installed():
            assert watch.drain(loop) == []
        assert watch.leaked == []
        older.cancel()
        loop.run_until_complete(asyncio.gather(older, return_exceptions=True))
    finally:
        loop.close()


async def test_tasks_of_a_test_that_cleans_up_pass():
    task = asyncio.create_task(asyncio.sleep(3600))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
