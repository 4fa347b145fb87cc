"""The API's Prometheus metrics: requests and their latency by operation and status code,
served on the process's own scrape endpoint (AE_METRICS_PORT, `python -m api.server`).

- `ae_api_requests_total` (counter; operation, method, status): the operation is the
  OpenAPI summary, `unmatched` for an unknown path
- `ae_api_request_duration_seconds` (histogram; operation, method)
- `ae_api_requests_in_progress` (gauge)
- `ae_api_status_views_total` (counter; answer): how Get Status answered for an open run
  (api/running.py): `kept` (a kept view, fresh or refreshed behind the answer),
  `described` (Temporal's new view, in time), `older` / `row` (Temporal did not answer
  within AE_STATUS_WAIT_S, or could not be reached: the older view kept for the row, or
  the database row's own)
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import tracing
from common.config import Settings
from common.logs import REQUEST_CONTEXT

log = logging.getLogger("api.request")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "ae_api_requests", "API requests answered, by operation and status code",
    ["operation", "method", "status"], registry=REGISTRY,
)
LATENCY = Histogram(
    "ae_api_request_duration_seconds", "Time to answer a request (its body included)",
    ["operation", "method"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STATUS_VIEWS = Counter(
    "ae_api_status_views", "Get Status answers for open runs, by where the view came from",
    ["answer"], registry=REGISTRY,
)
IN_PROGRESS = Gauge("ae_api_requests_in_progress", "Requests being answered", registry=REGISTRY)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by the operation it reached,
    and logs one line for it with its operation, status, duration and the sample's sha256
    (common/logs.py puts them on every line logged while the request is answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # what a request that raises past every handler amounts to
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope.get("path", "")
        sha = next((part.lower() for part in path.split("/") if _SHA256.match(part)), "")
        context = {"sha256": sha, "request_id": uuid.uuid4().hex[:16]}
        token = REQUEST_CONTEXT.set(context)
        method = scope.get("method", "")
        IN_PROGRESS.inc()
        # a no-op span unless AE_TRACING is on (common/tracing.py)
        with tracing.tracer().start_as_current_span(
            f"{method} request", kind=SpanKind.SERVER
        ) as span:
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                IN_PROGRESS.dec()
                operation = _operation(scope)
                elapsed = time.perf_counter() - started
                REQUESTS.labels(operation, method, str(status[0])).inc()
                LATENCY.labels(operation, method).observe(elapsed)
                context["operation"] = operation
                span.update_name(f"{method} {operation}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.response.status_code", status[0])
                if sha:
                    span.set_attribute("ae.sha256", sha)
                log.info("%s %s %d %.1f ms", method, path, status[0], elapsed * 1000)
                REQUEST_CONTEXT.reset(token)


def _operation(scope: MutableMapping[str, Any]) -> str:
    """The matched route's summary (e.g. "Submit Sample"): bounded, unlike the path."""
    route = scope.get("route")
    return getattr(route, "summary", None) or getattr(route, "path", None) or "unmatched"


def serve(settings: Settings) -> str | None:
    """Start this process's scrape endpoint; its URL, or None when AE_METRICS_PORT is unset."""
    if not settings.metrics_port:
        return None
    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=REGISTRY)
    return f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
