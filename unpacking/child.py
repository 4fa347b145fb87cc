"""Entry point of the sandboxed child process that unpacks one sample.

`python -m unpacking.child WORKDIR`: reads WORKDIR/request.json ({"sha256", "name",
"limits"}), finds the sample in the blob store WORKDIR/store (a directory the parent
filled), unpacks it there with unpacking.extract, and writes WORKDIR/result.json: the
report ({"children", "skipped", "archives", "time_limited"}) or {"error": message}. The
exit code says which (see EXIT_*). The parent (unpacking/contained.py) moves the blobs
the report names into the real store; this process never sees the real store, the
database or the keys.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

from common.failures import is_storage_full
from sandbox.memory import near_memory_limit
from store.blobs_local import LocalBlobStore
from unpacking.extract import BadSample, UnpackLimits, unpack_sample

REQUEST, RESULT, STORE = "request.json", "result.json", "store"
EXIT_OK = 0
EXIT_BAD_SAMPLE = 3
EXIT_MEMORY = 4
EXIT_CRASH = 5  # an unexpected error: reported, retried
EXIT_IO = 6  # the scratch directory failed (unwritable): retried
EXIT_NO_SPACE = 7  # the scratch directory's disk is full: the analysis waits for space


def main(argv: list[str]) -> int:
    work = Path(argv[1])
    try:
        request = json.loads((work / REQUEST).read_text())
        raw_limits = dict(request["limits"], passwords=tuple(request["limits"]["passwords"]))
        blobs = LocalBlobStore(work / STORE)
        report = unpack_sample(blobs, request["sha256"], UnpackLimits(**raw_limits),
                               name=request["name"])
    except BadSample as exc:
        return _fail(work, str(exc), EXIT_BAD_SAMPLE)
    except MemoryError:
        return _fail(work, "unpacking exceeded the memory limit", EXIT_MEMORY)
    except OSError as exc:
        if exc.errno == errno.EFBIG:  # RLIMIT_FSIZE: only a hostile archive gets there
            return _fail(work, "an unpacked file outgrew the file size limit", EXIT_BAD_SAMPLE)
        if is_storage_full(exc):  # our disk, not the sample (worker/storage.py)
            return _fail(work, f"out of storage space while unpacking: {exc}", EXIT_NO_SPACE)
        return _fail(work, f"unpacking failed: {type(exc).__name__}: {exc}", EXIT_IO)
    except BaseException as exc:  # report, don't hang
        if near_memory_limit():
            return _fail(work, f"unpacking exceeded the memory limit ({type(exc).__name__})",
                         EXIT_MEMORY)
        return _fail(work, f"unpacking failed: {type(exc).__name__}: {exc}"[:2000], EXIT_CRASH)
    _write(work, {
        "children": [dataclasses.asdict(child) for child in report.children],
        "skipped": report.skipped,
        "time_limited": report.time_limited,
        "archives": report.archives,
    })
    return EXIT_OK


def _fail(work: Path, message: str, code: int) -> int:
    print(f"ERROR {message}", file=sys.stderr, flush=True)
    try:
        _write(work, {"error": message})
    except OSError:
        pass  # the exit code still says what happened; stderr carries the message
    return code


def _write(work: Path, document: dict[str, Any]) -> None:
    tmp = work / f"{RESULT}.tmp"
    tmp.write_text(json.dumps(document))
    os.replace(tmp, work / RESULT)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
