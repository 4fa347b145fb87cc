"""The sandbox of children that parse samples (sandbox/), with real children started by
the same spawner the unpack and lift stages use.

Each containment check runs twice: with AE_SANDBOX=bwrap it must hold, with
AE_SANDBOX=off the same probe must get through (so the check can fail, and does when
the sandbox is missing). AE_SANDBOX_TEST_OVERRIDE=off runs the bwrap cases without the
sandbox: every containment check must then fail (how the report's "fails when off" was
checked). Memory and time limits are not the sandbox's: they hold in both modes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox
import sandbox.cgroup
from sandbox import Limits

MiB = 1 << 20
LIMITS = Limits(memory_bytes=1024 * MiB, time_s=120)


@pytest.fixture(params=["bwrap", "off"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    wanted = os.environ.get("AE_SANDBOX_TEST_OVERRIDE") or request.param
    if wanted == "bwrap" and sandbox.bwrap_problem() is not None:
        pytest.fail(f"bubblewrap does not work here: {sandbox.bwrap_problem()}")
    monkeypatch.setenv("AE_SANDBOX", wanted)
    return request.param  # what the test expects


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory laid out like the service's: key file, database, blobs, scratch."""
    root = tmp_path / "data"
    (root / "scratch" / "job").mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "api-keys.env").write_text("AE_API_KEYS=secret-key-of-the-test\n")
    (root / "attribution.db").write_text("the database")
    return root


def probe(code: str, scratch: Path, *args: str, limits: Limits = LIMITS,
          inputs: tuple[Path, ...] = ()) -> sandbox.Finished:
    """Run Python `code` as a contained child; it prints one JSON line."""
    return sandbox.run_blocking([sys.executable, "-c", textwrap.dedent(code), *args],
                                scratch=scratch, inputs=inputs, limits=limits)


def answer(done: sandbox.Finished) -> dict:
    assert done.code == 0, done.stderr
    assert done.stderr == ""  # the sandbox adds nothing to a child's own output
    return json.loads(done.last_line)


# --- network -------------------------------------------------------------------------------
def test_no_network(mode: str, data: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        got = answer(probe("""
            import json, socket, sys
            try:
                socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10).close()
                result = "connected"
            except OSError as exc:
                result = f"failed: {exc}"
            print(json.dumps({"connect": result,
                              "interfaces": [n for _, n in socket.if_nameindex()]}))
        """, data / "scratch" / "job", str(port)))
        try:
            server.accept()[0].close()
            accepted = True
        except BlockingIOError:
            accepted = False
    if mode == "bwrap":
        assert got["connect"].startswith("failed"), got
        assert got["interfaces"] == ["lo"], got  # a namespace of its own, nothing in it
        assert not accepted
    else:
        assert got["connect"] == "connected" and accepted, got


# --- files ---------------------------------------------------------------------------------
READ = """
    import json, os, sys
    out = {}
    for path in sys.argv[1:]:
        try:
            out[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
        except OSError as exc:
            out[path] = f"error: {exc.strerror}"
    out["env"] = sorted(os.environ)
    print(json.dumps(out))
"""


def test_cannot_read_the_data_directory_or_the_key_file(
    mode: str, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AE_API_KEYS", "secret-key-of-the-environment")
    targets = [data / "api-keys.env", data / "attribution.db", data, data / "blobs"]
    got = answer(probe(READ, data / "scratch" / "job", *map(str, targets)))
    assert not any(name.startswith("AE_") for name in got["env"]), got["env"]
    if mode == "bwrap":
        assert got[str(data / "api-keys.env")].startswith("error"), got
        assert got[str(data / "attribution.db")].startswith("error"), got
        assert got[str(data)] == ["scratch"], got  # only the way to its own scratch
        assert got[str(data / "blobs")].startswith("error"), got
    else:
        assert "secret-key-of-the-test" in got[str(data / "api-keys.env")], got
        assert "api-keys.env" in got[str(data)], got


def test_reads_its_inputs_read_only(mode: str, data: Path, tmp_path: Path) -> None:
    sample = tmp_path / "sample.bin"
    sample.write_bytes(b"sample bytes")
    got = answer(probe("""
        import json, sys
        path = sys.argv[1]
        data = open(path, "rb").read().decode()
        try:
            open(path, "ab").write(b"changed")
            wrote = "yes"
        except OSError as exc:
            wrote = f"error: {exc.strerror}"
        print(json.dumps({"read": data, "wrote": wrote}))
    """, data / "scratch" / "job", str(sample), inputs=(sample,)))
    assert got["read"] == "sample bytes"
    if mode == "bwrap":
        assert got["wrote"].startswith("error"), got
        assert sample.read_bytes() == b"sample bytes"
    else:
        assert got["wrote"] == "yes" and sample.read_bytes() == b"sample byteschanged"


def test_cannot_write_outside_its_scratch_directory(mode: str, data: Path,
                                                   tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    scratch = data / "scratch" / "job"
    name = f"written-{uuid.uuid4().hex}"
    targets = [scratch / name, data / name, outside / name, sandbox.PROJECT_ROOT / name]
    try:
        got = answer(probe("""
            import json, sys
            out = {}
            for path in sys.argv[1:]:
                try:
                    with open(path, "w") as handle:
                        handle.write("x")
                    out[path] = "written"
                except OSError as exc:
                    out[path] = f"error: {exc.strerror}"
            print(json.dumps(out))
        """, scratch, *map(str, targets)))
        assert got[str(scratch / name)] == "written" and (scratch / name).exists()
        for target in targets[1:]:
            if mode == "bwrap":
                assert got[str(target)].startswith("error"), got
                assert not target.exists()
            else:
                assert got[str(target)] == "written" and target.exists(), got
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


# --- privileges ----------------------------------------------------------------------------
def test_runs_unprivileged(mode: str, data: Path) -> None:
    got = answer(probe("""
        import json, os
        caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")]
        print(json.dumps({"uid": os.getuid(), "caps": int(caps[0], 16)}))
    """, data / "scratch" / "job"))
    if mode == "bwrap":
        assert got == {"uid": sandbox.NOBODY, "caps": 0}
    else:
        assert got["uid"] == os.getuid()
        if os.getuid() == 0:
            assert got["caps"] != 0  # what the sandbox takes away from a root worker


# --- limits (both modes) --------------------------------------------------------------------
ALLOCATE = """
    import json, sys
    block = bytearray(int(sys.argv[1]) << 20)
    print(json.dumps({"allocated": len(block) >> 20}))
"""


@pytest.mark.parametrize("limit_mb, allocate_mb, fits", [(256, 512, False), (1024, 512, True)])
def test_memory_limit(mode: str, data: Path, limit_mb: int, allocate_mb: int,
                      fits: bool) -> None:
    done = probe(ALLOCATE, data / "scratch" / "job", str(allocate_mb),
                 limits=Limits(memory_bytes=limit_mb * MiB, time_s=120))
    if fits:
        assert answer(done) == {"allocated": allocate_mb}
    else:
        assert done.code != 0 and "MemoryError" in done.stderr, done


FORK_AND_ALLOCATE = """
    import json, os, sys, time
    pids = []
    for _ in range(int(sys.argv[2])):
        pid = os.fork()
        if pid == 0:
            block = b"x" * (int(sys.argv[1]) << 20)  # written: resident, not only reserved
            time.sleep(3)  # all of them at once
            os._exit(0)
        pids.append(pid)
    print(json.dumps({"statuses": [os.waitpid(pid, 0)[1] for pid in pids]}))
"""


def test_memory_limit_holds_for_all_processes_together(mode: str, data: Path) -> None:
    """Each of 3 processes stays under the 400 MiB RLIMIT_AS; together they need 600 MiB:
    the cgroup, where the machine gives one, stops them; RLIMIT_AS alone does not."""
    done = probe(FORK_AND_ALLOCATE, data / "scratch" / "job", "200", "3",
                 limits=Limits(memory_bytes=400 * MiB, time_s=120))
    if sandbox.cgroup.parent() is not None:
        assert done.memory_exceeded, done
    else:
        assert answer(done) == {"statuses": [0, 0, 0]} and not done.memory_exceeded


def token_processes(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


SLEEPER = "import sys, time; print('sleeping', flush=True); time.sleep(float(sys.argv[1]))"


@pytest.mark.parametrize("sleep_s, limit_s, killed", [(600, 2, True), (0, 120, False)])
def test_time_limit(mode: str, data: Path, sleep_s: int, limit_s: int, killed: bool) -> None:
    token = uuid.uuid4().hex
    done = probe(SLEEPER, data / "scratch" / "job", str(sleep_s), token,
                 limits=Limits(memory_bytes=1024 * MiB, time_s=limit_s))
    assert done.timed_out is killed
    assert done.code == (-signal.SIGKILL if killed else 0), done
    assert token_processes(token) == []


def test_nothing_it_started_outlives_it(mode: str, data: Path) -> None:
    """A grandchild in a session of its own escapes the process group; the PID namespace
    (bwrap) or the cgroup (where there is one) still ends it with the child."""
    token = uuid.uuid4().hex
    done = probe("""
        import json, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]],
                         start_new_session=True)
        print(json.dumps({"started": True}))
    """, data / "scratch" / "job", token)
    assert answer(done) == {"started": True}
    left = token_processes(token)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if mode == "bwrap" or sandbox.cgroup.parent() is not None:
        assert left == []
    else:
        assert left != []  # the limit of `off` without a cgroup


AUTOGROUP = """
    import json, os
    path = "/proc/self/autogroup"
    print(json.dumps({"group": open(path).read().strip() if os.path.exists(path) else None,
                      "nice": os.nice(0)}))
"""


def test_a_session_of_its_own_keeps_the_workers_priority(mode: str, data: Path) -> None:
    """A child runs in a session of its own (the spawn's; bwrap's --new-session too), which
    the kernel's autogroups would give a fair share of the CPU whatever the child's
    niceness; the child hands its niceness to its session (rlimits.py --session-nice).
    A worker 7 steps nicer than this test starts the child."""
    ours = json.loads(subprocess.run([sys.executable, "-c", textwrap.dedent(AUTOGROUP)],
                                     capture_output=True, text=True, check=True).stdout)
    worker = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import sandbox
        done = sandbox.run_blocking([sys.executable, "-c", {textwrap.dedent(AUTOGROUP)!r}],
                                    scratch=Path(sys.argv[1]),
                                    limits=sandbox.Limits(memory_bytes=1 << 30, time_s=60))
        print(json.dumps({{"code": done.code, "stderr": done.stderr, "child": done.last_line}}))
    """)
    ran = subprocess.run(["nice", "-n", "7", sys.executable, "-c", worker,
                          str(data / "scratch" / "job")], capture_output=True, text=True,
                         check=True, cwd=Path(sandbox.__file__).parent.parent)
    result = json.loads(ran.stdout)
    assert result["code"] == 0 and result["stderr"] == "", result
    child = json.loads(result["child"])
    nicer = min(ours["nice"] + 7, 19)
    assert child["nice"] == nicer
    if ours["group"] is None:  # a kernel without autogroups: niceness alone decides
        assert child["group"] is None
    else:  # both modes start the child in a session of its own
        assert child["group"] != ours["group"] and child["group"].endswith(f" nice {nicer}")
        # and the worker's own group is left as it was
        assert json.loads(subprocess.run([sys.executable, "-c", textwrap.dedent(AUTOGROUP)],
                                         capture_output=True, text=True, check=True).stdout
                          ) == ours


async def wait_for(condition, what: str, attempts: int = 600) -> None:
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def test_cancelled_child_is_killed(mode: str, data: Path) -> None:
    token = uuid.uuid4().hex
    task = asyncio.ensure_future(sandbox.run(
        [sys.executable, "-c", SLEEPER, "600", token], scratch=data / "scratch" / "job",
        limits=LIMITS, heartbeat_s=0.2,
    ))
    await wait_for(lambda: len(token_processes(token)) >= 1, "the child started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert token_processes(token) == []


@pytest.fixture
def parent_script(tmp_path: Path) -> Iterator[Path]:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(sandbox.PROJECT_ROOT)!r})
        from pathlib import Path
        import sandbox
        import os
        sandbox.run_blocking([sys.executable, "-c", {SLEEPER!r}, "600", os.environ["TOKEN"]],
                             scratch=Path(sys.argv[1]),
                             limits=sandbox.Limits(memory_bytes=1 << 30, time_s=600))
    """))
    yield script


async def test_child_dies_with_its_parent(mode: str, data: Path, parent_script: Path) -> None:
    token = uuid.uuid4().hex
    memory_group = sandbox.cgroup.parent()
    groups_before = set(memory_group.glob("ae-*")) if memory_group else set()
    parent = subprocess.Popen([sys.executable, str(parent_script),
                               str(data / "scratch" / "job")],
                              env={**os.environ, "TOKEN": token}, cwd=sandbox.PROJECT_ROOT)
    try:
        # the parent has the token in its environment only: what has it in argv is the child
        await wait_for(lambda: len(token_processes(token)) >= 1, "the child started")
        parent.kill()
        parent.wait()
        await wait_for(lambda: token_processes(token) == [], "the child died with its parent")
    finally:
        parent.kill()
        parent.wait()
        if memory_group is not None:  # the killed parent could not remove its child's cgroup
            for group in set(memory_group.glob("ae-*")) - groups_before:
                await wait_for(lambda g=group: not sandbox.cgroup.processes(g), "cgroup empty")
                sandbox.cgroup.remove(group)


# --- the setting ---------------------------------------------------------------------------
def test_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE_SANDBOX", "maybe")
    with pytest.raises(sandbox.SandboxUnavailable, match="AE_SANDBOX='maybe': expected"):
        sandbox.mode()


def test_no_preexec_fn_anywhere() -> None:
    hits = [str(path) for folder in ("activities", "api", "common", "deploy", "festive",
                                     "lifting", "sandbox", "store", "unpacking", "worker",
                                     "workflows")
            for path in (sandbox.PROJECT_ROOT / folder).rglob("*.py")
            if "preexec_fn=" in path.read_text()]
    assert hits == []
