"""Children started ahead of their job (sandbox/warm.py, sandbox/serve.py): the real lift
and unpack children, in the sandbox (bwrap) and without it (off).

A child started ahead lifts exactly as one started for the job; each takes one job and
is then gone; its time limit counts from the job; it sees its inbox read-only. The pool
starts replacements in idle time, but at once for a job, and replaces a child that died
waiting; closing it, or killing the process that holds it, leaves no child and no
scratch directory behind. The cpu worker keeps one lift and one unpack child waiting,
and an analysis takes them.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import sandbox
from common.contracts import MODEL_NAME
from festive.v1.packed import from_bytes
from lifting.child import EXIT_OK, FEATURES_SUFFIX
from sandbox import Limits
from sandbox.serve import EXIT_BAD_JOB
from sandbox.warm import Child, Children, start
from tests.conftest import submit, wait_for_final
from tests.test_parallel_lift import same_graph

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path("/usr/bin/true")
LIFT = Limits(memory_bytes=4096 * MiB, time_s=300)


@pytest.fixture(params=["bwrap", "off"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "bwrap" and sandbox.bwrap_problem() is not None:
        pytest.fail(f"bubblewrap does not work here: {sandbox.bwrap_problem()}")
    monkeypatch.setenv("AE_SANDBOX", request.param)
    return request.param


async def ready(pool: Children, timeout_s: float = 60) -> list[int]:
    """The pids of the pool's started children, once `keep` of them are."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(pool.waiting) >= pool.keep:
            return [child.spawned.proc.pid for child in pool.waiting]
        await asyncio.sleep(0.05)
    raise AssertionError("the pool started no child")


async def lift(child: Child) -> tuple[sandbox.Finished, dict, bytes]:
    shutil.copyfile(SAMPLE, child.inbox / "sample")
    out = child.scratch / "lift.json.gz"
    done = await child.run([str(child.inbox / "sample"), str(out)])
    assert done.code == EXIT_OK, done.stderr
    return done, json.loads(gzip.decompress(out.read_bytes())), \
        Path(str(out) + FEATURES_SUFFIX).read_bytes()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_child_started_ahead_lifts_as_one_started_for_its_job(
    mode: str, tmp_path: Path
) -> None:
    pool = Children("lifting.child", tmp_path, LIFT, keep=1, prefix="lift-")
    pool.fill()
    (waiting,) = await ready(pool)
    async with await pool.take() as ahead:
        assert ahead.spawned.proc.pid == waiting
        _, ahead_lift, ahead_packed = await lift(ahead)
        assert not alive(waiting)  # one job, then gone
    async with await start("lifting.child", tmp_path, LIFT, "lift-") as fresh:
        _, fresh_lift, fresh_packed = await lift(fresh)
    assert len(ahead_lift["functions"]) > 40
    assert ahead_lift == fresh_lift
    a, b = from_bytes(ahead_packed), from_bytes(fresh_packed)
    assert a.addrs == b.addrs and a.names == b.names and a.binary == b.binary
    assert all(same_graph(x, y) for x, y in zip(a.graphs, b.graphs, strict=True))

    # its job over, another was started, which is another process
    (replacement,) = await ready(pool)
    assert replacement != waiting and alive(replacement)
    await pool.close()
    assert not alive(replacement)
    assert list(tmp_path.iterdir()) == []  # every scratch directory removed


async def test_the_time_limit_counts_from_the_job(tmp_path: Path) -> None:
    """A child that waited longer than its time limit still gets all of it for its job
    (a lift that prints progress: the limit is checked at every line)."""
    limits = Limits(memory_bytes=LIFT.memory_bytes, time_s=20)
    pool = Children("lifting.child", tmp_path, limits, keep=1, prefix="lift-")
    pool.fill()
    await ready(pool)
    await asyncio.sleep(21)
    async with await pool.take() as child:
        done, lifted, _ = await lift(child)
    assert not done.timed_out and lifted["functions"]
    await pool.close()


async def test_its_inbox_is_read_only_to_it(mode: str, tmp_path: Path) -> None:
    """The unpack child writes its result into the directory it is given: its scratch
    directory takes it, its inbox does not (with the sandbox; without, nothing stops it)."""
    limits = Limits(memory_bytes=1024 * MiB, time_s=60)
    for where, writable in (("scratch", True), ("inbox", mode == "off")):
        async with await start("unpacking.child", tmp_path, limits, "unpack-") as child:
            target = child.scratch if where == "scratch" else child.inbox
            await child.run([str(target)])
            assert (target / "result.json").exists() == writable, where


async def test_a_child_that_died_waiting_is_replaced(mode: str, tmp_path: Path) -> None:
    pool = Children("lifting.child", tmp_path, LIFT, keep=1, prefix="lift-")
    pool.fill()
    (waiting,) = await ready(pool)
    os.killpg(waiting, signal.SIGKILL)
    while pool.waiting[0].spawned.alive:
        await asyncio.sleep(0.05)
    async with await pool.take() as child:
        assert child.spawned.proc.pid != waiting
        done, lifted, _ = await lift(child)
    assert lifted["functions"]
    await pool.close()
    assert list(tmp_path.iterdir()) == []


async def test_a_replacement_waits_for_idle_time_unless_a_job_needs_it(
    tmp_path: Path
) -> None:
    limits = Limits(memory_bytes=1024 * MiB, time_s=60)
    pool = Children("unpacking.child", tmp_path, limits, keep=1, prefix="unpack-")
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 1)]
    try:
        async with await pool.take():
            pass  # a job over: its replacement is due, but every CPU is busy
        await asyncio.sleep(3)
        assert pool.waiting == []
        started = time.monotonic()
        async with await pool.take() as child:  # a job needs one: started now, busy or not
            assert child.spawned.alive
        assert time.monotonic() - started < pool.idle_wait_s / 2
    finally:
        for process in spin:
            process.kill()
            process.wait()
    await ready(pool)  # idle again: the replacement of the second job starts
    await pool.close()
    assert list(tmp_path.iterdir()) == []


async def test_a_bad_job_line_is_a_clear_error(mode: str, tmp_path: Path) -> None:
    async with await start("lifting.child", tmp_path, LIFT, "lift-") as child:
        done = await child.spawned.finish(b'{"not": "a list"}\n', LIFT)
    assert done.code == EXIT_BAD_JOB
    assert "a job is a JSON list of strings" in done.stderr


HOLDER = """
import asyncio, sys
from pathlib import Path
from sandbox import Limits
from sandbox.warm import Children

async def main():
    pool = Children("lifting.child", Path(sys.argv[1]), Limits(1 << 32, 300), keep=2)
    pool.fill()
    while len(pool.waiting) < 2:
        await asyncio.sleep(0.05)
    print(" ".join(str(c.spawned.proc.pid) for c in pool.waiting), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_children_waiting_die_with_the_process_that_holds_them(
    mode: str, tmp_path: Path
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pids = [int(p) for p in holder.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "a waiting child outlived its holder"


def waiting_children(module: str) -> list[int]:
    """Pids of this process's children of `module` that wait for a job (the Python
    process, not the bwrap around it; a busy one has renamed itself after `module`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if (b"sandbox.serve" in argv and module.encode() in argv
                and not argv[0].endswith(b"bwrap") and name != module
                and below(int(entry.name), os.getpid())):
            found.append(int(entry.name))
    return sorted(found)


def below(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


async def until_found(find, timeout_s: float = 120) -> list[int]:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := find():
            return found
        await asyncio.sleep(0.2)
    raise AssertionError("nothing found in time")


@pytest.mark.usefixtures("workers")
async def test_the_cpu_worker_keeps_children_started_for_its_jobs(api) -> None:  # noqa: ANN001
    """The worker (AE_WARM_CHILDREN=1) has an unpack and a lift child waiting; an
    analysis takes them, and new ones wait afterwards."""
    lift_before = await until_found(lambda: waiting_children("lifting.child"))
    unpack_before = await until_found(lambda: waiting_children("unpacking.child"))
    assert len(lift_before) == len(unpack_before) == 1
    sha256 = await submit(api, SAMPLE.read_bytes() + uuid.uuid4().bytes, "true")
    assert (await wait_for_final(api, sha256))["status"][MODEL_NAME] == "SUCCESS"
    assert not alive(lift_before[0]) and not alive(unpack_before[0])
    lift_after = await until_found(lambda: waiting_children("lifting.child"))
    unpack_after = await until_found(lambda: waiting_children("unpacking.child"))
    assert lift_after != lift_before and unpack_after != unpack_before
