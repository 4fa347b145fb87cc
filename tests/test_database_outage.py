"""PostgreSQL going away under a running API: requests that need the database get 503
with a message and Retry-After (a temporary condition, not a server bug); Ping answers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from tests.live_api import live_api
from tests.postgres import local_postgres

KEY = "db-outage-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
UNKNOWN = "ab" * 32


def test_a_database_outage_is_a_503_not_a_500(tmp_path: Path) -> None:
    with local_postgres() as server:
        url = asyncio.run(server.create_database())
        env = {"DATABASE_URL": url, "AE_AUTH": "enabled", "AE_API_KEYS": KEY,
               "AE_INTERNAL_API_KEYS": KEY + "-internal"}
        with live_api(tmp_path / "data", **env) as port:
            base = f"http://127.0.0.1:{port}"
            status = httpx.get(f"{base}/predictions/{UNKNOWN}/status", headers=HEADERS,
                               timeout=30)
            assert status.status_code == 404, status.text
            server.process.send_signal(signal.SIGINT)  # fast shutdown; the API keeps running
            server.process.wait(timeout=30)
            for _ in range(2):  # a pooled connection that died, then a refused new one
                down = httpx.get(f"{base}/predictions/{UNKNOWN}/status", headers=HEADERS,
                                 timeout=60)
                assert down.status_code == 503, down.text
                assert "database" in down.json()["detail"]
                assert down.headers.get("Retry-After")
            assert httpx.get(f"{base}/ping", timeout=30).status_code == 200
