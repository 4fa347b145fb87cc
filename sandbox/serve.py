"""`python -m sandbox.serve MODULE`: a contained child started before its job
(sandbox/warm.py), run inside the sandbox like any other.

It imports MODULE, and whatever MODULE's `prepare()` loads, while the worker has no job
for it. Then it reads one line from stdin, a JSON list of strings (the job's arguments),
names itself after MODULE (/proc/PID/comm, so that a busy child can be told from an idle
one) and exits with MODULE.main([MODULE, *arguments]). One job only: the next one gets a
fresh process, so a sample never shares a process with another. End of input before a
line (the pool closing) exits 0 with nothing done.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys

JOB_CAP = 1 << 20  # a job line is a few paths
EXIT_BAD_JOB = 2
_PR_SET_NAME = 15


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m sandbox.serve MODULE", file=sys.stderr)
        return EXIT_BAD_JOB
    name = argv[1]
    module = importlib.import_module(name)
    prepare = getattr(module, "prepare", None)
    if prepare is not None:
        prepare()
    line = sys.stdin.buffer.readline(JOB_CAP)
    if not line.strip():
        return 0
    try:
        arguments = json.loads(line)
    except ValueError:
        arguments = None
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        print(f"ERROR sandbox.serve: a job is a JSON list of strings, not {line[:200]!r}",
              file=sys.stderr)
        return EXIT_BAD_JOB
    ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    return int(module.main([name, *arguments]))


if __name__ == "__main__":
    code = main(sys.argv)
    # The job's files are written and closed; tearing down the interpreter with angr (or
    # libarchive) loaded would only add 0.1-0.2 s to every job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
