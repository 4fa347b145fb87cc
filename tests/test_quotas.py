"""Quotas per API key (api/quotas.py): over the request rate or the upload volume a key
gets 429 with Retry-After and a message, another key is unaffected, Ping stays open, and
after Retry-After the key is served again. The upload count is in the database, shared by
API processes (two apps on one database here)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client

from common.config import Settings
from common.contracts import MODEL_NAME
from tests.conftest import EXTERNAL_KEY, INTERNAL_KEY, api_client, make_settings

SHA = "c" * 64


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def quota_settings(tmp_path: Path, **limits: object) -> Settings:
    return dataclasses.replace(make_settings(tmp_path / "data"), **limits)


async def test_request_rate_per_key(tmp_path: Path, client: Client) -> None:
    settings = quota_settings(tmp_path, rate_limit=2.0, rate_burst=3)
    results = f"/predictions/{SHA}/{MODEL_NAME}/results"
    async with api_client(settings, client) as api:
        codes = [(await api.get(results, headers=bearer(EXTERNAL_KEY))).status_code
                 for _ in range(3)]
        assert codes == [404, 404, 404]  # the burst: served (no such sample)
        refused = await api.get(results, headers=bearer(EXTERNAL_KEY))
        assert refused.status_code == 429, refused.text
        assert "rate limit" in refused.json()["detail"]
        retry_after = int(refused.headers["Retry-After"])
        assert retry_after >= 1

        # Another key has its own bucket; Ping is never limited.
        assert (await api.get(results, headers=bearer(INTERNAL_KEY))).status_code == 404
        for _ in range(10):
            assert (await api.get("/ping")).status_code == 200
        # A wrong key is refused by the key guard (401), not counted.
        assert (await api.get(results, headers=bearer("no-such-key"))).status_code == 401

        await asyncio.sleep(retry_after)
        assert (await api.get(results, headers=bearer(EXTERNAL_KEY))).status_code == 404


async def test_upload_volume_per_key_shared_by_api_processes(
    tmp_path: Path, client: Client
) -> None:
    window_s, quota = 20, 100_000
    settings = quota_settings(tmp_path, upload_quota_bytes=quota, upload_quota_window_s=window_s)
    async with api_client(settings, client) as first, api_client(settings, client) as second:
        # Start at the beginning of a window, so the uploads below share one.
        await asyncio.sleep(window_s - time.time() % window_s + 0.05)
        for api in (first, second):  # 2 x 40 kB through two API processes: 80 kB counted
            done = await api.post("/samples", files={"sample": ("a.exe", os.urandom(40_000))},
                                  headers=bearer(EXTERNAL_KEY))
            assert done.status_code == 200, done.text

        # 40 kB more does not fit in what is left (20 kB): refused before it is stored.
        over = os.urandom(40_000)
        refused = await first.post("/samples", files={"sample": ("b.exe", over)},
                                   headers=bearer(EXTERNAL_KEY))
        assert refused.status_code == 429, refused.text
        assert "upload quota" in refused.json()["detail"]
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= window_s
        assert not list(settings.blob_dir.rglob("*" + _sha256(over)))

        # 20 kB fits exactly; then the window is used up, even for a small upload.
        fits = await second.post("/samples", files={"sample": ("c.exe", os.urandom(20_000))},
                                 headers=bearer(EXTERNAL_KEY))
        assert fits.status_code == 200, fits.text
        full = await first.post("/samples", files={"sample": ("d.exe", b"MZ tiny")},
                                headers=bearer(EXTERNAL_KEY))
        assert full.status_code == 429, full.text

        # Another key has its own count; Ping stays open.
        other = await second.post("/samples", files={"sample": ("e.exe", over)},
                                  headers=bearer(INTERNAL_KEY))
        assert other.status_code == 200, other.text
        assert (await first.get("/ping")).status_code == 200

        # The next window: the key uploads again.
        await asyncio.sleep(int(full.headers["Retry-After"]))
        again = await first.post("/samples", files={"sample": ("b.exe", over)},
                                 headers=bearer(EXTERNAL_KEY))
        assert again.status_code == 200, again.text


async def test_an_upload_passing_the_quota_midway_is_cut_off(
    tmp_path: Path, client: Client
) -> None:
    """No Content-Length to refuse it by: the stream is cut when it passes the quota, and
    nothing of it is kept."""
    settings = quota_settings(tmp_path, upload_quota_bytes=50_000)
    body = os.urandom(80_000)

    async def chunked() -> AsyncIterator[bytes]:
        boundary = "quota-boundary"
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"sample\"; "
               f"filename=\"big.exe\"\r\n\r\n").encode()
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    async with api_client(settings, client) as api:
        refused = await api.post(
            "/samples", content=chunked(),
            headers={**bearer(EXTERNAL_KEY),
                     "Content-Type": "multipart/form-data; boundary=quota-boundary"},
        )
        assert refused.status_code == 429, refused.text
        assert not list(settings.blob_dir.rglob("*" + _sha256(body)))
        assert not [p for p in (settings.blob_dir / "tmp").iterdir()]
        # Nothing was counted: a sample that fits is accepted.
        fits = await api.post("/samples", files={"sample": ("s.exe", os.urandom(45_000))},
                              headers=bearer(EXTERNAL_KEY))
        assert fits.status_code == 200, fits.text


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

