"""The pipeline on PostgreSQL: a deployment of its own (its data directory, task queues
and a fresh database of the session's PostgreSQL server) analyses a compiled zlib
program end to end, and concurrent submissions of one new file start one run. The rest
of the pipeline tests run on SQLite; tests/test_store.py covers the store on both."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client

from common.contracts import MODEL_NAME, workflow_id
from tests.conftest import (
    ZLIB_STATIC,
    api_client,
    compile_c,
    make_settings,
    running_workers,
    submit,
    wait_for_final,
)
from tests.postgres import LocalPostgres
from tests.test_pipeline_e2e import ZLIB_PROGRAM


@pytest_asyncio.fixture(scope="module")
async def pg_api(
    postgres: LocalPostgres, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    url = await postgres.create_database()
    settings = dataclasses.replace(make_settings(tmp_path_factory.mktemp("ae-pg-data")),
                                   database_url_override=url)
    async with running_workers(client, settings), api_client(settings, client) as http:
        yield http, url


async def stored_row(url: str, sha256: str) -> asyncpg.Record | None:
    """The prediction row, read from PostgreSQL itself."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return await conn.fetchrow(
            "SELECT status, celery_task_id, prediction_results::text AS results "
            "FROM predictions WHERE sha256_hash = $1 AND model = $2", sha256, MODEL_NAME)
    finally:
        await conn.close()


async def test_compiled_zlib_program_is_attributed_with_postgresql(
    pg_api: tuple[httpx.AsyncClient, str], tmp_path: Path
) -> None:
    api, url = pg_api
    binary = compile_c(tmp_path, ZLIB_PROGRAM, "-O2", str(ZLIB_STATIC), name="zpack-pg")
    sha256 = await submit(api, binary, "zpack-pg")
    status = await wait_for_final(api, sha256)
    assert status["status"][MODEL_NAME] == "SUCCESS", status
    body = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
    assert body["prediction_results"]["verdict"] == "zlib"
    row = await stored_row(url, sha256)
    assert row is not None and row["status"] == "SUCCESS"
    assert row["celery_task_id"] == body["celery_task_id"] and '"zlib"' in row["results"]
    version = (await api.get("/internal/versions/prediction-store")).json()
    assert "postgresql" in version["prediction-store"]


async def test_concurrent_submissions_start_one_run_with_postgresql(
    pg_api: tuple[httpx.AsyncClient, str], client: Client, tmp_path: Path
) -> None:
    api, url = pg_api
    binary = compile_c(tmp_path, "int main(void) { return 9; }\n", "-O1", name="nine")
    data = binary.read_bytes() + uuid.uuid4().bytes
    responses = await asyncio.gather(
        *(api.post("/samples", files={"sample": (f"copy{i}", data)}) for i in range(8))
    )
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    (sha256,) = {r.json()["sample_id"] for r in responses}
    await wait_for_final(api, sha256)
    rows = (await api.get(f"/internal/predictions/{sha256}")).json()
    assert len(rows) == 1 and rows[0]["celery_task_id"]
    runs = [w async for w in client.list_workflows(
        f"WorkflowId = '{workflow_id(MODEL_NAME, sha256)}'")]
    assert [w.run_id for w in runs] == [rows[0]["celery_task_id"]]
    row = await stored_row(url, sha256)
    assert row is not None and row["celery_task_id"] == rows[0]["celery_task_id"]
