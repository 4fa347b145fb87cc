"""`python -S sandbox/rlimits.py [--cgroup DIR] [--as BYTES --cpu SECONDS [--fsize BYTES]]
[--session-nice] -- PROGRAM ARGS...` (run as a script: standard library only)

Joins the cgroup DIR, sets the limits on this process, asks the kernel to kill it when
its parent dies, and execs PROGRAM, which keeps all three. With --session-nice (a child
started in a session of its own), the session gets this process's niceness too.
This is how a contained child gets its limits without `preexec_fn` (unsafe in a threaded
worker): the limits are set by the child itself, in a fresh interpreter, before the
program starts.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
EXIT_SETUP = 125  # the limits could not be set: the machine's problem, not the program's


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sandbox/rlimits.py")
    parser.add_argument("--cgroup")
    parser.add_argument("--as", dest="address_space", type=int)
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--fsize", type=int)
    parser.add_argument("--session-nice", action="store_true")
    parser.add_argument("program", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        parser.error("no program to run")
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"sandbox.rlimits: prctl failed (errno {ctypes.get_errno()})", file=sys.stderr)
        return EXIT_SETUP
    if os.getppid() != parent:  # the parent died before the request took effect
        return EXIT_SETUP
    try:
        _limit(args)
    except (OSError, ValueError) as exc:
        print(f"sandbox.rlimits: {exc}", file=sys.stderr)
        return EXIT_SETUP
    if args.session_nice:
        _session_nice()
    executable = program[0] if "/" in program[0] else shutil.which(program[0])
    if executable is None:
        print(f"sandbox.rlimits: {program[0]}: not found", file=sys.stderr)
        return 127
    # this interpreter ignores SIGPIPE and SIGXFSZ, and exec would pass that on: a
    # program past its file-size limit is to be killed by SIGXFSZ, not see EFBIG
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    sys.stdout.flush()
    try:
        os.execv(executable, program)
    except OSError as exc:
        print(f"sandbox.rlimits: cannot run {executable}: {exc}", file=sys.stderr)
    return EXIT_SETUP


def _limit(args: argparse.Namespace) -> None:
    if args.cgroup is not None:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.address_space is not None:
        _lower(resource.RLIMIT_AS, args.address_space, args.address_space)
    if args.cpu is not None:
        _lower(resource.RLIMIT_CPU, args.cpu, args.cpu + 5)
    if args.fsize is not None:
        _lower(resource.RLIMIT_FSIZE, args.fsize, args.fsize)


def _session_nice() -> None:
    """Give this process's session (its autogroup) the niceness the process inherited.

    A contained child runs in a session of its own (the spawn's, and bwrap's
    --new-session), and where the kernel groups sessions
    (/proc/sys/kernel/sched_autogroup_enabled) each group gets a fair share of the CPU
    whatever the niceness of the processes in it: a lift started by a worker at nice 10
    would take a whole core from the API. Raising a group's niceness needs no privilege,
    but the kernel takes one change per 100 ms from unprivileged processes (EAGAIN). Not
    done is not fatal: the child runs, as before, at its fair share."""
    niceness = os.nice(0)
    if niceness <= 0:
        return
    problem = "the kernel kept answering EAGAIN"
    for _ in range(30):
        try:
            with open("/proc/self/autogroup", "w") as group:
                group.write(str(niceness))
            return
        except FileNotFoundError:
            return  # a kernel without autogroups: niceness alone decides
        except BlockingIOError:
            time.sleep(0.05)
        except OSError as exc:
            problem = str(exc)
            break
    print(f"sandbox.rlimits: the session keeps its default priority: {problem}",
          file=sys.stderr)


def _lower(which: int, soft: int, hard: int) -> None:
    """Set a limit, never above the one in force: a contained child's own children (upx,
    unar inside the unpack child) get their limits within the child's, not beside them."""
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
