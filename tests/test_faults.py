"""Faults with real processes: a Temporal dev server (SQLite file) and workers started as
subprocesses, killed, restarted and signalled while samples are in flight; the API runs
in-process. Every scenario ends with the sample's one row in its final state.

Revoke of a running lift is covered in test_pipeline_e2e.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from api.app import create_app
from common.config import PROJECT_ROOT, Settings
from common.contracts import MODEL_NAME, workflow_id
from deploy.temporal_dev import dev_server_flags
from tests.conftest import TEMPORAL_CLI, compile_c, lift_children, submit, wait_for_final

KEY = "faults-internal-key"
# The issue's 100 concurrent submissions: 270 s here with another job training on one
# of the two cores (409 s under heavier load; over 900 s on a slower machine, where angr's
# import alone took 3-4 s per lift child). AE_FAULT_SUBMISSIONS changes the count.
SUBMISSIONS = int(os.environ.get("AE_FAULT_SUBMISSIONS", "100"))
ROLES = ("orchestration", "cpu", "gpu")


# --- processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    """Signal a process and wait for it; SIGKILL if it outstays timeout_s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Services:
    """A dev server on free ports with its own SQLite file, and the workers started."""

    root: Path
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    temporal: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def log(self, name: str) -> Path:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        return self.root / "logs" / f"{name}.log"

    def start_temporal(self) -> None:
        command = [
            str(TEMPORAL_CLI), "server", "start-dev", "--ip", "127.0.0.1",
            "--port", str(self.port), "--ui-port", str(self.ui_port), "--headless",
            "--log-level", "warn", *dev_server_flags(self.root / "temporal.db"),
        ]
        with open(self.log("temporal"), "ab") as log:
            self.temporal = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def stop_temporal(self, sig: int = signal.SIGTERM) -> None:
        if self.temporal is not None:
            stop(self.temporal, sig)
            self.temporal = None

    def start_worker(self, role: str, prefix: str, **env: str) -> subprocess.Popen[bytes]:
        """`python -m worker --role ROLE`, returned once it polls its queues."""
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("DATABASE_URL", "AE_BLOB_DIR")}
        environment.update(
            TEMPORAL_ADDRESS=self.address, AE_DATA_DIR=str(self.data_dir),
            AE_QUEUE_PREFIX=prefix, AE_CPU_SLOTS="2", AE_LIFT_MEMORY_MB="4096",
            PYTHONUNBUFFERED="1", **env,
        )
        log_path = self.log(f"{prefix}-{role}-{len(self.workers)}")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "--role", role], cwd=PROJECT_ROOT,
                env=environment, stdout=log, stderr=subprocess.STDOUT,
            )
        self.workers.append(proc)
        deadline = time.monotonic() + 90
        while b"worker up" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{role} worker did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            stop(proc, signal.SIGKILL)
        self.workers.clear()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    assert TEMPORAL_CLI.exists(), f"temporal CLI missing at {TEMPORAL_CLI}: run make venv"
    running = Services(root=tmp_path_factory.mktemp("faults"))
    running.start_temporal()
    try:
        yield running
    finally:
        running.stop_workers()
        running.stop_temporal()


@dataclass
class Stack:
    """One scenario: its own task queues, the API in-process, a client for histories."""

    services: Services
    prefix: str
    api: httpx.AsyncClient
    client: Client

    def worker(self, role: str, **env: str) -> subprocess.Popen[bytes]:
        return self.services.start_worker(role, self.prefix, **env)

    async def history(self, sha256: str) -> list[Any]:
        handle = self.client.get_workflow_handle(workflow_id(MODEL_NAME, sha256))
        return list((await handle.fetch_history()).events)

    async def runs(self, sha256: str) -> int:
        query = f"WorkflowId = '{workflow_id(MODEL_NAME, sha256)}'"
        return len([w async for w in self.client.list_workflows(query)])

    async def one_row(self, sha256: str, status: str = "SUCCESS") -> dict[str, Any]:
        """The sample has exactly one prediction row, in `status`, from its only run."""
        rows = (await self.api.get(f"/internal/predictions/{sha256}")).json()
        assert len(rows) == 1, rows
        row = rows[0]
        if status == "SUCCESS":
            assert row["error_details"] is None and row["prediction_results"], row
            assert row["explanation_results"]
        assert await self.runs(sha256) == 1
        described = await self.client.get_workflow_handle(
            workflow_id(MODEL_NAME, sha256)).describe()
        assert row["celery_task_id"] == described.run_id
        return row


@asynccontextmanager
async def stack(services: Services, name: str) -> AsyncIterator[Stack]:
    prefix = f"faults-{name}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        data_dir=services.data_dir, database_url_override=None,
        temporal_address=services.address, queue_prefix=prefix,
        auth="enabled", api_keys=(), internal_api_keys=(KEY,),
    )
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://ae.test",
                headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
            ) as http:
                client = await Client.connect(services.address)
                yield Stack(services=services, prefix=prefix, api=http, client=client)
    finally:
        services.stop_workers()


# --- samples and observations -----------------------------------------------------------
def many_functions_source(count: int) -> str:
    """A program with `count` distinct branchy functions: angr's time grows with count."""
    functions = "\n".join(
        f"int f{i}(int x) {{ int s = {i}; for (int k = 0; k < x; k++) {{ "
        f"if (k % 3 == {i % 3}) s += k * {i + 1}; else if (k % 5 == 1) s ^= k; "
        f"else s -= {i % 7}; }} return s; }}"
        for i in range(count)
    )
    calls = " ".join(f"t += f{i}(c);" for i in range(count))
    return (f"#include <stdio.h>\n{functions}\n"
            f"int main(int c, char **v) {{ int t = 0; {calls} printf(\"%d\\n\", t); return 0; }}")


@pytest.fixture(scope="module")
def slow_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1200 functions: a lift of 10-25 s on a loaded 2-core machine."""
    return compile_c(tmp_path_factory.mktemp("slow"), many_functions_source(1200), "-O0",
                     name="many")


@pytest.fixture(scope="module")
def medium_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 400 functions: a lift of a few seconds, long enough to be caught in flight."""
    return compile_c(tmp_path_factory.mktemp("medium"), many_functions_source(400), "-O0",
                     name="some")


def variant(path: Path, tag: str) -> bytes:
    """The same program with bytes appended: a distinct sample that lifts the same way."""
    return path.read_bytes() + f"\0ae-fault-test {tag} {uuid.uuid4()}".encode()


async def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def identity(proc: subprocess.Popen[bytes]) -> str:
    """The Temporal identity a worker process reports: pid@host."""
    return f"{proc.pid}@{socket.gethostname()}"


def activity_runs(events: list[Any], activity: str) -> list[tuple[int, str, str]]:
    """(attempt, identity of the worker that ran it, outcome) of each recorded run."""
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events if e.HasField("activity_task_scheduled_event_attributes")
    }
    started = {
        e.event_id: e.activity_task_started_event_attributes for e in events
        if e.HasField("activity_task_started_event_attributes")
    }
    runs = []
    for e in events:
        for outcome in ("completed", "failed", "canceled", "timed_out"):
            name = f"activity_task_{outcome}_event_attributes"
            if e.HasField(name):
                attrs = getattr(e, name)
                start = started.get(attrs.started_event_id)
                if scheduled.get(attrs.scheduled_event_id) == activity and start is not None:
                    runs.append((start.attempt, start.identity, outcome))
    return runs


def workflow_task_identities(events: list[Any]) -> set[str]:
    return {
        e.workflow_task_completed_event_attributes.identity for e in events
        if e.HasField("workflow_task_completed_event_attributes")
    }


async def pending(stack_: Stack, sha256: str, activity: str) -> Any | None:
    description = await stack_.client.get_workflow_handle(
        workflow_id(MODEL_NAME, sha256)).describe()
    for info in description.raw_description.pending_activities:
        if info.activity_type.name == activity:
            return info
    return None


# --- scenarios ----------------------------------------------------------------------------
async def test_kill_9_of_a_cpu_worker_mid_lift(services: Services, medium_binary: Path) -> None:
    """The lift is retried on a new worker once its heartbeat times out; one run, one row."""
    async with stack(services, "kill9") as s:
        s.worker("orchestration"), s.worker("gpu")
        first = s.worker("cpu")
        sha256 = await submit(s.api, variant(medium_binary, "kill9"), "kill9")
        children = await wait_until(lambda: lift_children(first.pid), 120, "the lift child")

        stop(first, signal.SIGKILL)
        # The angr child dies with its worker (PR_SET_PDEATHSIG), nothing is left running.
        await wait_until(lambda: all(gone(pid) for pid in children), 10, "the orphan to die")
        second = s.worker("cpu")

        status = await wait_for_final(s.api, sha256, timeout_s=300)
        assert status["status"][MODEL_NAME] == "SUCCESS", status
        await s.one_row(sha256)
        lifts = activity_runs(await s.history(sha256), "lift_binary")
        assert lifts == [(2, identity(second), "completed")], lifts


async def test_temporal_server_restart_mid_run(services: Services, medium_binary: Path) -> None:
    """Kill the dev server (SIGKILL, as a crash would) during the lift, start it again on
    the same SQLite file and its write-ahead log (deploy/temporal_dev.py)."""
    async with stack(services, "restart") as s:
        cpu = {role: s.worker(role) for role in ROLES}["cpu"]
        sha256 = await submit(s.api, variant(medium_binary, "restart"), "restart")
        await wait_until(lambda: lift_children(cpu.pid), 120, "the lift child")

        services.stop_temporal(signal.SIGKILL)
        try:
            # While Temporal is away the API still serves rows: Get Status answers from
            # the row (what the workflow recorded), Get Prediction Info the row itself.
            down = await s.api.get(f"/predictions/{sha256}/status")
            info = await s.api.get(f"/internal/predictions/{sha256}")
            await asyncio.sleep(3)
        finally:  # the later tests of this module share the server
            services.start_temporal()
        assert down.status_code == 200, down.text
        assert down.json()["status"][MODEL_NAME] == "STARTED", down.text
        assert down.json()["detailed_status"][MODEL_NAME]["source"] == "database", down.text
        assert info.status_code == 200, info.text

        status = await wait_for_final(s.api, sha256, timeout_s=300)
        assert status["status"][MODEL_NAME] == "SUCCESS", status
        await s.one_row(sha256)
        assert all(proc.poll() is None for proc in services.workers), "a worker died"


async def test_locked_database_during_persist_is_retried(
    services: Services, medium_binary: Path
) -> None:
    """An exclusive SQLite lock held across persist: the write fails, is retried, lands."""
    async with stack(services, "dblock") as s:
        s.worker("orchestration", AE_SQLITE_BUSY_TIMEOUT_MS="500")
        s.worker("cpu"), s.worker("gpu")
        sha256 = await submit(s.api, variant(medium_binary, "dblock"), "dblock")
        # Lock the database once the lift runs: the run has recorded STARTED (a lock taken
        # when the API first shows STARTED can beat that record, which then retries
        # under the lock and never reaches persist) and cannot have recorded results.
        await wait_until(lambda: _started(s, sha256, "lift_binary"), 120, "the lift")
        lock = sqlite3.connect(services.data_dir / "attribution.db", isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            locked_at = time.monotonic()
            info = await wait_until(
                lambda: _failed_persist(s, sha256), 300, "a persist attempt to fail"
            )
            assert "locked" in info.last_failure.message, info.last_failure
            # Hold it some 10 s in all: the run keeps retrying without giving up or failing.
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - locked_at)))
            assert (await pending(s, sha256, "persist_results")) is not None
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        status = await wait_for_final(s.api, sha256, timeout_s=120)
        assert status["status"][MODEL_NAME] == "SUCCESS", status
        await s.one_row(sha256)
        persists = activity_runs(await s.history(sha256), "persist_results")
        assert len(persists) == 1 and persists[0][0] >= 2 and persists[0][2] == "completed"


async def _started(s: Stack, sha256: str, activity: str) -> bool:
    info = await pending(s, sha256, activity)
    return info is not None and info.state == 2  # PENDING_ACTIVITY_STATE_STARTED


async def _failed_persist(s: Stack, sha256: str) -> Any | None:
    info = await pending(s, sha256, "persist_results")
    return info if info is not None and info.attempt >= 2 else None


# Every sample finishing is the point, not how fast: 100 lifts of /bin/true took over 15
# minutes on a slow 2-core machine (angr's import alone 3-4 s per lift child).
@pytest.mark.timeout(2400)
async def test_many_concurrent_submissions_all_finish(services: Services) -> None:
    """SUBMISSIONS distinct small programs at once: every one reaches SUCCESS, none lost."""
    async with stack(services, "many") as s:
        for role in ROLES:
            s.worker(role)
        base = Path("/bin/true")
        samples = [variant(base, f"many-{i}") for i in range(SUBMISSIONS)]
        started = time.monotonic()
        shas = await asyncio.gather(*(submit(s.api, data, f"true-{i}")
                                      for i, data in enumerate(samples)))
        submitted_s = time.monotonic() - started
        assert len(set(shas)) == SUBMISSIONS

        finals = await asyncio.gather(*(wait_for_final(s.api, sha, timeout_s=2100)
                                        for sha in shas))
        elapsed_s = time.monotonic() - started
        words = [final["status"][MODEL_NAME] for final in finals]
        assert words.count("SUCCESS") == SUBMISSIONS, sorted(set(words))
        stage_ms: dict[str, list[int]] = {}
        for sha in shas:
            await s.one_row(sha)
            summary = await s.client.get_workflow_handle(workflow_id(MODEL_NAME, sha)).result()
            for stage, ms in summary["stages_ms"].items():
                stage_ms.setdefault(stage, []).append(ms)
        means = ", ".join(f"{k} {sum(v) / len(v) / 1000:.1f} s" for k, v in stage_ms.items())
        print(f"\n{SUBMISSIONS} concurrent submissions: accepted in {submitted_s:.1f} s, "
              f"all SUCCESS after {elapsed_s:.1f} s; mean time in stage: {means}")


@pytest.mark.parametrize("role", ROLES)
async def test_sigterm_hands_in_flight_work_to_another_worker(
    services: Services, slow_binary: Path, medium_binary: Path, role: str
) -> None:
    """SIGTERM a worker with work in flight, a second of its kind is up: the run completes,
    the interrupted worker exits within its graceful window, nothing is left behind."""
    async with stack(services, f"sigterm-{role}") as s:
        # A 1 s graceful window, so the lift in flight cannot finish inside it and must
        # be handed over (with the default 10 s, a fast machine may finish it first).
        first = {r: s.worker(r, AE_GRACEFUL_SHUTDOWN_S="1") for r in ROLES}
        if role == "gpu":  # the embed activity is running on the first gpu worker
            sha256 = await _submit_until_embed_caught(s, slow_binary)
        else:  # the lift is running (for orchestration: the workflow is mid-run)
            binary = slow_binary if role == "cpu" else medium_binary
            sha256 = await submit(s.api, variant(binary, f"sigterm-{role}"), f"sigterm-{role}")
            await wait_until(lambda: lift_children(first["cpu"].pid), 120, "the lift child")
        children = lift_children(first["cpu"].pid)
        second = s.worker(role)

        terminated_at = time.monotonic()
        code = stop(first[role], signal.SIGTERM, timeout_s=60)
        assert time.monotonic() - terminated_at < 45, "graceful shutdown took too long"
        assert code == 0, f"the {role} worker exited with {code}"
        if role == "cpu":
            await wait_until(lambda: all(gone(pid) for pid in children), 10, "the lift child")

        status = await wait_for_final(s.api, sha256, timeout_s=300)
        assert status["status"][MODEL_NAME] == "SUCCESS", status
        await s.one_row(sha256)
        events = await s.history(sha256)
        if role == "cpu":
            lifts = activity_runs(events, "lift_binary")
            assert lifts[-1][1:] == (identity(second), "completed"), lifts
        elif role == "gpu":
            embeds = activity_runs(events, "embed_compare")
            assert len(embeds) == 1 and embeds[0][2] == "completed", embeds
            assert embeds[0][1] in (identity(first["gpu"]), identity(second))
        else:
            assert identity(second) in workflow_task_identities(events)


async def _submit_until_embed_caught(s: Stack, binary: Path, attempts: int = 3) -> str:
    """Submit variants of `binary` until one's embed activity is seen running.

    The embed of a 1,200-function binary lasts one or two seconds, so a poll can miss it
    on a fast machine; a run that finished unseen is not the scenario, and another
    variant is submitted (at most `attempts`). Returns the caught sample's sha256."""
    for attempt in range(attempts):
        sha256 = await submit(s.api, variant(binary, f"sigterm-gpu-{attempt}"), "sigterm-gpu")
        handle = s.client.get_workflow_handle(workflow_id(MODEL_NAME, sha256))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            description = await handle.describe()
            if any(info.activity_type.name == "embed_compare" and info.state == 2
                   for info in description.raw_description.pending_activities):
                return sha256  # PENDING_ACTIVITY_STATE_STARTED
            if description.status != WorkflowExecutionStatus.RUNNING:
                break  # finished before a poll saw its embed: try another variant
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the embed of {sha256} did not start within 300 s")
    raise AssertionError(f"{attempts} runs finished before their embed was seen running")
