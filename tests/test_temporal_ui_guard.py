"""The Temporal Web UI of `make up` behind temporal-dev/ui_guard.py: a real dev server
with its UI, the guard as its own process, real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL_CLI = Path(sys.executable).parent / "temporal"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(240):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.25)
    raise AssertionError(f"{what} did not answer at {url}")


@pytest.fixture(scope="module")
def temporal_ui() -> Iterator[tuple[int, int]]:
    """A dev server with its Web UI on loopback; yields (gRPC port, UI port)."""
    grpc, ui = _free_port(), _free_port()
    proc = subprocess.Popen(
        [str(TEMPORAL_CLI), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(grpc),
         "--ui-ip", "127.0.0.1", "--ui-port", str(ui), "--ui-disable-news-fetch",
         "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(f"http://127.0.0.1:{ui}/", proc, "the Temporal UI")
        # the UI answers before the server behind it does (its API gives 503 until then)
        for _ in range(240):
            if httpx.get(f"http://127.0.0.1:{ui}/api/v1/namespaces", timeout=5).is_success:
                break
            time.sleep(0.25)
        yield grpc, ui
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _guard(ui_port: int, *flags: str) -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "temporal-dev/ui_guard.py", "--port", str(port),
         "--upstream", f"127.0.0.1:{ui_port}", *flags], cwd=ROOT,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/", proc, "the UI guard")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def read_only(temporal_ui: tuple[int, int]) -> Iterator[int]:
    yield from _guard(temporal_ui[1])


@pytest.fixture(scope="module")
def writable(temporal_ui: tuple[int, int]) -> Iterator[int]:
    yield from _guard(temporal_ui[1], "--allow-writes")


TERMINATE = "/api/v1/namespaces/default/workflows/no-such-workflow/terminate"


def test_the_ui_is_served_under_a_loopback_host(read_only: int) -> None:
    for host in ("127.0.0.1", "localhost"):
        page = httpx.get(f"http://127.0.0.1:{read_only}/", headers={"Host": f"{host}:{read_only}"})
        assert page.status_code == 200
        assert "<html" in page.text.lower()
    namespaces = httpx.get(f"http://127.0.0.1:{read_only}/api/v1/namespaces")
    assert namespaces.status_code == 200
    assert "default" in namespaces.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", ""])
def test_a_foreign_host_header_is_refused(read_only: int, host: str) -> None:
    """A page whose DNS name was rebound to 127.0.0.1 sends its own name as Host."""
    response = httpx.get(f"http://127.0.0.1:{read_only}/api/v1/namespaces",
                         headers={"Host": host.format(port=read_only)})
    assert response.status_code == 403
    assert "default" not in response.text


def test_write_actions_are_off_by_default(read_only: int) -> None:
    settings = httpx.get(f"http://127.0.0.1:{read_only}/api/v1/settings").json()
    assert settings["DisableWriteActions"] is True
    assert settings["WorkflowTerminateDisabled"] is True
    assert settings["BatchActionsDisabled"] is True
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = httpx.request(method, f"http://127.0.0.1:{read_only}{TERMINATE}")
        assert response.status_code == 403, (method, response.text)
        assert "write actions are off" in response.text


def test_write_actions_can_be_turned_on(writable: int) -> None:
    settings = httpx.get(f"http://127.0.0.1:{writable}/api/v1/settings").json()
    assert settings["DisableWriteActions"] is False
    # Forwarded to Temporal, which answers for itself (no such workflow, or the UI
    # server's CSRF check): anything but the guard's refusal.
    response = httpx.post(f"http://127.0.0.1:{writable}{TERMINATE}", json={})
    assert "write actions are off" not in response.text
    assert response.status_code != 403 or "csrf" in response.text.lower()
