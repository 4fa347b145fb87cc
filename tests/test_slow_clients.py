"""Slow clients are cut off (api/server.py): the real server process, real sockets.

A client trickling its headers or its body a byte at a time gets 408 and loses its
connection while Ping keeps answering; a client that goes on sending after the 408 still
reads it whole (the close lingers); connections beyond AE_MAX_CONNECTIONS get 503 until
the slow ones are dropped. The limits are set low (2 s) to keep the test short.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from common.contracts import MODEL_NAME
from tests.live_api import live_api

INTERNAL_KEY = "slow-client-internal-key"
MAX_CONNECTIONS = 6
# How long a test keeps trickling before it gives up waiting to be dropped (a hang
# guard, far above the 2 s limits; not a timing claim).
GIVE_UP_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with live_api(
        tmp_path_factory.mktemp("slow-clients"), AE_AUTH="enabled",
        AE_API_KEYS="slow-client-key", AE_INTERNAL_API_KEYS=INTERNAL_KEY,
        AE_HEADER_TIMEOUT_S="2", AE_BODY_TIMEOUT_S="2", AE_BODY_MIN_RATE="1000",
        AE_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    ) as port:
        yield "127.0.0.1", port


def _ping(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code


def _trickle(
    sock: socket.socket, head: bytes, drip: bytes, port: int
) -> tuple[bytes, int, list[int]]:
    """Send `head`, then `drip` one byte at a time (~4 a second), pinging between bytes,
    until the server answers or closes. Returns (answer, bytes dripped, ping statuses)."""
    sock.sendall(head)
    answer, sent, pings = b"", 0, []
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            chunk = sock.recv(65536)
            if not chunk:
                return answer, sent, pings
            answer += chunk
            continue
        pings.append(_ping(port))
        try:
            sock.sendall(drip[sent:sent + 1])
        except OSError:  # reset by the server
            return answer, sent, pings
        sent += 1
    raise AssertionError(f"not dropped after {GIVE_UP_S} s of trickling ({sent} bytes)")


def test_headers_sent_a_byte_at_a_time_are_cut_off_while_ping_answers(
    server: tuple[str, int],
) -> None:
    host, port = server
    with socket.create_connection((host, port)) as sock:
        answer, sent, pings = _trickle(
            sock, b"GET /ping HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 1000, port
        )
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"headers did not arrive" in answer
    assert sent < 1000  # dropped before the headers were done
    assert pings and set(pings) == {200}, pings


def test_a_client_still_sending_after_its_408_reads_it_whole(server: tuple[str, int]) -> None:
    """Bytes that reach a closed socket are answered with a reset, and a reset can destroy
    the 408 before the client reads it; the server reads and drops them until the client
    closes (LINGER_S at most)."""
    host, port = server
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        readable, _, _ = select.select([sock], [], [], GIVE_UP_S)
        assert readable, f"no answer within {GIVE_UP_S} s"
        time.sleep(0.2)  # the 408 and the server's end of stream are in
        for _ in range(20):
            sock.sendall(b"X-Late: 1\r\n")
            time.sleep(0.01)
        time.sleep(0.2)  # a reset, if any, is in before the first read
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b"headers did not arrive within 2 s"), answer


def test_a_body_sent_a_byte_at_a_time_is_cut_off(server: tuple[str, int]) -> None:
    host, port = server
    sha = "c" * 64
    head = (
        f"PUT /internal/predictions/{sha}/{MODEL_NAME.replace(' ', '%20')}/results HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {INTERNAL_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port)) as sock:
        answer, sent, pings = _trickle(sock, head, b" " * 5000, port)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"body did not arrive" in answer
    assert sent < 5000
    assert pings and set(pings) == {200}, pings


def test_a_body_at_full_speed_is_served(server: tuple[str, int]) -> None:
    _, port = server
    body = b'{"explanation_results": "' + b"x" * 200_000 + b'"}'
    response = httpx.put(
        f"http://127.0.0.1:{port}/internal/predictions/{'d' * 64}/{MODEL_NAME}/explanation",
        content=body, headers={"Authorization": f"Bearer {INTERNAL_KEY}",
                               "Content-Type": "application/json"},
    )
    assert response.status_code == 404, response.text  # read whole; no such row


def test_connections_over_the_cap_get_503_until_idle_ones_are_dropped(
    server: tuple[str, int],
) -> None:
    host, port = server
    idle = [socket.create_connection((host, port)) for _ in range(MAX_CONNECTIONS)]
    try:
        # The cap counts connections: with it full of silent ones, a request is refused.
        assert _ping(port) == 503
        # The silent ones are dropped at the header limit; their clients close on the
        # 408, and then Ping answers again (once the server has seen those closes).
        for sock in idle:
            sock.settimeout(GIVE_UP_S)
            assert sock.recv(65536).startswith(b"HTTP/1.1 408 ")
            sock.close()
        deadline = time.monotonic() + GIVE_UP_S
        while (status := _ping(port)) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200
    finally:
        for sock in idle:
            sock.close()
