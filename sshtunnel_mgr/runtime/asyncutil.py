"""Small asyncio helpers shared by the SSH edges and the service runner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


async def wait_either(*aws: Awaitable[object]) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class TaskSet:
    """Every task a service started, kept until it ends (no task is orphaned).

    ``on_failure(name, exc)`` is called for a task that ends with an exception (not for
    one that is cancelled); ``cancel_all()`` cancels what is left and awaits it, handing
    any failure it then shows to ``on_failure`` too."""

    def __init__(self, on_failure: Callable[[str, BaseException], None]) -> None:
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self._on_failure = on_failure

    def spawn(self, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks[task] = name
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        name = self._tasks.pop(task, None)
        if name is None or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._on_failure(name, exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        return sorted(self._tasks.values())

    async def wait(self) -> None:
        """Until every task has ended, those spawned meanwhile too. Cancelling the wait
        leaves the tasks running (they are still the set's)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def cancel_all(self, timeout: float = 10.0) -> list[str]:
        """Cancel every task still running and wait for them (at most ``timeout``
        seconds); return the names of any that did not end in time."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return sorted(self._tasks.get(t, t.get_name()) for t in pending)
