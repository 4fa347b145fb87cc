"""The one way every process connects to Temporal: address, namespace, TLS (client
certificate and key, server CA), API key, all from Settings."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from common import tracing
from common.config import Settings


def tls_config(settings: Settings) -> TLSConfig | None:
    """TLSConfig from the PEM files named; None otherwise, which the SDK takes as TLS with
    the system's CAs when an API key is given and plain gRPC (the dev server) when not."""
    cert, key, ca = settings.temporal_tls_cert, settings.temporal_tls_key, settings.temporal_tls_ca
    if bool(cert) != bool(key):
        raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together (mTLS)")
    if cert or ca or settings.temporal_tls_server_name:
        return TLSConfig(
            client_cert=Path(cert).read_bytes() if cert else None,
            client_private_key=Path(key).read_bytes() if key else None,
            server_root_ca_cert=Path(ca).read_bytes() if ca else None,
            domain=settings.temporal_tls_server_name,
        )
    return None


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """`runtime`: a worker's, with its Prometheus endpoint (worker/main.py). With
    AE_TRACING on, the client (and workers built on it) carry OpenTelemetry traces."""
    return await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace,
        tls=tls_config(settings),
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key
        else None,
        runtime=runtime or Runtime.default(), interceptors=tracing.interceptors(),
    )
