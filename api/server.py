"""Run the API under uvicorn with limits on slow clients: `python -m api.server`.

Uvicorn has no time limit on reading a request, so a client sending its headers or body
at one byte a second holds a connection as long as it likes. `GuardedH11Protocol` adds:

- the request line and headers must arrive within AE_HEADER_TIMEOUT_S of the first
  byte of the request (or of the connection being opened);
- a body gets AE_BODY_TIMEOUT_S, plus one second for every AE_BODY_MIN_RATE bytes that
  have arrived, so a large upload on a slow line is fine and a trickle is not.

A client over either limit gets `408 Request Timeout` (when no response has started)
and its connection is closed; the handler, if any, sees the client disconnect. The close
lingers: the 408 and the end of the stream go out, and what the client still sends is
read and dropped until it closes too or LINGER_S pass. Closing a socket with bytes unread
makes the kernel answer with a reset, which can destroy the 408 before the client reads it.
AE_MAX_CONNECTIONS caps the connections and tasks served at once (uvicorn's
limit_concurrency: requests beyond it answer 503).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from api import metrics
from common import logs, tracing
from common.config import Settings, load_or_exit

log = logging.getLogger("api.server")

# How long a client that was answered 408 may go on sending before its socket is closed.
LINGER_S = 2.0


@dataclass(frozen=True)
class ClientLimits:
    header_timeout_s: float
    body_timeout_s: float
    body_min_rate: int  # bytes per second that earn a body one more second


def _timeout_response(message: str) -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the headers and on the body of each
    request (see the module docstring)."""

    limits: ClassVar[ClientLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers", "body" or None (nothing to watch)
        self._phase_started = 0.0
        self._body_received = 0
        self._lingering: asyncio.TimerHandle | None = None  # the close after a 408

    # --- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # answered 408: read and dropped until the close
        if self._phase is None and self.conn.their_state is h11.IDLE:
            self._watch_headers()  # the first bytes of the next request on this connection
        elif self._phase == "body":
            self._body_received += len(data)
        super().data_received(data)
        self._follow_state()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_state()
        if self._phase is None and self.conn.their_state is h11.IDLE and any(
            self.conn.trailing_data[0]
        ):
            self._watch_headers()  # part of a pipelined request is already buffered

    # --- the deadlines ----------------------------------------------------------------
    def _follow_state(self) -> None:
        """Move from watching the headers to watching the body to nothing, as h11 parses."""
        state = self.conn.their_state
        if state is h11.IDLE:
            return
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._stop_watching()
                self._phase, self._phase_started = "body", self.loop.time()
                self._body_received = 0
                self._arm(self.limits.body_timeout_s)
            return
        self._stop_watching()  # DONE, MUST_CLOSE, CLOSED, ERROR: the request is in

    def _watch_headers(self) -> None:
        self._stop_watching()
        self._phase, self._phase_started = "headers", self.loop.time()
        self._arm(self.limits.header_timeout_s)

    def _arm(self, delay: float) -> None:
        self._deadline = self.loop.call_later(max(delay, 0.0), self._check)

    def _stop_watching(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = None

    def _check(self) -> None:
        self._deadline = None
        if self._phase == "body":
            earned = self._body_received / max(self.limits.body_min_rate, 1)
            ends = self._phase_started + self.limits.body_timeout_s + earned
            if self.loop.time() < ends:
                self._arm(ends - self.loop.time())
                return
            # The handler may already be answering (it need not read the whole body).
            answering = self.cycle is not None and self.cycle.response_started
            self._drop(f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                       f"plus 1 s per {self.limits.body_min_rate} bytes", respond=not answering)
        elif self._phase == "headers":
            # No request is open: any earlier one on this connection has been answered.
            self._drop(f"the request headers did not arrive within "
                       f"{self.limits.header_timeout_s:g} s", respond=True)

    def _drop(self, reason: str, respond: bool) -> None:
        self._phase = None
        if self.transport.is_closing() or self._lingering is not None:
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("closing the connection of %s: %s", client, reason)
        if not respond:
            self.transport.close()
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # the handler sees the disconnect now, and answers nothing after the 408
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(_timeout_response(reason))
        self.transport.write_eof()  # the client's read ends after the 408 (it closes then)
        self._lingering = self.loop.call_later(LINGER_S, self.transport.close)


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, with these limits."""
    limits = ClientLimits(
        header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
        body_min_rate=settings.body_min_rate,
    )
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def main() -> None:
    settings = load_or_exit("api")
    logs.configure("api", secrets=logs.secrets_of(settings))
    tracing.setup("api", secrets=logs.secrets_of(settings))
    url = metrics.serve(settings)
    log.info("metrics: %s", url or "off (AE_METRICS_PORT unset)")
    config = uvicorn.Config(
        "api.app:create_app", factory=True,
        host=os.environ.get("API_HOST", "127.0.0.1"),
        port=int(os.environ.get("API_PORT") or 8000),
        http=guarded_protocol(settings),
        limit_concurrency=settings.max_connections,
        server_header=False,
        # common/logs.py formats every line; api/metrics.py logs each request with context
        log_config=None, access_log=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
