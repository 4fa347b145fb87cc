"""A database that stays locked past the busy timeout is a 503 to retry, never a 500."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from common.config import Settings
from common.contracts import MODEL_NAME

KEY = "errors-test-key"


async def test_a_locked_database_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AE_SQLITE_BUSY_TIMEOUT_MS", "200")
    app = create_app(Settings(
        data_dir=tmp_path, database_url_override=None, queue_prefix="errors-test",
        auth="enabled", api_keys=(), internal_api_keys=(KEY,),
    ))
    sha = hashlib.sha256(os.urandom(8)).hexdigest()
    row = f"/internal/predictions/{sha}/{MODEL_NAME}"
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ae.test",
                                     headers={"Authorization": f"Bearer {KEY}"}) as http:
            lock = sqlite3.connect(tmp_path / "attribution.db", isolation_level=None)
            try:
                lock.execute("BEGIN EXCLUSIVE")
                response = await http.post(row)
                assert response.status_code == 503, response.text
                assert "locked" in response.json()["detail"]
                assert response.headers["retry-after"] == "5"
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert (await http.post(row)).status_code == 200
