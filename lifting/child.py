"""Entry point of the resource-limited child process that runs angr on one binary.

`python -m lifting.child SAMPLE OUT`: writes the lift as gzipped JSON to OUT and the
v1 graphs of its functions (festive.v1.packed) to OUT + FEATURES_SUFFIX, prints progress
lines on stdout and, on failure, one line `ERROR <message>` on stderr.
Exit codes tell the parent what happened (see EXIT_*). The worker starts it ahead of its
job through sandbox/serve.py, which calls `prepare` first.

AE_LIFT_WORKERS forked processes (default: the CPUs this process may run on) share the
lift: the CFG slices of a big x86 ELF (lifting/cfg_slices.py), or else, after one CFG
recovery, the functions in chunks of AE_LIFT_CHUNK.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import sys

from lifting.angr_lift import UnsupportedBinary
from sandbox.memory import near_memory_limit

EXIT_OK = 0
EXIT_UNSUPPORTED = 3
EXIT_MEMORY = 4
EXIT_CRASH = 5
EXIT_NO_SPACE = 6  # the disk is full: the machine's condition, retried by the parent
FEATURES_SUFFIX = ".fgraph.npz"


def main(argv: list[str]) -> int:
    sample, out = argv[1], argv[2]
    try:
        return _lift(sample, out)
    except UnsupportedBinary as exc:
        return _fail(str(exc), EXIT_UNSUPPORTED)
    except MemoryError:
        return _fail("lifting exceeded the memory limit", EXIT_MEMORY)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _fail(f"no space left to write the lift: {exc}", EXIT_NO_SPACE)
        return _fail(f"angr failed: {type(exc).__name__}: {exc}"[:2000], EXIT_CRASH)
    except BaseException as exc:  # angr raises anything on crafted input; report, don't hang
        if near_memory_limit():
            # Out of address space, angr's native parts fail in odd ways (SystemError,
            # NULL results): name the real cause.
            return _fail(f"lifting exceeded the memory limit ({type(exc).__name__})",
                         EXIT_MEMORY)
        if isinstance(exc, RecursionError):
            return _fail(f"angr recursed too deep on this binary: {exc}", EXIT_CRASH)
        return _fail(f"angr failed: {type(exc).__name__}: {exc}"[:2000], EXIT_CRASH)


def prepare() -> None:
    """The imports of a lift, done before the sample arrives (sandbox/serve.py)."""
    import festive.v1.packed  # noqa: F401
    from lifting.angr_lift import import_angr

    import_angr()  # loaded now, used by lifting.angr_lift


def _lift(sample: str, out: str) -> int:
    from festive.v1.packed import graph_if_considered, pack_with_graphs, to_bytes
    from lifting.angr_lift import DEFAULT_CHUNK, lift_binary_extras

    result, graphs = lift_binary_extras(
        sample, progress=lambda msg: print(msg, flush=True),
        workers=_env_int("AE_LIFT_WORKERS", len(os.sched_getaffinity(0))),
        chunk_size=_env_int("AE_LIFT_CHUNK", DEFAULT_CHUNK), extra=graph_if_considered,
    )
    if not result["functions"]:
        return _fail("no functions were recovered from the binary", EXIT_UNSUPPORTED)
    raw = json.dumps(result, sort_keys=True, separators=(",", ":")).encode()
    with open(out, "wb") as handle:
        handle.write(gzip.compress(raw, compresslevel=6, mtime=0))
    with open(out + FEATURES_SUFFIX, "wb") as handle:
        handle.write(to_bytes(pack_with_graphs(result, graphs)))
    print(f"done {len(result['functions'])} functions", flush=True)
    return EXIT_OK


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _fail(message: str, code: int) -> int:
    print(f"ERROR {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
