"""Contained children started ahead of their job.

A lift child spends 2-3 s of CPU importing Python and angr before it reads a byte of the
sample: on a small binary, more than the lift itself. A `Children` pool keeps `keep`
children of one module started (`python -m sandbox.serve MODULE`, in the sandbox, under
their limits, each with a scratch directory of its own), so a job finds its imports
done. Each child takes one job and exits, so a sample never shares a process with
another, as before; its replacement starts once the job is over (unpack) or once it is
taken (lift: see Children.take).

The job's files go into the child's scratch directory (read-write for it) or its inbox,
`scratch/in`, which the child sees read-only. Its time limit counts from the job, not from
its start; its CPU limit allows for the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from sandbox import Finished, Limits, Spawned, spawn

STARTUP_CPU_S = 60  # added to a child's RLIMIT_CPU: the imports before its job
INBOX = "in"
# where a worker keeps its children's scratch directories, under its own scratch directory
CHILDREN_DIR = "children"
log = logging.getLogger("sandbox.warm")


class Child:
    """One started child and its directories; `run` gives it its job, `discard` ends it
    (used or not) and removes its directories."""

    def __init__(self, spawned: Spawned, scratch: Path, limits: Limits,
                 ended: Callable[[], None] = lambda: None) -> None:
        self.spawned, self.scratch, self.limits = spawned, scratch, limits
        self.inbox = scratch / INBOX
        self._ended: Callable[[], None] | None = ended

    async def run(self, arguments: list[str],
                  tick: Callable[[str], None] = lambda _line: None) -> Finished:
        """The job, to its end (sandbox.Spawned.finish); call once."""
        job = json.dumps(arguments).encode() + b"\n"
        return await self.spawned.finish(job, self.limits, tick)

    async def discard(self) -> None:
        try:
            await self.spawned.kill()
        finally:
            await asyncio.to_thread(shutil.rmtree, self.scratch, True)
            ended, self._ended = self._ended, None
            if ended is not None:
                ended()

    async def __aenter__(self) -> Child:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.discard()


async def start(module: str, scratch_root: Path, limits: Limits, prefix: str,
                ended: Callable[[], None] = lambda: None) -> Child:
    """A child of `module` with a new scratch directory under `scratch_root`; `ended` is
    called once it is discarded."""
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=scratch_root, prefix=prefix))
    try:
        (scratch / INBOX).mkdir()
        started = Limits(memory_bytes=limits.memory_bytes,
                         time_s=limits.time_s + STARTUP_CPU_S, file_bytes=limits.file_bytes)
        spawned = await spawn([sys.executable, "-m", "sandbox.serve", module],
                              scratch=scratch, inputs=[scratch / INBOX], limits=started)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Child(spawned, scratch, limits, ended)


class Children:
    """Up to `keep` started children of `module`, for jobs under `limits`."""

    def __init__(self, module: str, scratch_root: Path, limits: Limits, *, keep: int = 1,
                 prefix: str = "child-", replace_at_take: bool = False) -> None:
        self.module, self.scratch_root, self.limits = module, scratch_root, limits
        self.keep, self.prefix, self.replace_at_take = keep, prefix, replace_at_take
        self._ready: list[Child] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def waiting(self) -> list[Child]:
        """The children started and not yet taken."""
        return list(self._ready)

    async def take(self) -> Child:
        """A started child: one that is waiting, else the one being started, else a new
        one. Its replacement is started when its job is over (Child.discard), or now
        with `replace_at_take`. Why two moments: started beside a short job (an unpack
        takes ~10 ms), a new child slows it ten-fold; started after a long one (a lift),
        it slows the stage that follows on the same machine (the embedding) by the
        2-3 s of CPU its imports take."""
        while True:
            if self._ready:
                child = self._ready.pop(0)
                if child.spawned.alive:
                    if self.replace_at_take:
                        self.fill()
                    return child
                # it died waiting (killed, out of memory): its exit is of no job's
                await child.discard()
                continue
            if not self._starting:
                child = await start(self.module, self.scratch_root, self.limits, self.prefix,
                                    self._after_job)
                if self.replace_at_take:
                    self.fill()
                return child
            await asyncio.wait(set(self._starting), return_when=asyncio.FIRST_COMPLETED)

    def fill(self) -> None:
        """Start children in the background until `keep` are ready or starting."""
        if self._closed:
            return
        for _ in range(self.keep - len(self._ready) - len(self._starting)):
            task = asyncio.ensure_future(self._start_one())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _after_job(self) -> None:
        if not self.replace_at_take:
            self.fill()

    async def _start_one(self) -> None:
        try:
            child = await start(self.module, self.scratch_root, self.limits, self.prefix,
                                self._after_job)
        except Exception as exc:  # noqa: BLE001 - a job then starts its own, and reports
            log.warning("could not start a %s child ahead of its job: %s", self.module, exc)
            return
        if self._closed:
            await child.discard()
        else:
            self._ready.append(child)

    async def close(self) -> None:
        """End the children that are waiting (a job's child ends with its job)."""
        self._closed = True
        for task in list(self._starting):
            with contextlib.suppress(BaseException):
                await task
        ready, self._ready = self._ready, []
        for child in ready:
            await child.discard()
