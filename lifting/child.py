"""Entry point of the resource-limited child process that runs angr on one binary.

`python -m lifting.child SAMPLE OUT`: writes the lift as gzipped JSON to OUT, prints
progress lines on stdout and, on failure, one line `ERROR <message>` on stderr.
Exit codes tell the parent what happened (see EXIT_*).
"""

from __future__ import annotations

import gzip
import json
import sys

EXIT_OK = 0
EXIT_UNSUPPORTED = 3
EXIT_MEMORY = 4
EXIT_CRASH = 5


def main(argv: list[str]) -> int:
    sample, out = argv[1], argv[2]
    try:
        from lifting.angr_lift import UnsupportedBinary, lift_binary

        result = lift_binary(sample, progress=lambda msg: print(msg, flush=True))
    except UnsupportedBinary as exc:
        print(f"ERROR {exc}", file=sys.stderr, flush=True)
        return EXIT_UNSUPPORTED
    except MemoryError:
        print("ERROR lifting exceeded the memory limit", file=sys.stderr, flush=True)
        return EXIT_MEMORY
    except RecursionError as exc:
        print(f"ERROR angr recursed too deep on this binary: {exc}", file=sys.stderr, flush=True)
        return EXIT_CRASH
    except Exception as exc:  # angr raises anything on crafted input; report, don't hang
        print(f"ERROR angr failed: {type(exc).__name__}: {exc}"[:2000], file=sys.stderr, flush=True)
        return EXIT_CRASH
    if not result["functions"]:
        print("ERROR no functions were recovered from the binary", file=sys.stderr, flush=True)
        return EXIT_UNSUPPORTED
    raw = json.dumps(result, sort_keys=True, separators=(",", ":")).encode()
    with open(out, "wb") as handle:
        handle.write(gzip.compress(raw, compresslevel=6, mtime=0))
    print(f"done {len(result['functions'])} functions", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv))
