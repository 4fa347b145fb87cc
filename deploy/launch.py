"""Start the processes of a deployment on this machine: the API and workers of each
kind, each with a data directory of its own, all against the shared services the
environment names (DATABASE_URL, AE_BLOB_URL + AE_S3_ENDPOINT_URL, TEMPORAL_ADDRESS and
the other settings of common/config.py). Ctrl-C or SIGTERM stops them all.

    python -m deploy.launch --api 1 --orchestration 1 --cpu 2 --gpu 1 --base-dir /srv/ae

Run it on each machine with the counts that machine should carry (e.g. `--cpu 4` on a
lifting machine, `--gpu 1` on one with a GPU, `--api 1 --orchestration 1` on a small one).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from common.config import PROJECT_ROOT

ROLES = ("orchestration", "cpu", "gpu")


@dataclass
class Process:
    name: str
    role: str
    data_dir: Path
    log: Path
    popen: subprocess.Popen[bytes]
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Deployment:
    """The processes of one machine; each gets `<base_dir>/<name>/` as its AE_DATA_DIR."""

    base_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    processes: list[Process] = field(default_factory=list)

    def start(self, role: str, port: int | None = None, timeout_s: float = 180) -> Process:
        """`python -m api.server` (role "api") or `python -m worker --role ROLE`, returned
        once it serves (the API listens; a worker polls its queues)."""
        name = f"{role}-{sum(p.role == role for p in self.processes) + 1}"
        data_dir = self.base_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "AE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        env.pop("AE_BLOB_DIR", None)  # never a directory another machine would not see
        if role == "api":
            port = port or free_port()
            env.setdefault("API_HOST", "127.0.0.1")
            env["API_PORT"] = str(port)
            argv = [sys.executable, "-m", "api.server"]
        elif role in ROLES:
            argv = [sys.executable, "-m", "worker", "--role", role]
        else:
            raise ValueError(f"unknown role {role!r}")
        log = data_dir / "process.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=out,
                                     stderr=subprocess.STDOUT)
        process = Process(name, role, data_dir, log, popen, port)
        self.processes.append(process)
        _wait_serving(process, timeout_s)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_serving(process: Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited:\n{process.log.read_text()[-3000:]}")
        if process.port is not None:
            with suppress(OSError), socket.create_connection(("127.0.0.1", process.port), 1):
                return
        elif b"worker up" in process.log.read_bytes():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{process.name} did not start in {timeout_s} s:\n"
                       f"{process.log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", type=Path, default=PROJECT_ROOT / "data" / "deploy")
    parser.add_argument("--api", type=int, default=0, help="API processes")
    parser.add_argument("--api-port", type=int, default=8000, help="port of the first API")
    for role in ROLES:
        parser.add_argument(f"--{role}", type=int, default=0, help=f"{role} workers")
    args = parser.parse_args()
    deployment = Deployment(args.base_dir)
    stop = False

    def request_stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for index in range(args.api):
            process = deployment.start("api", port=args.api_port + index)
            print(f"{process.name}: http://127.0.0.1:{process.port} (log {process.log})")
        for role in ROLES:
            for _ in range(getattr(args, role)):
                process = deployment.start(role)
                print(f"{process.name}: pid {process.pid} (log {process.log})")
        while not stop and all(p.popen.poll() is None for p in deployment.processes):
            time.sleep(0.5)
    finally:
        deployment.stop_all()


if __name__ == "__main__":
    main()
