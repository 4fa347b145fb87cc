"""API keys: 401 without a valid key, 403 for an external key on an internal operation,
the health check open, constant-time comparison, and the explicit development switch."""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

import api.auth
from api.app import ROUTES, create_app
from api.auth import check_settings, key_matches
from common.config import Settings
from common.contracts import MODEL_NAME

EXTERNAL, INTERNAL = "ext-key-0123456789", "int-key-9876543210"


def app_settings(tmp_path: Path, **overrides: Any) -> Settings:
    fields: dict[str, Any] = dict(
        data_dir=tmp_path, database_url_override=None, queue_prefix="security-test",
        auth="enabled", api_keys=(EXTERNAL, "ext-key-second"),
        internal_api_keys=(INTERNAL,),
    )
    fields.update(overrides)
    return Settings(**fields)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app of its own (no Temporal: only operations that do not reach it are called)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ae.test") as http:
            yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sha() -> str:
    return hashlib.sha256(os.urandom(8)).hexdigest()


def concrete(path: str) -> str:
    """An operation's path with valid values in place of its parameters."""
    return (path.replace("{sha256_hash}", sha()).replace("{model_name}", MODEL_NAME)
            .replace("{model}", MODEL_NAME).replace("{celery_task_id}", str(uuid.uuid4())))


async def operations(http: httpx.AsyncClient) -> list[tuple[str, str]]:
    spec = (await http.get("/openapi.json")).json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


async def test_health_check_and_documents_are_open(tmp_path: Path) -> None:
    async with serve(app_settings(tmp_path)) as http:
        assert (await http.get("/ping")).json() == {"check": True}
        assert (await http.get("/openapi.json")).status_code == 200
        assert (await http.get("/docs")).status_code == 200


async def test_every_operation_but_ping_needs_a_key(tmp_path: Path) -> None:
    async with serve(app_settings(tmp_path)) as http:
        ops = await operations(http)
        assert len(ops) == len(ROUTES)
        for method, path in ops:
            for headers in ({}, bearer("wrong-key"), {"Authorization": f"Basic {EXTERNAL}"},
                            bearer(EXTERNAL + "x"), bearer(EXTERNAL[:-1])):
                response = await http.request(method, concrete(path), headers=headers)
                if path == "/ping":
                    assert response.status_code == 200
                    continue
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                detail = response.json()["detail"]
                assert ("missing API key" in detail) if not headers.get(
                    "Authorization", "").startswith("Bearer") else detail == "invalid API key"


async def test_external_key_is_refused_on_internal_operations(tmp_path: Path) -> None:
    async with serve(app_settings(tmp_path)) as http:
        internal = [(m, p) for m, p in await operations(http) if p.startswith("/internal/")]
        assert len(internal) == len([r for r in ROUTES if r[1].startswith("/internal/")]) > 10
        for method, path in internal:
            for key in (EXTERNAL, "ext-key-second"):
                response = await http.request(method, concrete(path), headers=bearer(key))
                assert response.status_code == 403, (method, path, response.text)
                assert "internal API key" in response.json()["detail"]


async def test_valid_keys_reach_the_handlers(tmp_path: Path) -> None:
    async with serve(app_settings(tmp_path)) as http:
        unknown = sha()
        results = f"/predictions/{unknown}/{MODEL_NAME}/results"
        for key in (EXTERNAL, "ext-key-second", INTERNAL):  # internal keys open everything
            response = await http.get(results, headers=bearer(key))
            assert response.status_code == 404 and unknown in response.json()["detail"]
        row = f"/internal/predictions/{unknown}/{MODEL_NAME}"
        assert (await http.get(row, headers=bearer(INTERNAL))).status_code == 404
        assert (await http.post(row, headers=bearer(INTERNAL))).status_code == 200
        assert (await http.get(row, headers=bearer(INTERNAL))).json()["sha256_hash"] == unknown
        # The scheme name is case-insensitive, as RFC 7235 says.
        lower = {"Authorization": f"bearer {INTERNAL}"}
        assert (await http.get(row, headers=lower)).status_code == 200


async def test_every_configured_key_is_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real_compare_digest = hmac.compare_digest

    def counting_compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(api.auth.hmac, "compare_digest", counting_compare_digest)
    settings = app_settings(tmp_path, api_keys=(EXTERNAL, "k2", "k3"),
                            internal_api_keys=(INTERNAL, "i2"))
    async with serve(settings) as http:
        # The first configured key matches, and still every key is compared: no early exit.
        response = await http.get(f"/predictions/{sha()}/{MODEL_NAME}/results",
                                  headers=bearer(EXTERNAL))
        assert response.status_code == 404
        assert len(calls) == 5
        assert {b for _a, b in calls} == {k.encode() for k in (EXTERNAL, "k2", "k3", INTERNAL,
                                                                "i2")}
        calls.clear()
        response = await http.get(f"/internal/predictions/{sha()}", headers=bearer("nope"))
        assert response.status_code == 401 and len(calls) == 5
    keys = tuple(SecretStr(k) for k in ("b", "a", "c"))
    assert key_matches("a", keys) and not key_matches("a", ())


async def test_disabled_mode_opens_everything(tmp_path: Path) -> None:
    async with serve(app_settings(tmp_path, auth="disabled", api_keys=(),
                                  internal_api_keys=())) as http:
        unknown = sha()
        assert (await http.get(f"/internal/predictions/{unknown}")).status_code == 404
        row = f"/internal/predictions/{unknown}/{MODEL_NAME}"
        assert (await http.post(row)).status_code == 200
        assert (await http.get(f"/predictions/{unknown}/{MODEL_NAME}/results")).status_code == 200


def test_misconfiguration_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no keys are configured"):
        create_app(app_settings(tmp_path, api_keys=(), internal_api_keys=()))
    with pytest.raises(ValueError, match="AE_AUTH='off' is not valid"):
        check_settings(app_settings(tmp_path, auth="off"))


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE_API_KEYS", " alpha, beta ,,")
    monkeypatch.setenv("AE_INTERNAL_API_KEYS", "gamma")
    monkeypatch.delenv("AE_AUTH", raising=False)
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["alpha", "beta"]
    assert [k.get_secret_value() for k in settings.internal_api_keys] == ["gamma"]
    assert settings.auth == "enabled"
    monkeypatch.setenv("AE_AUTH", "disabled")
    assert Settings().auth == "disabled"


async def test_openapi_declares_the_security_schemes(tmp_path: Path) -> None:
    async with serve(app_settings(tmp_path)) as http:
        spec = (await http.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["InternalApiKey"]["type"] == "http"
    assert schemes["InternalApiKey"]["scheme"] == "bearer"
    for path, ops in spec["paths"].items():
        for op in ops.values():
            if path == "/ping":
                assert "security" not in op
            elif path.startswith("/internal/"):
                assert op["security"] == [{"InternalApiKey": []}], path
            else:
                assert op["security"] == [{"ApiKey": []}], path
