"""Contained children started ahead of their job.

A lift child spends 2-3 s of CPU importing Python and angr before it reads a byte of the
sample: on a small binary, more than the lift itself. A `Children` pool keeps `keep`
children of one module started (`python -m sandbox.serve MODULE`, in the sandbox, under
their limits, each with a scratch directory of its own), so a job finds its imports
done. Each child takes one job and exits, so a sample never shares a process with
another, as before. Its replacement is started after the job, once the machine is idle
(Children._until_idle), or at once when a job needs it.

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
# A replacement child starts once this share of the machine's CPU time was idle over one
# window, or a job needs it, or after IDLE_WAIT_S (Children._until_idle).
IDLE_SHARE = 0.75
IDLE_WINDOW_S = 0.5
IDLE_WAIT_S = 30.0
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
                 prefix: str = "child-", idle_wait_s: float = IDLE_WAIT_S) -> None:
        self.module, self.scratch_root, self.limits = module, scratch_root, limits
        self.keep, self.prefix, self.idle_wait_s = keep, prefix, idle_wait_s
        self._ready: list[Child] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._needed = asyncio.Event()  # a job waits for a child: start without delay
        self._closed = False

    @property
    def waiting(self) -> list[Child]:
        """The children started and not yet taken."""
        return list(self._ready)

    async def take(self) -> Child:
        """A started child: one that is waiting, else the one being started (started
        now, whether the machine is idle or not), else a new one."""
        while True:
            if self._ready:
                child = self._ready.pop(0)
                if child.spawned.alive:
                    return child
                # it died waiting (killed, out of memory): its exit is of no job's
                await child.discard()
                continue
            if not self._starting:
                return await start(self.module, self.scratch_root, self.limits, self.prefix,
                                   self.fill)
            self._needed.set()
            await asyncio.wait(set(self._starting), return_when=asyncio.FIRST_COMPLETED)

    def fill(self) -> None:
        """Start children in the background until `keep` are ready or starting (called
        when a child's job is over, Child.discard). Each starts once the machine is idle
        (see _until_idle)."""
        if self._closed:
            return
        for _ in range(self.keep - len(self._ready) - len(self._starting)):
            task = asyncio.ensure_future(self._start_one())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        await self._until_idle()
        if self._closed:
            return
        try:
            child = await start(self.module, self.scratch_root, self.limits, self.prefix,
                                self.fill)
        except Exception as exc:  # noqa: BLE001 - a job then starts its own, and reports
            log.warning("could not start a %s child ahead of its job: %s", self.module, exc)
            return
        finally:
            if len(self._starting) <= 1:
                self._needed.clear()
        if self._closed:
            await child.discard()
        else:
            self._ready.append(child)

    async def _until_idle(self) -> None:
        """Wait until the machine's CPUs are idle (IDLE_SHARE of their time over
        IDLE_WINDOW_S), a job needs a child, or idle_wait_s have passed. A child's start
        takes 2-3 s of CPU (angr's imports): beside a lift it slows the lift, after it
        the embedding that follows on the same machine, and beside an unpack (~10 ms)
        it made the unpack ten times slower. Idle time costs nobody anything."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_wait_s
        before = _cpu_times()
        while loop.time() < deadline and not self._needed.is_set() and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._needed.wait(), IDLE_WINDOW_S)
            after = _cpu_times()
            busy, total = after[0] - before[0], after[1] - before[1]
            if total > 0 and (total - busy) / total >= IDLE_SHARE:
                return
            before = after

    async def close(self) -> None:
        """End the children that are waiting (a job's child ends with its job)."""
        self._closed = True
        for task in list(self._starting):
            with contextlib.suppress(BaseException):
                await task
        ready, self._ready = self._ready, []
        for child in ready:
            await child.discard()


def _cpu_times() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat); (0, 0) where there
    is no /proc/stat (then a replacement waits idle_wait_s or for a job)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is counted in user time already
    return total - idle, total
