"""Run blocking work in a thread while heartbeating, so cancels and dead workers are seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity


async def in_thread_with_heartbeat[T](
    fn: Callable[..., T], *args: Any, interval_s: float = 2.0, detail: str = ""
) -> T:
    """A cancel arrives as asyncio.CancelledError at the next heartbeat tick.

    The thread itself cannot be interrupted; use this only for bounded work (embedding a
    batch). Work on sample bytes (unpack, angr) runs in a sandboxed child process instead
    (sandbox/).
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    while True:
        done, _ = await asyncio.wait({task}, timeout=interval_s)
        if done:
            return task.result()
        activity.heartbeat(detail)
