"""A throwaway PostgreSQL server for the tests, from Debian's packages (`make test-deps`
installs `postgresql`): a temporary data directory, a free loopback port, run as an
unprivileged user (`nobody` when the tests run as root), removed again at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

SUPERUSER = "ae"


def postgres_bin() -> Path:
    """The newest installed server's bin directory (AE_PG_BIN overrides)."""
    if os.environ.get("AE_PG_BIN"):
        return Path(os.environ["AE_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make test-deps` "
                           "(Debian package postgresql)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPostgres:
    def __init__(self, root: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.root, self.port, self.process = root, port, process

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                                     database="postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)


def _unprivileged() -> dict[str, Any]:
    """subprocess arguments that drop root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="ae-pg-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        drop = _unprivileged()
        if drop:
            os.chown(root, drop["user"], drop["group"])
        data = root / "data"
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            check=True, capture_output=True, cwd=root, **drop,
        )
        port = free_port()
        log = open(root / "postgres.log", "wb")  # noqa: SIM115 (kept open for the server)
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, **drop,
        )
        log.close()
        _wait_ready(bindir, port, process, root)
        yield LocalPostgres(root, port, process)
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # fast shutdown: clients cut off
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(bindir: Path, port: int, process: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("postgres exited: " + (root / "postgres.log").read_text()[-2000:])
        ready = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                               capture_output=True)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("postgres did not accept connections within 60 s")
