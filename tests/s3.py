"""A throwaway S3-compatible server for the tests: moto's server mode (`moto[server]`
from PyPI; MinIO is in neither PyPI nor Debian), a separate process on a free loopback
port, speaking the S3 REST protocol over HTTP, with its state in memory. Stopped at the
end."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3

# moto accepts any credentials; these only have to be present.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ae-test", "AWS_SECRET_ACCESS_KEY": "ae-test-secret",
               "AWS_REGION": "us-east-1"}


@dataclass
class LocalS3:
    endpoint_url: str

    def client(self):  # noqa: ANN201 (boto3's client type is generated)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self) -> str:
        """A new empty bucket; returns its name."""
        name = f"ae-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_s3() -> Iterator[LocalS3]:
    """moto's S3 server; the AWS credential variables are set for the block (boto3 in this
    process and the processes it starts read them)."""
    port = _free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="ae-s3-"))
    log = open(log_dir / "moto.log", "wb")  # noqa: SIM115 (kept open for the server)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS},
    )
    log.close()
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        server = LocalS3(f"http://127.0.0.1:{port}")
        _wait_ready(server, process, log_dir)
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        (log_dir / "moto.log").unlink(missing_ok=True)
        log_dir.rmdir()


def _wait_ready(server: LocalS3, process: subprocess.Popen[bytes], log_dir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("moto server exited: " + (log_dir / "moto.log").read_text()[-2000:])
        try:
            server.client().list_buckets()
            return
        except Exception:  # not listening yet
            time.sleep(0.2)
    raise RuntimeError("moto server did not answer within 60 s")
