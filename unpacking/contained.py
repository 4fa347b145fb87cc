"""Unpacking in a sandboxed child process: the worker's side.

The sample is copied into a fresh scratch directory holding a blob store of its own; the
child (unpacking/child.py, started through sandbox/) unpacks it there under time and
memory limits and writes a small JSON report. Only the blobs that report names, each
checked against its digest, are then copied into the real store. Errors keep their
classes: BadSample (the sample's fault, never retried) and UnpackFailed (the machine's,
retried).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sandbox import Finished, Limits, SandboxUnavailable
from sandbox.warm import CHILDREN_DIR, Children, start
from store.blobs import CHUNK, BlobStore, is_sha256
from store.blobs_local import LocalBlobStore
from unpacking.child import (
    EXIT_BAD_SAMPLE,
    EXIT_MEMORY,
    EXIT_NO_SPACE,
    EXIT_OK,
    REQUEST,
    RESULT,
    STORE,
)
from unpacking.extract import BadSample, Child, UnpackLimits, UnpackReport

MiB = 1 << 20
CHILD_MODULE = "unpacking.child"
RESULT_CAP = 16 * MiB
TICK_S = 2.0


class UnpackFailed(Exception):
    """The unpack child failed for a reason that is not the sample's (retried)."""


class UnpackNoSpace(UnpackFailed):
    """The child's scratch disk filled up: the analysis waits for space (StorageFull)."""


@dataclasses.dataclass(frozen=True)
class ChildLimits:
    memory_mb: int = 2048
    timeout_s: int = 300


async def unpack_contained(
    blobs: BlobStore,
    sha256: str,
    limits: UnpackLimits = UnpackLimits(),  # noqa: B008 - frozen, safe as a default
    child: ChildLimits = ChildLimits(),  # noqa: B008 - frozen, safe as a default
    *,
    name: str | None = None,
    tick: Callable[[str], None] = lambda _line: None,
    started: Children | None = None,
) -> UnpackReport:
    """unpack_sample, run in a sandboxed child; the same report, or BadSample. The child
    comes from `started` (children started ahead, sandbox/warm.py) when their limits are
    these, else it is started now."""
    wanted = child_limits(limits, child)
    if started is not None and started.limits == wanted:
        contained = await started.take()
    else:
        contained = await start(CHILD_MODULE, blobs.scratch / CHILDREN_DIR, wanted, "unpack-")
    async with contained:
        work = contained.scratch
        await _in_thread(tick, "copying the sample", _prepare, blobs, sha256, limits, name,
                         work)
        done = await contained.run([str(work)], tick=tick)
        result = _result(work, done, child)
        report = _report(result)
        await _in_thread(tick, "storing what was unpacked", _import_blobs, blobs, work / STORE,
                         report, sha256)
        return report


def child_limits(limits: UnpackLimits, child: ChildLimits) -> Limits:
    """The unpack child's limits: memory and time as configured, files no larger than
    what the unpack limits let through."""
    return Limits(memory_bytes=child.memory_mb * MiB, time_s=child.timeout_s,
                  file_bytes=max(limits.max_total_bytes, limits.max_child_bytes) + MiB)


async def _in_thread(tick: Callable[[str], None], what: str, fn: Callable[..., None],
                     *args: Any) -> None:
    """Blocking blob I/O (a download or upload with S3) in a thread, ticking meanwhile so
    heartbeats go on and a cancel is seen."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    while True:
        done, _ = await asyncio.wait({task}, timeout=TICK_S)
        if done:
            return task.result()
        tick(what)


def unpack_contained_blocking(blobs: BlobStore, sha256: str,
                              limits: UnpackLimits = UnpackLimits(),  # noqa: B008
                              child: ChildLimits = ChildLimits(),  # noqa: B008
                              *, name: str | None = None) -> UnpackReport:
    """unpack_contained for synchronous callers (a thread of its own with its own loop)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(
            asyncio.run, unpack_contained(blobs, sha256, limits, child, name=name)
        ).result()


def _prepare(blobs: BlobStore, sha256: str, limits: UnpackLimits, name: str | None,
             work: Path) -> None:
    store = LocalBlobStore(work / STORE)
    with blobs.local_copy(sha256) as sample:
        copied, _ = store.put_file(sample)
    if copied != sha256:
        raise UnpackFailed(f"sample {sha256} changed while it was copied (now {copied})")
    request = {"sha256": sha256, "name": name, "limits": dataclasses.asdict(limits)}
    (work / REQUEST).write_text(json.dumps(request))


def _result(work: Path, done: Finished, child: ChildLimits) -> dict[str, Any]:
    """The child's JSON result, or the error its end calls for."""
    if done.timed_out:
        raise BadSample(f"unpacking took longer than {child.timeout_s} s; the sample is too "
                        "large or built to stall the unpacker")
    near_limit = done.memory_exceeded or done.peak_vm_bytes >= 0.8 * child.memory_mb * MiB
    if done.code == EXIT_MEMORY or (done.code != EXIT_OK and near_limit):
        raise BadSample(f"unpacking exceeded the memory limit of {child.memory_mb} MiB")
    if done.code < 0:
        signame = (signal.Signals(-done.code).name
                   if -done.code in signal.Signals._value2member_map_ else str(done.code))
        raise BadSample(f"the unpack process died with {signame}")
    document = _read_json(work / RESULT)
    message = document.get("error") if isinstance(document, dict) else None
    if done.code == EXIT_BAD_SAMPLE and isinstance(message, str):
        raise BadSample(message)
    if done.code == EXIT_NO_SPACE:
        raise UnpackNoSpace(str(message or "out of storage space while unpacking"))
    if done.code != EXIT_OK or not isinstance(document, dict) or message is not None:
        last = message or (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UnpackFailed(f"the unpack process failed (exit {done.code}): {last}"[:2000])
    return document


def _read_json(path: Path) -> Any:
    try:
        with _open_regular(path) as handle:
            raw = handle.read(RESULT_CAP + 1)
    except OSError:
        return None
    if len(raw) > RESULT_CAP:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _report(document: dict[str, Any]) -> UnpackReport:
    """The report, every field checked: the child's output is not trusted."""
    try:
        children = [_child(entry) for entry in document["children"]]
        skipped = [_strings(entry, {"name", "reason"}) for entry in document["skipped"]]
        archives = [_strings(entry, {"name", "type", "entries", "sha256"})
                    for entry in document["archives"]]
        time_limited = document["time_limited"]
        if type(time_limited) is not bool:
            raise ValueError(f"time_limited is {time_limited!r:.50}")
    except (KeyError, TypeError, ValueError) as exc:
        raise UnpackFailed(f"the unpack process wrote an unreadable report ({exc})") from exc
    for archive in archives:
        if not is_sha256(archive["sha256"]):
            raise UnpackFailed("the unpack process wrote an unreadable report (archive sha256)")
    return UnpackReport(children=children, skipped=skipped, archives=archives,
                        time_limited=time_limited)


def _child(entry: Any) -> Child:
    fields = {f.name for f in dataclasses.fields(Child)}
    if not isinstance(entry, dict) or set(entry) != fields:
        raise ValueError(f"bad child entry {entry!r:.200}")
    ok = (is_sha256(entry["sha256"]) and isinstance(entry["name"], str)
          and entry["format"] in ("ELF", "PE", "MachO")
          and type(entry["depth"]) is int and type(entry["size"]) is int
          and (entry["parent_sha256"] is None or is_sha256(entry["parent_sha256"])))
    if not ok:
        raise ValueError(f"bad child entry {entry!r:.200}")
    return Child(**entry)


def _strings(entry: Any, keys: set[str]) -> dict[str, str]:
    if not isinstance(entry, dict) or set(entry) != keys:
        raise ValueError(f"bad entry {entry!r:.200}")
    if not all(isinstance(value, str) for value in entry.values()):
        raise ValueError(f"bad entry {entry!r:.200}")
    return dict(entry)


def _import_blobs(blobs: BlobStore, root: Path, report: UnpackReport, sample: str) -> None:
    """Copy every blob the report names from the child's store into the real one."""
    wanted = {c.sha256 for c in report.children}
    wanted |= {c.parent_sha256 for c in report.children if c.parent_sha256}
    wanted |= {a["sha256"] for a in report.archives}
    wanted.discard(sample)
    child_store = LocalBlobStore(root)
    for sha256 in sorted(wanted):
        if blobs.exists(sha256):
            continue
        path = child_store.path(sha256)
        if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root)):
            raise UnpackFailed(f"the unpack process left {sha256} outside its store")
        try:
            with _open_regular(path) as handle:
                stored, _ = blobs.put_chunks(_read_chunks(handle))
        except FileNotFoundError as exc:
            raise UnpackFailed(f"the unpack process reported {sha256} but did not "
                               "write it") from exc
        if stored != sha256:
            raise UnpackFailed(f"the unpack process wrote {stored} as {sha256}")


def _open_regular(path: Path) -> Any:
    """Open a file the child wrote: never through a link, only a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _read_chunks(handle: Any) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


__all__ = ["ChildLimits", "SandboxUnavailable", "UnpackFailed", "unpack_contained",
           "unpack_contained_blocking"]
