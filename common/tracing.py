"""OpenTelemetry tracing, off by default: AE_TRACING=console turns it on (spans printed
to stdout as JSON by the SDK's console exporter).

On, the API opens a span per request (api/metrics.py) and its Temporal client carries
the trace into the workflow it starts; Temporal's TracingInterceptor on the workers'
client continues it through the workflow (RunWorkflow), its activities (RunActivity) and
child workflows, so one trace shows a submission from request to persist.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

from opentelemetry import trace
from temporalio.client import Interceptor

from common.logs import RedactSecrets

MODES = ("off", "console")


def mode() -> str:
    value = os.environ.get("AE_TRACING", "off").strip().lower() or "off"
    if value not in MODES:
        raise ValueError(f"AE_TRACING must be one of {', '.join(MODES)}, not {value!r}")
    return value


class _RedactedStdout:
    """The console exporter's output, with secrets masked as in the logs (a span's
    attributes hold the request path, which may hold anything a client sent)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.redactor = RedactSecrets(secrets)

    def write(self, text: str) -> int:
        return sys.stdout.write(self.redactor.redact(text))

    def flush(self) -> None:
        sys.stdout.flush()


def setup(service: str, secrets: Iterable[str] = ()) -> bool:
    """Install a tracer provider for this process when tracing is on; True if it is."""
    if mode() == "off":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    # one span per line, so a log reader can tell them from the JSON log lines
    exporter = ConsoleSpanExporter(
        out=_RedactedStdout(secrets),  # type: ignore[arg-type]
        formatter=lambda span: span.to_json(indent=None) + "\n",
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def interceptors() -> Sequence[Interceptor]:
    """Temporal client interceptors (workers built on the client use them too)."""
    if mode() == "off":
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def tracer() -> trace.Tracer:
    """A no-op tracer unless setup() installed a provider."""
    return trace.get_tracer("attribution-engine")
