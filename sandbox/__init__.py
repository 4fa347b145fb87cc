"""The one way to start a child process that touches sample bytes (unpack, lift, UPX).

Every such child runs through `run`: inside bubblewrap (`AE_SANDBOX=bwrap`) it has no
network (a new network namespace with nothing in it), no privileges (the unprivileged
user 65534 in its own user namespace, every capability dropped, no new user namespaces),
its own PID namespace (killing it kills everything it started), and a filesystem view
holding only the Python runtime, the virtual environment and the project's code
read-only, its inputs read-only, and its scratch directory read-write (also its TMPDIR
and HOME; nothing else is writable, /tmp included). Its environment is emptied but for
PATH (no API keys, no database URL). In both modes it gets its limits from
`sandbox/rlimits.py` (RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, no core files, killed
when its parent dies) before the program starts, a memory cgroup of its own where the
machine allows one (sandbox/cgroup.py: the limit on all its processes together), a
session and process group of its own, and a wall-clock limit kept by the parent, which
kills the whole group on timeout, cancellation or error. No `preexec_fn`: nothing runs
in the forked child before exec.

`AE_SANDBOX`: `bwrap` (required: a start-up error when bubblewrap does not work),
`off` (limits only; a warning), or unset/`auto` (bwrap when it works, else off with a
warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import cgroup
from sandbox.rlimits import EXIT_SETUP

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The exec wrapper, run as a script without site-packages: it starts in a few ms and
# imports nothing of this package.
SANDBOX_DIR = Path(__file__).resolve().parent
RLIMITS = (sys.executable, "-S", str(SANDBOX_DIR / "rlimits.py"))
MODES = ("bwrap", "off")
NOBODY = 65534
HEARTBEAT_S = 2.0
STDERR_CAP = 1 << 20  # what the parent keeps of a child's stderr (the rest is read and dropped)
# What a child sees of the environment: nothing of the worker's (keys, database URL)
# but its PATH (child_env).
CHILD_ENV = {
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    # numpy's BLAS would start a thread per core, each reserving tens of MiB of address
    # space against the child's RLIMIT_AS; the children do no linear algebra worth it
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}
log = logging.getLogger("sandbox")


class SandboxUnavailable(RuntimeError):
    """AE_SANDBOX asks for a sandbox this machine cannot give, or the sandbox failed to
    start a child (an environment problem, never the sample's)."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int  # RLIMIT_AS
    time_s: float  # wall clock, kept by the parent; RLIMIT_CPU is set a little above it
    file_bytes: int | None = None  # RLIMIT_FSIZE: the largest file the child may write


@dataclass(frozen=True)
class Finished:
    code: int  # exit status; negative: the signal that ended the child
    stderr: str
    timed_out: bool
    last_line: str  # the child's last line on stdout
    peak_vm_bytes: int  # the largest address space any process of the child reached
    peak_rss_bytes: int
    memory_exceeded: bool = False  # the kernel killed a process of it at its cgroup's limit


# --- the mode ---------------------------------------------------------------------------
def mode() -> str:
    """The sandbox in force, from AE_SANDBOX. SandboxUnavailable when `bwrap` is asked
    for and does not work; a bad value names the variable and the expected form."""
    raw = os.environ.get("AE_SANDBOX", "").strip().lower() or "auto"
    if raw not in (*MODES, "auto"):
        raise SandboxUnavailable(f"AE_SANDBOX={raw!r}: expected bwrap, off or auto")
    return _resolve(raw)


@functools.cache
def _resolve(wanted: str) -> str:
    if wanted == "off":
        log.warning("AE_SANDBOX=off: children that parse samples run with limits only "
                    "(network, files and privileges of the worker)")
        return "off"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if wanted == "bwrap":
        raise SandboxUnavailable(f"AE_SANDBOX=bwrap but bubblewrap does not work here: {problem}")
    log.warning("no sandbox for children that parse samples (%s); set AE_SANDBOX=off to "
                "accept that, or install bubblewrap (Debian: bubblewrap)", problem)
    return "off"


# Settings a child reads itself, passed through when set (none is a secret): the lift's
# worker processes and chunk size, and where libarchive-c finds the library.
PASSED_ENV = ("AE_LIFT_WORKERS", "AE_LIFT_CHUNK", "LIBARCHIVE")


def child_env(scratch: Path) -> dict[str, str]:
    """The environment of a child: its temporary files and home are its scratch directory
    (there is no writable /tmp in the sandbox: a tmpfs would be memory outside its limit)."""
    passed = {name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)}
    return {"PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
            "TMPDIR": str(scratch), "HOME": str(scratch), **passed, **CHILD_ENV}


@functools.cache
def _bwrap() -> str | None:
    """Where bwrap is (looked up once: a child's PATH may differ)."""
    return shutil.which("bwrap")


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox children here, or None when it can."""
    bwrap = _bwrap()
    if bwrap is None:
        return "bwrap is not installed"
    probe = [bwrap, *_namespace_args(), "--ro-bind", "/", "/", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap could not run ({exc})"
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip()[:500] or f"exit {done.returncode}"
    return None


# --- the command ------------------------------------------------------------------------
def limited(argv: Sequence[str], limits: Limits, own_session: bool = False) -> list[str]:
    """`argv` started through the rlimit wrapper (for a child's own children too, e.g.
    upx inside the unpack child: they inherit its sandbox and get their own limits).
    own_session: it runs in a session of its own, which gets the child's niceness
    (rlimits.py --session-nice)."""
    cpu_s = math.ceil(limits.time_s) + 5
    wrapper = [*RLIMITS, "--as", str(limits.memory_bytes), "--cpu", str(cpu_s)]
    if limits.file_bytes is not None:
        wrapper += ["--fsize", str(limits.file_bytes)]
    if own_session:
        wrapper.append("--session-nice")
    return [*wrapper, "--", *argv]


def command(argv: Sequence[str], scratch: Path, inputs: Sequence[Path], limits: Limits,
            sandbox: str, cgroup_dir: Path | None = None) -> list[str]:
    """The full command line that runs `argv` contained (in `cgroup_dir` when given)."""
    # A session of its own: the spawn's (start_new_session), and bwrap's --new-session
    inner = limited(argv, limits, own_session=True)
    join = ([*RLIMITS, "--cgroup", str(cgroup_dir), "--"]
            if cgroup_dir is not None else [])
    if sandbox == "off":
        return [*join, *inner]
    bwrap = _bwrap()
    if bwrap is None:
        raise SandboxUnavailable("bwrap is not installed")
    args = [bwrap, *_namespace_args(), "--die-with-parent", "--new-session", "--clearenv"]
    # getpass.getuser() (pyvex) reads these; unar's GNUstep asks getpwuid() (the view's
    # /etc/passwd and /etc/group name user and group 65534, and nothing else)
    for name, value in {**child_env(scratch), "USER": "nobody", "LOGNAME": "nobody"}.items():
        args += ["--setenv", name, value]
    for path in _system_paths():
        args += ["--ro-bind-try", path, path]
    for name in ("passwd", "group"):
        args += ["--ro-bind", str(SANDBOX_DIR / name), f"/etc/{name}"]
    for path in _runtime_paths():
        args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", "--proc", "/proc"]
    args += ["--bind", str(scratch), str(scratch)]
    for given in inputs:
        args += ["--ro-bind", str(given), str(given)]
    # The rest of the view (the directories bwrap made to hold the mounts) is read-only.
    args += ["--remount-ro", "/", "--chdir", str(PROJECT_ROOT), "--", *inner]
    return [*join, *args]  # bwrap and all below it in the cgroup


def _namespace_args() -> list[str]:
    """Every namespace new; as user 65534 with no capabilities (a root worker included)."""
    return ["--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--disable-userns", "--cap-drop", "ALL"]


def _system_paths() -> list[str]:
    """Shared libraries and the few files the dynamic loader and Python read."""
    return ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache",
            "/etc/localtime"]


def _runtime_paths() -> list[str]:
    """The interpreter, its standard library, the virtual environment, the project's code
    (its packages only: never the data directory beside them)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent.parent)}
    for entry in sorted(PROJECT_ROOT.iterdir()):
        if (entry / "__init__.py").is_file() and entry.name != "tests":
            paths.add(str(entry))
    system = tuple(_system_paths())
    keep = sorted(p for p in paths if not p.startswith(system) and Path(p).exists())
    # Drop paths inside others (bwrap binds each; a nested one would only repeat it).
    return [p for p in keep if not any(p != q and p.startswith(q + "/") for q in keep)]


# --- running ----------------------------------------------------------------------------
class Spawned:
    """A contained child that is running and may not have its job yet (sandbox/warm.py
    starts it early). `finish` hands it its job and sees it to its end; `kill` ends an
    unused one. Either way its process group and memory cgroup are gone afterwards."""

    def __init__(self, proc: asyncio.subprocess.Process, sandbox: str,
                 group: Path | None) -> None:
        self.proc, self.sandbox, self.group = proc, sandbox, group
        self._stderr = bytearray()
        self._stderr_task = asyncio.ensure_future(
            _read_capped(proc.stderr, self._stderr))  # type: ignore[arg-type]

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def finish(
        self, job: bytes | None, limits: Limits,
        tick: Callable[[str], None] = lambda _line: None, heartbeat_s: float = HEARTBEAT_S,
    ) -> Finished:
        """Write `job` (None: nothing) to its stdin, close that, and wait for its end,
        calling `tick` with its last stdout line at least every `heartbeat_s`. The wall
        clock limit `limits.time_s` counts from now. On cancellation or any error the
        child is killed before this returns or raises; on its time limit too
        (timed_out=True)."""
        try:
            await self._deliver(job)
            return await self._watch(limits, tick, heartbeat_s)
        finally:
            await self.kill()

    async def _deliver(self, job: bytes | None) -> None:
        stdin = self.proc.stdin
        if stdin is None:
            return
        # a child that died already is seen by _watch (its exit code and stderr)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if job is not None:
                stdin.write(job)
                await stdin.drain()
            stdin.close()

    async def _watch(self, limits: Limits, tick: Callable[[str], None],
                     heartbeat_s: float) -> Finished:
        proc = self.proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.time_s
        last_line, pending = "", b""
        peak_vm = peak_rss = 0
        timed_out = False
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(proc.stdout.read(1 << 16), heartbeat_s)  # type: ignore[union-attr]
                except TimeoutError:
                    chunk = None
                if chunk == b"" or (chunk is None and proc.returncode is not None):
                    break  # done (a process it left behind may hold the pipe open: not waited for)
                if chunk:
                    *lines, pending = (pending + chunk).split(b"\n")
                    pending = pending[-4096:]
                    if lines and lines[-1].strip():
                        last_line = lines[-1].decode(errors="replace").strip()[-4096:]
                vm, rss = _peaks(proc.pid)
                peak_vm, peak_rss = max(peak_vm, vm), max(peak_rss, rss)
                tick(last_line)
                if loop.time() > deadline:
                    timed_out = True
                    break
            if not timed_out:
                await proc.wait()
        finally:
            # Cancelled, timed out or failed: never leave it running; after a normal exit,
            # nothing it started may outlive it either.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        code = await proc.wait()
        with contextlib.suppress(TimeoutError):  # what it left behind may hold stderr open
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 2.0)
        self._stderr_task.cancel()
        errors = self._stderr.decode(errors="replace")
        if (code == 1 and errors.startswith("bwrap:")) or (
            code == EXIT_SETUP and errors.startswith("sandbox.rlimits:")
        ):
            raise SandboxUnavailable(f"the sandbox could not start the child: {errors.strip()}")
        if self.sandbox == "bwrap":
            if code > 128 and code - 128 in signal.Signals._value2member_map_:
                code = -(code - 128)  # bwrap reports a child's death by signal as 128 + signal
        if pending.strip():
            last_line = pending.decode(errors="replace").strip()[-4096:]
        memory_exceeded = self.group is not None and cgroup.oom_killed(self.group)
        return Finished(code, errors, timed_out, last_line, peak_vm, peak_rss, memory_exceeded)

    async def kill(self) -> None:
        """End the child and all it started, and remove its cgroup (idempotent)."""
        if self.proc.returncode is None:  # once reaped, its pid may be another's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self._stderr_task.cancel()
        group, self.group = self.group, None
        if group is not None:
            await _empty(group)


async def spawn(argv: Sequence[str], *, scratch: Path, inputs: Sequence[Path] = (),
                limits: Limits) -> Spawned:
    """Start `argv` contained, its stdin a pipe for the job (Spawned.finish)."""
    sandbox = mode()
    memory_group = cgroup.parent()
    group = cgroup.create(memory_group, limits.memory_bytes) if memory_group else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *command(argv, scratch, inputs, limits, sandbox, group), cwd=PROJECT_ROOT,
            env=child_env(scratch), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own session and process group (set in C, not Python)
        )
    except BaseException:
        if group is not None:
            await _empty(group)
        raise
    return Spawned(proc, sandbox, group)


async def run(
    argv: Sequence[str],
    *,
    scratch: Path,
    inputs: Sequence[Path] = (),
    limits: Limits,
    tick: Callable[[str], None] = lambda _line: None,
    heartbeat_s: float = HEARTBEAT_S,
) -> Finished:
    """Run `argv` contained (stdin empty), calling `tick` with its last stdout line at
    least every `heartbeat_s` (heartbeats go on, so a cancel is seen). On cancellation
    (an asyncio.CancelledError raised here) or any error the child's whole process group
    is killed before this returns or raises; on its time limit too (timed_out=True)."""
    child = await spawn(argv, scratch=scratch, inputs=inputs, limits=limits)
    return await child.finish(None, limits, tick, heartbeat_s)


async def _empty(group: Path) -> None:
    """Kill what is left in a child's cgroup (what escaped its process group, a new
    session) and remove the cgroup."""
    for pid in cgroup.processes(group).split():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):  # the killed processes may take a moment to leave it
        if not cgroup.processes(group):
            break
        await asyncio.sleep(0.1)
    cgroup.remove(group)


def run_blocking(argv: Sequence[str], *, scratch: Path, inputs: Sequence[Path] = (),
                 limits: Limits) -> Finished:
    """`run` from synchronous code (a thread of its own, so it works under a running loop)."""
    coro = run(argv, scratch=scratch, inputs=inputs, limits=limits)
    with contextlib.closing(coro):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()


async def _read_capped(stream: asyncio.StreamReader, kept: bytearray) -> None:
    while chunk := await stream.read(1 << 16):
        if len(kept) < STDERR_CAP:
            kept += chunk[: STDERR_CAP - len(kept)]


def _peaks(pid: int) -> tuple[int, int]:
    """Largest VmPeak and VmHWM among `pid` and its descendants (bwrap's children live
    below it); zeros once they are gone."""
    vm = rss = 0
    for each in _descendants(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmPeak:"):
                vm = max(vm, int(line.split()[1]) * 1024)
            elif line.startswith("VmHWM:"):
                rss = max(rss, int(line.split()[1]) * 1024)
    return vm, rss


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 1000:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found
