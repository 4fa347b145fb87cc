"""The prediction store on both databases: SQLite (aiosqlite) and PostgreSQL (asyncpg,
a real server from tests/postgres.py). The schema is Alembic's: a fresh database and
databases made before Alembic are brought to the newest revision, and what the
migrations build is what store/models.py declares."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from common.contracts import FAILURE, PENDING, STARTED, SUCCESS, ReferenceUpdate
from store import migrate
from store.db import PredictionStore, utcnow
from store.models import SCHEMA_VERSION, Base

A, B, C = "a" * 64, "b" * 64, "c" * 64
MODEL = "FESTIVE Func Sim"
# What create_all built before Alembic: schema 1, schema 2 before the revocations table,
# and schema 2 as it was when Alembic took over.
LEGACY = {
    "schema 1": (["samples", "predictions", "store_info"], "1"),
    "schema 2 before revocations": (["samples", "predictions", "store_info", "references"], "2"),
    "schema 2": (["samples", "predictions", "store_info", "references", "revocations"], "2"),
}


def schema_differences(conn: Connection) -> list[Any]:
    return compare_metadata(MigrationContext.configure(conn), Base.metadata)


async def test_a_fresh_database_is_migrated_to_the_newest_revision(database_url: str) -> None:
    store = PredictionStore(database_url)
    try:
        await store.init_schema()
        await store.init_schema()  # a second start changes nothing
        assert await migrate.current_revision(store.engine) == migrate.head_revision()
        assert await store.schema_version() == SCHEMA_VERSION
        async with store.engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables == {*Base.metadata.tables, "alembic_version"}
    finally:
        await store.close()


@pytest.mark.parametrize("legacy", list(LEGACY))
async def test_a_database_made_before_alembic_is_upgraded_with_its_rows(
    database_url: str, legacy: str
) -> None:
    tables, version = LEGACY[legacy]
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: Base.metadata.create_all(
            c, tables=[Base.metadata.tables[name] for name in tables]))
        await conn.execute(text("INSERT INTO store_info VALUES ('schema_version', :v)"),
                           {"v": version})
        await conn.execute(text(
            "INSERT INTO samples VALUES (:sha, 7, 'kept', :t, :t, 3)"), {"sha": C, "t": utcnow()})
        await conn.execute(text(
            "INSERT INTO predictions (sha256_hash, model, status, prediction_results, "
            "created_at, updated_at) VALUES (:sha, :model, 'SUCCESS', :results, :t, :t)"),
            {"sha": C, "model": MODEL, "results": '{"verdict": "zlib"}', "t": utcnow()})
    await engine.dispose()

    store = PredictionStore(database_url)
    try:
        await store.init_schema()
        assert await migrate.current_revision(store.engine) == migrate.head_revision()
        assert await store.schema_version() == SCHEMA_VERSION
        async with store.engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []
        sample = await store.get_sample(C)
        assert sample is not None and (sample.filename, sample.submissions) == ("kept", 3)
        row = await store.get_prediction(C, MODEL)
        assert row is not None and row.prediction_results == {"verdict": "zlib"}
        assert await store.claim_revocation("run-1", C, MODEL)
        assert (await store.add_reference(A, "acme", "1", [], "f"))[1]
    finally:
        await store.close()


async def test_processes_starting_together_migrate_once(database_url: str) -> None:
    stores = [PredictionStore(database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(store.init_schema() for store in stores))
        async with stores[0].engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version")))
            assert [v for (v,) in versions] == [migrate.head_revision()]
    finally:
        for store in stores:
            await store.close()


@pytest.fixture
async def store(database_url: str) -> Any:
    store = PredictionStore(database_url)
    await store.init_schema()
    yield store
    await store.close()


async def test_samples_count_every_submission_even_concurrent_ones(
    store: PredictionStore,
) -> None:
    results = await asyncio.gather(*(store.record_sample(A, 10, "s") for _ in range(12)))
    assert results.count(True) == 1
    sample = await store.get_sample(A)
    assert sample is not None and sample.submissions == 12 and sample.size == 10
    assert not await store.record_sample(A, 10, "x" * 400)
    assert await store.record_sample(B, 1, "x" * 400)
    assert (await store.get_sample(B)).filename == "x" * 255


async def test_a_prediction_belongs_to_its_current_run(store: PredictionStore) -> None:
    assert await store.create_prediction(A, MODEL)
    assert not await store.create_prediction(A, MODEL)
    await store.begin_run(A, MODEL, "v1", "run-1")
    assert await store.set_status(A, MODEL, "run-1", STARTED, "v1")
    results = {"verdict": "zlib", "families": {"zlib": {"probability": "0.97"}},
               "note": "ünïcode ✓ \u2028"}
    assert await store.save_results(A, MODEL, "run-1", "v1", results, "# text")
    row = await store.get_prediction(A, MODEL)
    assert row.status == SUCCESS and row.prediction_results == results
    assert row.explanation_results == "# text" and row.predicted_at is not None

    await store.begin_run(A, MODEL, "v2", "run-2")  # a new run clears the old results
    row = await store.get_prediction(A, MODEL)
    assert (row.status, row.prediction_results, row.celery_task_id) == (PENDING, None, "run-2")
    assert not await store.set_status(A, MODEL, "run-1", FAILURE, "v1", "stale")
    assert not await store.save_results(A, MODEL, "run-1", "v1", results, "stale")
    assert await store.set_status(A, MODEL, "run-2", FAILURE, "v2", "bad input")
    row = await store.get_prediction(A, MODEL)
    assert (row.status, row.error_details, row.model_version) == (FAILURE, "bad input", "v2")

    assert await store.update_fields(A, MODEL, explanation_results="edited")
    assert not await store.update_fields(B, MODEL, explanation_results="none")
    assert [r.model for r in await store.list_predictions(A)] == [MODEL]
    assert await store.delete_prediction(A, MODEL)
    assert not await store.delete_prediction(A, MODEL)
    assert await store.get_prediction(A, MODEL) is None


async def test_one_revoke_claim_wins(store: PredictionStore) -> None:
    claims = await asyncio.gather(*(store.claim_revocation("run-9", A, MODEL)
                                    for _ in range(20)))
    assert claims.count(True) == 1
    await store.release_revocation("run-9")
    assert await store.claim_revocation("run-9", A, MODEL)


async def test_reanalysis_pages_samples_lacking_a_current_result(store: PredictionStore) -> None:
    for sha in (C, A, B):
        await store.record_sample(sha, 1, "s")
    await store.save_results(A, MODEL, "r-a", "v2", {}, "")  # current
    await store.save_results(B, MODEL, "r-b", "v1", {}, "")  # older version
    await store.set_status(C, MODEL, "r-c", FAILURE, "v2", "bad")  # failed
    page = await store.samples_to_reanalyze("", MODEL, "v2", False, 10)
    assert [s.sha256 for s in page] == [B]
    page = await store.samples_to_reanalyze("", MODEL, "v2", True, 1)
    assert [s.sha256 for s in page] == [B]
    page = await store.samples_to_reanalyze(B, MODEL, "v2", True, 10)
    assert [s.sha256 for s in page] == [C]


async def test_references_get_or_create_relabel_and_activate(store: PredictionStore) -> None:
    added = await asyncio.gather(*(store.add_reference(A, "acme", "1.0", ["vendor:acme"], "f")
                                   for _ in range(6)))
    assert [created for _, created in added].count(True) == 1
    await store.add_reference(B, "zlib", "1.3", [], "g")
    assert [r.sha256 for r in await store.list_references("", 10)] == [A, B]
    assert [r.sha256 for r in await store.list_references(A, 10)] == [B]

    await store.begin_reference_run(A, "run-a", "acme", "1.0", ["vendor:acme"])
    assert await store.update_reference(ReferenceUpdate(A, "run-a", STARTED))
    assert await store.update_reference(ReferenceUpdate(
        A, "run-a", SUCCESS, vectors_sha256=C, functions=12, weights_sha256="w" * 64))
    assert not await store.update_reference(ReferenceUpdate(A, "run-old", FAILURE, "late"))
    assert [r.sha256 for r in await store.active_references("w" * 64)] == [A]
    assert await store.active_references("x" * 64) == []

    relabelled = await store.relabel_reference(A, family="acme-fork", tags=["t"])
    assert relabelled is not None and (relabelled.family, relabelled.tags) == ("acme-fork", ["t"])
    assert await store.relabel_reference(C, family="none") is None
    assert await store.remove_reference(A) and not await store.remove_reference(A)
    assert not await store.update_reference(ReferenceUpdate(A, "run-a", STARTED))
