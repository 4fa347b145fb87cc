"""angr is contained: a lift that crashes, runs too long or eats memory fails alone, once,
with a clear error, and the worker goes on serving."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client

from common.config import Settings
from common.contracts import MODEL_NAME, workflow_id
from tests.conftest import (
    api_client,
    lift_children,
    make_settings,
    running_workers,
    submit,
    wait_for_final,
)

BIG = Path("/usr/bin/perl")  # angr needs minutes and well over 400 MiB for it


def unique(path: Path) -> bytes:
    """A sample no other test submitted (appended bytes do not change what angr lifts)."""
    return path.read_bytes() + uuid.uuid4().bytes


@pytest_asyncio.fixture(scope="module")
async def limited_api(
    tmp_path_factory: pytest.TempPathFactory, client: Client
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """Two deployments: one with a 15 s lift time limit, one with a 400 MiB memory limit.
    (15 s: perl takes minutes, while /bin/true takes up to ~8 s here, angr's import
    included; 4 s, the limit before, failed /bin/true too on a slower machine.)"""
    base = make_settings(tmp_path_factory.mktemp("contained"))
    deployments: dict[str, Settings] = {
        "time": dataclasses.replace(base, queue_prefix=f"time-{uuid.uuid4().hex[:6]}",
                                    lift_timeout_s=15),
        "memory": dataclasses.replace(base, queue_prefix=f"mem-{uuid.uuid4().hex[:6]}",
                                      lift_memory_mb=400),
    }
    async with (
        running_workers(client, deployments["time"]),
        running_workers(client, deployments["memory"]),
        api_client(deployments["time"], client) as time_api,
        api_client(deployments["memory"], client) as memory_api,
    ):
        yield {"time": time_api, "memory": memory_api}


async def assert_failed_once(api: httpx.AsyncClient, client: Client, sha256: str) -> str:
    status = await wait_for_final(api, sha256, timeout_s=300)
    assert status["status"][MODEL_NAME] == "FAILURE", status
    history = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).fetch_history()
    attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) == 1, "a contained failure must not be retried"
    body = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
    return body["error_details"]


async def test_lift_over_its_time_limit_fails_alone(
    limited_api: dict[str, httpx.AsyncClient], client: Client
) -> None:
    api = limited_api["time"]
    sha256 = await submit(api, unique(BIG), "perl")
    error = await assert_failed_once(api, client, sha256)
    assert error.startswith("lift: ") and "took longer than 15 s" in error
    assert lift_children(os.getpid()) == []
    # The same workers go on serving.
    small = await submit(api, unique(Path("/bin/true")), "true")
    assert (await wait_for_final(api, small))["status"][MODEL_NAME] == "SUCCESS"


async def test_lift_over_its_memory_limit_fails_alone(
    limited_api: dict[str, httpx.AsyncClient], client: Client
) -> None:
    api = limited_api["memory"]
    sha256 = await submit(api, unique(BIG), "perl")
    error = await assert_failed_once(api, client, sha256)
    assert "exceeded the memory limit of 400 MiB" in error
    small = await submit(api, unique(Path("/bin/true")), "true")
    assert (await wait_for_final(api, small))["status"][MODEL_NAME] == "SUCCESS"


@pytest.mark.usefixtures("workers")
async def test_angr_crash_fails_the_sample_not_the_worker(
    api: httpx.AsyncClient, client: Client
) -> None:
    sha256 = await submit(api, unique(BIG), "perl")
    for _ in range(240):
        children = lift_children(os.getpid())
        if children:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the lift child never started")
    os.kill(children[0], signal.SIGSEGV)  # what a native crash inside angr looks like
    error = await assert_failed_once(api, client, sha256)
    assert "the angr process died with SIGSEGV" in error
    small = await submit(api, unique(Path("/bin/true")), "true")
    assert (await wait_for_final(api, small))["status"][MODEL_NAME] == "SUCCESS"
