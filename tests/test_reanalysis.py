"""Batch reanalysis: every stored sample again after a model update, page by page."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client

from common.config import Settings
from common.contracts import MODEL_NAME, BatchRequest, BatchSummary, workflow_id
from festive.card import model_card
from tests.conftest import (
    api_client,
    compile_c,
    make_settings,
    running_workers,
    submit,
    wait_for_final,
)


async def record_histories(client: Client, runs: list, name: str) -> None:  # noqa: ANN001
    """AE_RECORD_HISTORIES=DIR: keep these runs' histories for tests/test_replay.py."""
    target = os.environ.get("AE_RECORD_HISTORIES")
    if not target:
        return
    for index, run in enumerate(sorted(runs, key=lambda r: r.start_time)):
        history = await client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
        Path(target, f"{name}_{index}.json").write_text(history.to_json())


@pytest.fixture(scope="module")
def own_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A deployment of its own, so the batch sees only this module's samples."""
    return make_settings(tmp_path_factory.mktemp("reanalysis"))


@pytest_asyncio.fixture(scope="module")
async def own_api(own_settings: Settings, client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with running_workers(client, own_settings), api_client(own_settings, client) as http:
        yield http


async def test_model_update_reanalyses_every_sample(
    own_api: httpx.AsyncClient, own_settings: Settings, client: Client, tmp_path: Path
) -> None:
    samples = []
    for i in range(3):
        program = compile_c(tmp_path, f"int main(void) {{ return {i}; }}\n", name=f"p{i}")
        samples.append(await submit(own_api, program.read_bytes() + uuid.uuid4().bytes))
    first_runs = {}
    for sha in samples:
        await wait_for_final(own_api, sha)
        first_runs[sha] = (await own_api.get(f"/internal/queue/{sha}")).json()["id"]

    # The default batch id is one per (model, analysis version) on a Temporal server; a
    # batch another test module's deployment left running there would be joined.
    default_id = f"reanalyze/{MODEL_NAME}/{model_card()['analysis_version']}"
    async for run in client.list_workflows(
            f"WorkflowId = '{default_id}' AND ExecutionStatus = 'Running'"):
        await client.get_workflow_handle(run.id, run_id=run.run_id).terminate("test isolation")

    # Nothing to do while every sample has a result of the current version.
    response = await own_api.post("/internal/queue/reanalysis")
    assert response.status_code == 200, response.text
    assert response.json()["workflow_id"] == default_id
    batch = client.get_workflow_handle(
        response.json()["workflow_id"], run_id=response.json()["id"], result_type=BatchSummary,
    )
    idle = await batch.result()
    assert (idle.total, idle.done, idle.joined, idle.failed, idle.cached) == (0, 0, 0, 0, 0)
    # the cache rule, visible: with force=false nothing current is chosen; "all" counts them
    response = await own_api.post("/internal/queue/reanalysis", params={"selection": "all"})
    everything = await client.get_workflow_handle(
        response.json()["workflow_id"], result_type=BatchSummary).result()
    assert (everything.total, everything.cached) == (0, 3)

    # A new model version: every sample runs again; one start per run forces
    # continue-as-new while the other analysis still runs.
    version = f"next-{uuid.uuid4().hex[:6]}"
    handle = await client.start_workflow(
        "ReanalysisBatch",
        BatchRequest(MODEL_NAME, version, own_settings.cpu_queue, own_settings.gpu_queue,
                     page_size=2, concurrency=2, children_per_run=1),
        id=f"reanalyze/{MODEL_NAME}/{version}", task_queue=own_settings.orchestration_queue,
        result_type=BatchSummary,
    )
    summary = await handle.result()
    assert (summary.total, summary.done, summary.failed, summary.state) == (3, 3, 0, "done")
    runs = [r async for r in client.list_workflows(
        f"WorkflowId = 'reanalyze/{MODEL_NAME}/{version}'")]
    assert len(runs) >= 3  # one start per run
    await record_histories(client, runs, "batch_continue_as_new")

    for sha in samples:
        described = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha)).describe()
        assert described.run_id != first_runs[sha]
        row = (await own_api.get(f"/internal/predictions/{sha}/{MODEL_NAME}")).json()
        assert row["celery_task_id"] == described.run_id
        assert row["prediction_results"] and row["error_details"] is None


async def test_reanalysis_request_is_validated(own_api: httpx.AsyncClient) -> None:
    for bad in ({"concurrency": 0}, {"concurrency": 65}, {"include_failed": "perhaps"}):
        response = await own_api.post("/internal/queue/reanalysis", params=bad)
        assert response.status_code == 422, (bad, response.text)
