"""Batch reanalysis (ReanalysisBatch) with real processes: a Temporal dev server, workers
started as subprocesses (killed mid-batch), a SQLite file locked for a while, the API
in-process. Every member ends in a final state, the counts add up, a sample is never
analysed twice at once, "retry failed" reruns exactly the failed ones, and a cancel
stops the analyses the batch started.
"""

from __future__ import annotations

import asyncio
import io
import signal
import sqlite3
import uuid
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from api.app import create_app
from common.config import Settings
from common.contracts import MODEL_NAME, workflow_id
from store.blobs import BlobStore
from store.db import PredictionStore
from tests.conftest import compile_c, submit
from tests.test_faults import (  # the same process helpers as the fault tests
    ROLES,
    Services,
    many_functions_source,
    stop,
    variant,
    wait_until,
)
from tests.test_reanalysis import record_histories

KEY = "batch-internal-key"
BATCH_SIZE = 50
BAD = 5  # members that are not executables: they fail once, with error_details


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Any:
    running = Services(root=tmp_path_factory.mktemp("batch"))
    running.start_temporal()
    try:
        yield running
    finally:
        running.stop_workers()
        running.stop_temporal()


@dataclass
class BatchStack:
    services: Services
    prefix: str
    api: httpx.AsyncClient
    client: Client
    store: PredictionStore
    blobs: BlobStore

    def worker(self, role: str, **env: str) -> Any:
        return self.services.start_worker(role, self.prefix, **env)

    async def add_sample(self, data: bytes, name: str) -> str:
        """A stored sample, as Submit Sample records it, with no analysis started."""
        sha256 = self.blobs.put_bytes(data)
        await self.store.record_sample(sha256, len(data), name)
        return sha256

    async def progress(self, batch_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/internal/queue/reanalysis/{batch_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_state(self, batch_id: str, states: set[str], timeout_s: float
                         ) -> dict[str, Any]:
        async def ended() -> dict[str, Any] | None:
            response = await self.api.get(f"/internal/queue/reanalysis/{batch_id}")
            if response.status_code == 404:  # not opened by its workflow yet
                return None
            assert response.status_code == 200, response.text
            view = response.json()
            return view if view["state"] in states else None
        return await wait_until(ended, timeout_s, f"batch {batch_id} to end", interval_s=1)

    async def analysis_runs(self) -> Counter[str]:
        """AnalyzeSample runs of this stack, per workflow id."""
        query = (f"WorkflowType = 'AnalyzeSample' AND "
                 f"TaskQueue = '{self.prefix}-orchestration'")
        return Counter([w.id async for w in self.client.list_workflows(query)])


@asynccontextmanager
async def batch_stack(services: Services, name: str, children_per_run: int = 200
                      ) -> AsyncIterator[BatchStack]:
    prefix = f"batch-{name}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        data_dir=services.data_dir, database_url_override=None,
        temporal_address=services.address, queue_prefix=prefix,
        auth="enabled", api_keys=(), internal_api_keys=(KEY,),
        batch_children_per_run=children_per_run,
    )
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://ae.test",
                headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
            ) as http:
                client = await Client.connect(services.address)
                yield BatchStack(services, prefix, http, client, app.state.ae.store,
                                 app.state.ae.blobs)
    finally:
        services.stop_workers()


def zipped(program: bytes, tag: str) -> bytes:
    """A distinct sample whose only executable is `program`: its lift is cached after the
    first, so fifty of them stay quick."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("tool", program)
        archive.writestr("README.txt", f"sample {tag} {uuid.uuid4()}\n")
    return out.getvalue()


async def test_batch_of_fifty_survives_faults_and_retries_exactly_the_failed(
    services: Services, tmp_path: Path
) -> None:
    program = compile_c(tmp_path, "int main(void) { return 7; }\n", "-O1").read_bytes()
    async with batch_stack(services, "fifty", children_per_run=20) as s:
        s.worker("orchestration", AE_SQLITE_BUSY_TIMEOUT_MS="500")
        s.worker("gpu")
        cpu = s.worker("cpu")
        good = [await s.add_sample(zipped(program, f"{i}"), f"good-{i}.zip")
                for i in range(BATCH_SIZE - BAD)]
        bad = {await s.add_sample(f"not a binary {i} {uuid.uuid4()}\n".encode(), f"bad-{i}.txt")
               for i in range(BAD)}
        # Two of them are also submitted through the API: the batch joins (or skips) them,
        # it never starts a second run of a sample being analysed.
        submitted = [await submit(s.api, zipped(program, "sub-a"), "sub-a.zip"),
                     await submit(s.api, zipped(program, "sub-b"), "sub-b.zip")]
        members = set(good) | bad | set(submitted)

        queued = await s.api.post("/internal/queue/reanalysis", params={"concurrency": 4})
        assert queued.status_code == 200, queued.text
        batch_id, batch_workflow = queued.json()["batch_id"], queued.json()["workflow_id"]
        assert queued.json()["id"] == batch_id
        again = await s.api.post("/internal/queue/reanalysis", params={"concurrency": 4})
        assert again.json()["batch_id"] == batch_id  # asking again joins the running batch

        # Watch it: the workflow's query and the REST view agree that the counts add up.
        first = await wait_until(lambda: _done_at_least(s, batch_id, 10), 600, "10 done")
        assert first["source"] == "workflow" and first["total"] == BATCH_SIZE + 2
        assert first["finished"] + first["running"] + first["remaining"] == first["total"]
        assert first["rate_per_min"] > 0 and first["eta_s"] is not None
        live = await s.client.get_workflow_handle(batch_workflow).query("progress")
        assert live["batch_id"] == batch_id and live["total"] == BATCH_SIZE + 2

        # A cpu worker killed with SIGKILL mid-batch; another takes over.
        s.worker("cpu")
        stop(cpu, signal.SIGKILL)
        await wait_until(lambda: _done_at_least(s, batch_id, 25), 600, "25 done")

        # The database locked for a while: the batch's writes fail and are retried.
        lock = sqlite3.connect(services.data_dir / "attribution.db", isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            await asyncio.sleep(8)
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        final = await s.wait_state(batch_id, {"done"}, 900)
        assert final["total"] == len(members) == BATCH_SIZE + 2
        assert final["finished"] == final["total"], final
        assert final["done"] + final["failed"] + final["revoked"] + final["skipped"] \
            == final["total"]
        assert (final["running"], final["remaining"]) == (0, 0)
        assert final["failed"] == BAD and final["revoked"] == 0
        assert {f["sha256"] for f in final["failures"]} == bad
        assert all(f["error_details"] and f["run_id"] for f in final["failures"])
        assert final["failures_total"] == BAD

        # Every member ends in a final state; one run each, however it was reached.
        for sha in members:
            row = (await s.api.get(f"/internal/predictions/{sha}/{MODEL_NAME}")).json()
            if sha in bad:
                assert row["error_details"] and not row["prediction_results"], row
            else:
                assert row["prediction_results"] and row["error_details"] is None, row
        runs = await s.analysis_runs()
        assert set(runs) == {workflow_id(MODEL_NAME, sha) for sha in members}
        assert all(runs[workflow_id(MODEL_NAME, sha)] == 1 for sha in members - set(submitted))
        # A submitted sample runs twice only when its submission ended just before the
        # batch's turn: never at the same time.
        for sha in submitted:
            spans = sorted([(w.start_time, w.close_time) async for w in s.client.list_workflows(
                f"WorkflowId = '{workflow_id(MODEL_NAME, sha)}'")])
            assert all(a[1] is not None and a[1] <= b[0]
                       for a, b in zip(spans, spans[1:], strict=False)), spans

        # It continued as new (20 starts per run) with analyses still running; the cache
        # rules are visible: one program, lifted once or a few times, reused by the rest.
        generations = [w async for w in s.client.list_workflows(
            f"WorkflowId = '{batch_workflow}'")]
        assert len(generations) >= 3
        closed = await s.client.get_workflow_handle(batch_workflow).query("progress")
        assert closed["state"] == "done" and closed["runs"] == len(generations)
        assert closed["lifts_new"] + closed["lifts_reused"] == closed["done"]
        assert closed["lifts_reused"] > closed["lifts_new"]

        # "Retry the failed ones": a new batch of exactly those five.
        retry = await s.api.post(f"/internal/queue/reanalysis/{batch_id}/retry-failed")
        assert retry.status_code == 200, retry.text
        retry_id = retry.json()["batch_id"]
        assert retry_id != batch_id
        retried = await s.wait_state(retry_id, {"done"}, 600)
        assert (retried["total"], retried["failed"]) == (BAD, BAD), retried
        assert {f["sha256"] for f in retried["failures"]} == bad
        again_runs = await s.analysis_runs()
        assert {sha for sha in members
                if again_runs[workflow_id(MODEL_NAME, sha)] > runs[workflow_id(MODEL_NAME, sha)]
                } == bad
        assert all(again_runs[workflow_id(MODEL_NAME, sha)] == 2 for sha in bad)
        assert all(p.poll() is None for p in services.workers if p is not cpu), "a worker died"


async def _done_at_least(s: BatchStack, batch_id: str, count: int) -> dict[str, Any] | None:
    response = await s.api.get(f"/internal/queue/reanalysis/{batch_id}")
    if response.status_code != 200:  # 404 until the workflow has opened the batch
        return None
    view = response.json()
    return view if view["done"] >= count else None


async def test_cancel_mid_batch_stops_its_children(services: Services, tmp_path: Path) -> None:
    # ~900 functions: analyses of several seconds, so they are caught running
    program = compile_c(tmp_path, many_functions_source(900), "-O0", name="some")
    async with batch_stack(services, "cancel") as s:
        for role in ROLES:
            s.worker(role)
        members = {await s.add_sample(variant(program, f"cancel-{i}"), f"some-{i}")
                   for i in range(8)}
        queued = await s.api.post("/internal/queue/reanalysis", params={"concurrency": 2})
        assert queued.status_code == 200, queued.text
        batch_id = queued.json()["batch_id"]

        async def one_done_and_a_later_one_running() -> dict[str, Any] | None:
            # a member started after the first ended has most of its lift ahead of it (the
            # first two start together and end together)
            view = await _done_at_least(s, batch_id, 1)
            started = view["finished"] + view["running"] if view is not None else 0
            return view if view is not None and view["running"] and started >= 3 else None
        await wait_until(one_done_and_a_later_one_running, 600,
                         "one done and one started after it running")
        cancelled = await s.api.post(f"/internal/queue/reanalysis/{batch_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text

        final = await s.wait_state(batch_id, {"cancelled"}, 300)
        assert final["done"] >= 1 and final["revoked"] >= 1, (cancelled.json(), final)
        assert final["finished"] + final["remaining"] == final["total"] == len(members)
        assert final["remaining"] >= 1  # never started
        running = [w async for w in s.client.list_workflows(
            f"WorkflowType = 'AnalyzeSample' AND TaskQueue = '{s.prefix}-orchestration' "
            "AND ExecutionStatus = 'Running'")]
        assert running == []
        revoked = [w async for w in s.client.list_workflows(
            f"WorkflowType = 'AnalyzeSample' AND TaskQueue = '{s.prefix}-orchestration' "
            "AND ExecutionStatus = 'Canceled'")]
        assert len(revoked) == final["revoked"]
        for w in revoked:
            sha = w.id.rsplit("/", 1)[1]
            row = (await s.api.get(f"/internal/predictions/{sha}/{MODEL_NAME}")).json()
            assert row["error_details"].startswith("revoked"), row
        again = await s.api.post(f"/internal/queue/reanalysis/{batch_id}/cancel")
        assert again.status_code == 409, again.text
        batch_runs = [w async for w in s.client.list_workflows(
            f"WorkflowId = '{final['workflow_id']}' AND ExecutionStatus = 'Canceled'")]
        await record_histories(s.client, batch_runs, "batch_cancelled")


async def test_batch_operations_refuse_bad_input(services: Services) -> None:
    async with batch_stack(services, "input") as s:
        for params in ({"selection": "some"}, {"status": "DONE"}, {"verdict": "two words"},
                       {"submitted_after": "yesterday"}, {"concurrency": 0},
                       {"submitted_after": "2026-01-02T00:00:00",
                        "submitted_before": "2026-01-01T00:00:00"}):
            response = await s.api.post("/internal/queue/reanalysis", params=params)
            assert response.status_code == 422, (params, response.text)
        unknown = str(uuid.uuid4())
        for method, path in (("GET", unknown), ("POST", f"{unknown}/cancel"),
                             ("POST", f"{unknown}/retry-failed")):
            response = await s.api.request(method, f"/internal/queue/reanalysis/{path}")
            assert response.status_code == 404, (path, response.text)
        response = await s.api.get("/internal/queue/reanalysis/not-a-batch")
        assert response.status_code == 422, response.text
