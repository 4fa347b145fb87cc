"""Concurrent asks for the same thing share one call (a "single flight").

The call runs in a task of its own, so a caller that goes away (its request cancelled
because the client disconnected) takes nothing from the others waiting for it; the
others get its answer or its exception. Used by the API's status views
(api/running.py) and its kept rows (store/read_cache.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


class SharedCalls:
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[Any]] = {}

    async def call(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """`make()`'s answer; callers with the same key while it runs share the one call."""
        return await asyncio.shield(self.start(key, make))

    def start(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> asyncio.Task[Any]:
        """The call for `key`: the one running, else `make()` started now. Nobody need
        wait for it: its answer or exception is collected either way."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._running[key] = task
            task.add_done_callback(partial(self._done, key))
        return task

    def _done(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller has gone
