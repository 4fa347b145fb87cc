"""Workers and the API reach a Temporal frontend over mTLS with an API key, exactly as
configured by TEMPORAL_TLS_CERT / _KEY / _CA / _SERVER_NAME and TEMPORAL_API_KEY
(common/temporal.py). The dev server speaks plain gRPC, so a TLS front (tests/tls_proxy.py)
stands where a cluster's TLS frontend would be: it requires a client certificate from
our CA and shows which API key arrived."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from common.config import load_settings
from common.temporal import connect
from tests.tls_proxy import Pki, make_pki, tls_front

API_KEY = "tls-test-api-key"


def _tls_env(monkeypatch: pytest.MonkeyPatch, port: int, pki: Pki, *, client_cert: bool,
             ca: Path) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setenv("TEMPORAL_TLS_CA", str(ca))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "localhost")
    monkeypatch.setenv("TEMPORAL_API_KEY", API_KEY)
    for name, path in (("TEMPORAL_TLS_CERT", pki.client_cert),
                       ("TEMPORAL_TLS_KEY", pki.client_key)):
        if client_cert:
            monkeypatch.setenv(name, str(path))
        else:
            monkeypatch.delenv(name, raising=False)


def _target(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def test_mtls_with_an_api_key_reaches_temporal(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pki = make_pki(tmp_path / "pki")
    with tls_front(_target(temporal_env), pki) as (port, seen):
        _tls_env(monkeypatch, port, pki, client_cert=True, ca=pki.ca)
        client = await asyncio.wait_for(connect(load_settings()), 60)
        count = await client.count_workflows("WorkflowType = 'AnalyzeSample'")
        assert count.count >= 0
    assert seen.client_subjects == ["commonName=ae-client"]
    keys = {h.get("authorization") for h in seen.headers}
    assert f"Bearer {API_KEY}" in keys, keys


@pytest.mark.parametrize("case", ["no client certificate", "server signed by another CA"])
async def test_tls_is_enforced_both_ways(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="other")
    with tls_front(_target(temporal_env), pki) as (port, seen):
        if case == "no client certificate":
            _tls_env(monkeypatch, port, pki, client_cert=False, ca=pki.ca)
        else:  # the client trusts only another CA: our server certificate must be refused
            _tls_env(monkeypatch, port, pki, client_cert=True, ca=other.ca)
        with pytest.raises(RuntimeError, match="(?i)connect"):
            await asyncio.wait_for(connect(load_settings()), 60)
    assert not seen.headers  # no request got through
