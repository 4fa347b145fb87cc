"""Disk full: the data directory on a real 8 MiB tmpfs (mounted here; root only), the real
API, Temporal dev server and workers.

- An upload that does not fit gets 507 with Retry-After, and nothing half-written stays
  in the blob store or its scratch directory; the service keeps answering.
- An analysis whose worker finds the disk full fails its activity as StorageFull, is
  retried, and finishes once space is freed.
- The lift child reports a full disk with its own exit code, which is retryable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.lift import _raise_for_exit
from common.config import PROJECT_ROOT, Settings
from common.contracts import MODEL_NAME, workflow_id
from common.failures import STORAGE_FULL
from lifting.child import EXIT_NO_SPACE
from sandbox.warm import CHILDREN_DIR
from tests.conftest import (
    api_client,
    compile_c,
    make_settings,
    running_workers,
    submit,
    wait_for_final,
)

DISK_BYTES = 8 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 8 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                    str(mount_point)], check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system has not one byte left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def disk_settings(disk: Path, database: Path) -> Settings:
    """A deployment whose data directory (blobs, scratch) is the small disk; the database
    file elsewhere, so that the blob writes are what meet the full disk."""
    return dataclasses.replace(
        make_settings(disk / "data"),
        database_url_override=f"sqlite+aiosqlite:///{database}",
    )


def leftovers(settings: Settings) -> list[str]:
    """Files in the blob store's scratch directory (temporary files of writes), but for
    the directory of the children started ahead of their jobs (see children_dirs)."""
    scratch = settings.blob_dir / "tmp"
    return sorted(p.name for p in scratch.iterdir()
                  if p.name != CHILDREN_DIR) if scratch.exists() else []


def children_dirs(settings: Settings) -> list[str]:
    """The scratch directories of unpack and lift children (sandbox/warm.py)."""
    root = settings.blob_dir / "tmp" / CHILDREN_DIR
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def blob_files(settings: Settings) -> list[Path]:
    root = settings.blob_dir / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_upload_that_does_not_fit_gets_507_and_leaves_nothing(
    small_disk: Path, tmp_path: Path, client: Client
) -> None:
    settings = disk_settings(small_disk, tmp_path / "store.db")
    async with api_client(settings, client) as api:
        first = await submit(api, b"MZ" + os.urandom(20_000), "fits.exe")
        stored = blob_files(settings)
        assert [p.name for p in stored] == [first]

        # Larger than the whole disk: cut off when the disk fills, the partial file removed.
        big = await api.post("/samples", files={"sample": ("big.exe", os.urandom(12 << 20))})
        assert big.status_code == 507, big.text
        assert "insufficient storage" in big.json()["detail"]
        assert int(big.headers["Retry-After"]) > 0
        assert leftovers(settings) == []
        assert blob_files(settings) == stored

        # The disk full to the last byte: even a small upload does not fit.
        filler = fill(small_disk)
        small = b"MZ" + os.urandom(30_000)
        refused = await api.post("/samples", files={"sample": ("small.exe", small)})
        assert refused.status_code == 507, refused.text
        assert leftovers(settings) == []
        assert blob_files(settings) == stored

        # The service keeps answering: health check, another sample's status.
        assert (await api.get("/ping")).json() == {"check": True}
        status = await api.get(f"/predictions/{first}/status")
        assert status.status_code == 200, status.text

        # Space freed: the same upload is accepted.
        filler.unlink()
        accepted = await submit(api, small, "small.exe")
        assert accepted in {p.name for p in blob_files(settings)}
        assert leftovers(settings) == []


async def test_analysis_waits_for_space_and_resumes(
    small_disk: Path, tmp_path: Path, client: Client
) -> None:
    settings = disk_settings(small_disk, tmp_path / "store.db")
    binary = compile_c(tmp_path, "#include <stdio.h>\nint main(void) { puts(\"disk\"); "
                                 "return 0; }\n", "-O0", name="full")
    async with api_client(settings, client) as api:
        # Submitted while no worker serves this deployment; then the disk fills up.
        sha256 = await submit(api, binary, "full")
        filler = fill(small_disk)
        async with running_workers(client, settings):
            handle = client.get_workflow_handle(workflow_id(MODEL_NAME, sha256))
            failure = await _storage_failure(handle, timeout_s=300)
            assert "out of storage space" in failure.message, failure
            # Still running: the full disk did not fail the analysis.
            body = (await api.get(f"/predictions/{sha256}/status")).json()
            assert body["status"][MODEL_NAME] not in {"SUCCESS", "FAILURE"}, body
            assert leftovers(settings) == []

            filler.unlink()
            final = await wait_for_final(api, sha256, timeout_s=600)
            assert final["status"][MODEL_NAME] == "SUCCESS", final
            assert leftovers(settings) == []
        # the workers are gone: so are their children and the children's directories
        assert children_dirs(settings) == []


async def _storage_failure(handle: Any, timeout_s: float) -> Any:
    """The last failure of a pending activity once it has failed as StorageFull at least
    once and is being retried."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    seen: list[str] = []
    while asyncio.get_running_loop().time() < deadline:
        description = await handle.describe()
        for info in description.raw_description.pending_activities:
            failure = info.last_failure
            if failure.message:
                seen.append(f"{info.activity_type.name}: {failure.message}")
            if info.attempt >= 2 and failure.application_failure_info.type == STORAGE_FULL:
                return failure
        await asyncio.sleep(0.5)
    raise AssertionError(f"no activity failed as {STORAGE_FULL} within {timeout_s} s: "
                         f"{seen[-5:]}")


def test_lift_child_reports_a_full_disk_as_retryable(small_disk: Path, tmp_path: Path) -> None:
    binary = compile_c(tmp_path, "int main(void) { return 0; }\n", "-O0", name="tiny")
    fill(small_disk)
    done = subprocess.run(
        [sys.executable, "-m", "lifting.child", str(binary), str(small_disk / "lift.json.gz")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == EXIT_NO_SPACE, done.stderr[-2000:]
    assert "ERROR no space left" in done.stderr
    with pytest.raises(ApplicationError) as raised:
        _raise_for_exit(done.returncode, done.stderr, "tiny", 4096)
    assert raised.value.type == STORAGE_FULL and not raised.value.non_retryable

