"""Submit Sample streams its body: sha256 on the way, a cap answering 413 as soon as it is
passed, and no temporary file left behind whatever the body looks like."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from temporalio.client import Client

from api.app import create_app
from api.upload import FRAMING_ALLOWANCE
from common.config import Settings

KEY = "upload-test-key"
CAP = 8 * 1024
BOUNDARY = "ae-test-boundary"


@asynccontextmanager
async def capped_api(tmp_path: Path, client: Client | None = None,
                     cap: int = CAP) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    """A test-specific app with a small upload cap; yields the client and the blob dir."""
    settings = Settings(
        data_dir=tmp_path, database_url_override=None, queue_prefix="upload-test-no-workers",
        max_upload_bytes=cap, auth="enabled", api_keys=(KEY,), internal_api_keys=(),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if client is not None:
            app.state.ae.client = client
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ae.test",
                                     headers={"Authorization": f"Bearer {KEY}"}) as http:
            yield http, settings.blob_dir


def multipart(payload: bytes, name: str = "sample", filename: str = "s.bin") -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; "
        f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + payload + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


MULTIPART_TYPE = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def leftovers(blob_dir: Path) -> list[Path]:
    return list((blob_dir / "tmp").iterdir())


def stored(blob_dir: Path) -> list[Path]:
    return [p for p in (blob_dir / "sha256").rglob("*") if p.is_file()] \
        if (blob_dir / "sha256").exists() else []


async def test_over_the_cap_is_413_and_leaves_nothing(tmp_path: Path) -> None:
    async with capped_api(tmp_path) as (http, blobs):
        response = await http.post("/samples", files={"sample": ("big", os.urandom(CAP + 1))})
        assert response.status_code == 413, response.text
        assert str(CAP) in response.json()["detail"]
        assert leftovers(blobs) == [] and stored(blobs) == []


async def test_a_declared_length_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(64):
            pulled.append(i)
            yield b"x" * 1024

    async with capped_api(tmp_path) as (http, blobs):
        headers = {**MULTIPART_TYPE, "Content-Length": str(64 * 1024 + CAP + FRAMING_ALLOWANCE)}
        response = await http.post("/samples", content=body(), headers=headers)
        assert response.status_code == 413
        assert len(pulled) <= 1, "the body was read although its length could not fit"
        assert leftovers(blobs) == []


async def test_an_undeclared_stream_is_cut_off_at_the_cap(tmp_path: Path) -> None:
    """No Content-Length (chunked): reading stops soon after the cap, not at the end."""
    pulled: list[int] = []
    chunk = 4 * 1024
    head, tail = multipart(b"").split(b"\r\n\r\n", 1)

    async def body() -> AsyncIterator[bytes]:
        yield head + b"\r\n\r\n"
        for i in range(1000):  # 4 MB on offer, cap 8 KiB
            pulled.append(i)
            yield os.urandom(chunk)
        yield tail

    async with capped_api(tmp_path) as (http, blobs):
        response = await http.post("/samples", content=body(), headers=MULTIPART_TYPE)
        assert response.status_code == 413
        assert len(pulled) * chunk <= CAP + FRAMING_ALLOWANCE + 2 * chunk, len(pulled)
        assert leftovers(blobs) == [] and stored(blobs) == []


async def test_bad_bodies_get_clear_4xx_and_leave_nothing(tmp_path: Path) -> None:
    async with capped_api(tmp_path) as (http, blobs):
        cases = [
            (multipart(b""), MULTIPART_TYPE, 400, "empty"),
            (multipart(b"abc", name="other"), MULTIPART_TYPE, 422, "'sample'"),
            (multipart(b"abc")[:-10], MULTIPART_TYPE, 400, "malformed"),  # truncated
            (multipart(b"abc")[:60], MULTIPART_TYPE, 400, "malformed"),  # inside the headers
            (b"garbage without boundaries", MULTIPART_TYPE, 400, "malformed"),
            (b"", MULTIPART_TYPE, 400, "malformed"),
            (multipart(b"abc"), {"Content-Type": "multipart/form-data"}, 422, "multipart"),
            (b"sample=abc", {"Content-Type": "application/x-www-form-urlencoded"}, 422,
             "multipart"),
            (multipart(b"abc"), {"Content-Type": "multipart/form-data; boundary="
                                 + "b" * 300}, 400, "boundary"),
            (b"--" + BOUNDARY.encode() + b"\r\n" + b"X-Long: " + b"h" * 10000 + b"\r\n\r\n",
             MULTIPART_TYPE, 400, "malformed"),
        ]
        for body, headers, status, word in cases:
            response = await http.post("/samples", content=body, headers=headers)
            assert response.status_code == status, (body[:80], response.text)
            assert word in response.json()["detail"], response.text
        assert leftovers(blobs) == [] and stored(blobs) == []


async def test_the_sample_is_hashed_on_the_way_and_stored_once(
    tmp_path: Path, client: Client
) -> None:
    payload = b"\x7fELF" + os.urandom(CAP - 4)  # exactly at the cap: accepted
    expected = hashlib.sha256(payload).hexdigest()
    async with capped_api(tmp_path, client) as (http, blobs):
        body = multipart(b"first", name="note") + b""  # another field before the sample
        body = body.replace(f"--{BOUNDARY}--".encode(), f"--{BOUNDARY}".encode()) \
            + multipart(payload, filename="naïve.bin").split(b"\r\n", 1)[1]
        response = await http.post("/samples", content=body, headers=MULTIPART_TYPE)
        assert response.status_code == 200, response.text
        assert response.json() == {"sample_id": expected}
        blob = blobs / "sha256" / expected[:2] / expected[2:4] / expected
        assert blob.read_bytes() == payload
        assert not os.access(blob, os.W_OK | os.X_OK) or os.geteuid() == 0
        assert blob.stat().st_mode & 0o111 == 0, "stored samples are never executable"
        assert stored(blobs) == [blob] and leftovers(blobs) == []
        # httpx's own encoding, as curl -F would send it, gives the same answer.
        again = await http.post("/samples", files={"sample": ("x", payload)})
        assert again.json() == {"sample_id": expected}
        status = await http.get(f"/predictions/{expected}/status")
        assert status.status_code == 200, status.text
