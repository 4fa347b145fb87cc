"""A TLS front for the Temporal dev server (which speaks plain gRPC only), standing in
for a cluster's TLS frontend: it terminates TLS (optionally requiring a client
certificate from a given CA, i.e. mTLS), forwards the bytes unchanged, and reads the
HTTP/2 request headers passing through (h2, passively) so a test can see the API key
the client sent."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.live_api import free_port


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(root: Path, name: str = "ae") -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    root.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={name}-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root)
    for leaf, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (root / f"{leaf}.ext").write_text(ext)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={name}-{leaf}",
                 cwd=root)
        _openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{leaf}.pem", "-days", "2",
                 "-extfile", f"{leaf}.ext", cwd=root)
    return Pki(root / "ca.pem", root / "server.pem", root / "server.key",
               root / "client.pem", root / "client.key")


@dataclass
class Seen:
    """What the proxy observed: request headers and the client certificates' subjects."""

    headers: list[dict[str, str]] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)
    handshake_failures: int = 0


class _Observer:
    """A server-side HTTP/2 state machine fed a copy of the client's bytes; never sends."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen
        self.conn: h2.connection.H2Connection | None = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))

    def feed(self, data: bytes) -> None:
        if self.conn is None:
            return
        try:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.seen.headers.append({k: v for k, v in event.headers})
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
            self.conn.clear_outbound_data_buffer()
        except h2.exceptions.H2Error:
            self.conn = None  # stop observing; forwarding goes on


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                observer: _Observer | None = None) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            if observer is not None:
                observer.feed(data)
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


@contextlib.contextmanager
def tls_front(target: str, pki: Pki,
              require_client_cert: bool = True) -> Iterator[tuple[int, Seen]]:
    """Listen on a free loopback port; yields (port, what was seen)."""
    host, _, port_text = target.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.set_alpn_protocols(["h2"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    seen, port = Seen(), free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert")
        if cert:
            seen.client_subjects.append(
                ",".join(f"{k}={v}" for rdn in cert["subject"] for k, v in rdn))
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port_text))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, _Observer(seen)),
                             _pump(up_reader, writer))

    def exception_handler(_loop: asyncio.AbstractEventLoop, ctx: dict) -> None:
        if isinstance(ctx.get("exception"), ssl.SSLError):
            seen.handshake_failures += 1

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)
        started.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(exception_handler)
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the TLS front did not start")
    try:
        yield port, seen
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
