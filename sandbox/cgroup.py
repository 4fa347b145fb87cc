"""A memory cgroup per contained child, where this machine lets the worker make one.

RLIMIT_AS caps each process of a child; the cgroup caps all of them together (a child
that starts processes of its own, angr's parallel lifting for one) and counts page
cache. The child joins it through `sandbox/rlimits.py --cgroup DIR` before bwrap
starts, so everything below inherits it. Where: `AE_SANDBOX_CGROUP` (a directory of a
cgroup v1 memory hierarchy or of cgroup v2 with the memory controller delegated), else
this process's own cgroup in a cgroup v1 memory hierarchy (cgroup v2 forbids processes in
a cgroup whose children get controllers, so it is never guessed). None when neither
works: RLIMIT_AS alone then.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import uuid
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/memory")
STALE_S = 600  # an empty child cgroup this old was left by a worker that was killed
log = logging.getLogger("sandbox")


@functools.cache
def parent() -> Path | None:
    """The cgroup children's cgroups are made in, or None (checked once per process)."""
    explicit = os.environ.get("AE_SANDBOX_CGROUP", "").strip()
    candidate = Path(explicit) if explicit else _own_v1_cgroup()
    if candidate is None:
        return None
    try:
        probe = create(candidate, 64 << 20)
        remove(probe)
    except OSError as exc:
        if explicit:
            log.warning("AE_SANDBOX_CGROUP=%s is not usable (%s): RLIMIT_AS only", explicit, exc)
        return None
    sweep(candidate)
    return candidate


def sweep(under: Path, older_than_s: float = STALE_S) -> None:
    """Remove the empty child cgroups killed workers left behind (a worker removes its
    own; one killed with SIGKILL cannot)."""
    now = time.time()
    for path in under.glob("ae-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > older_than_s and not processes(path):
                path.rmdir()


def processes(path: Path) -> str:
    """The pids in a cgroup, as the kernel lists them ("" when none or it is gone)."""
    try:
        return (path / "cgroup.procs").read_text().strip()
    except OSError:
        return ""


def _own_v1_cgroup() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            own = V1_ROOT / path.lstrip("/")
            return own if own.is_dir() else (V1_ROOT if V1_ROOT.is_dir() else None)
    return None


def _is_v2(directory: Path) -> bool:
    return (directory / "cgroup.controllers").exists()


def create(under: Path, memory_bytes: int) -> Path:
    """A new cgroup limited to `memory_bytes` of memory, no swap beyond it."""
    path = under / f"ae-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        if _is_v2(under):
            (path / "memory.max").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):  # only with swap accounting on
                (path / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
    except OSError:
        remove(path)
        raise
    return path


def oom_killed(path: Path) -> bool:
    """Whether the kernel killed a process of this cgroup for going over its limit."""
    name = "memory.events" if _is_v2(path.parent) else "memory.oom_control"
    try:
        text = (path / name).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value) > 0
    return False


def remove(path: Path) -> None:
    """Remove an empty cgroup (its processes are gone); left in place if it is not."""
    try:
        path.rmdir()
    except OSError as exc:
        log.warning("cgroup %s not removed: %s", path, exc)
