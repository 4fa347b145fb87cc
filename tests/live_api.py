"""The API as its own process (`python -m api.server`), for tests that need real HTTP:
slow clients, several API processes at once, a browser."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_api(data_dir: Path, **env: str) -> Iterator[int]:
    """Start the API on a free loopback port with these AE_* settings; yields the port."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ, "AE_DATA_DIR": str(data_dir), "API_HOST": "127.0.0.1",
        "API_PORT": str(port), "TEMPORAL_ADDRESS": "127.0.0.1:1", **env,
    }
    log_path = data_dir / f"api-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api.server"], cwd=ROOT, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(240):
                if proc.poll() is not None:
                    raise AssertionError(f"the API exited: {log_path.read_text()}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ping").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.25)
            else:
                raise AssertionError(f"the API did not answer Ping: {log_path.read_text()}")
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=30)
