"""Finding samples in the store, on SQLite and PostgreSQL: the per-family evidence table
follows each prediction's results (written with them, replaced, deleted with them, and
backfilled by migration 0005), List Samples' keyset pages return every row once while
rows arrive, its filters, the indexes its query uses, and the function-vector rows the
similar-sample index loads incrementally."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from api.similar import SimilarIndexes
from common.contracts import SUCCESS
from festive.attribution.similar import Function, SampleFunctions, decode, encode
from store import migrate
from store.db import PredictionStore, SampleFilter, StoredFunctions, list_samples_query
from store.models import FamilyEvidence, Sample
from store.models import SampleFunctions as SampleFunctionsRow

MODEL = "FESTIVE Func Sim"
VERSION = "1.2.0+idx.test"


def sha(i: int) -> str:
    return f"{i:064x}"


def results(verdict: str, families: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """prediction_results as the engine writes them (every leaf a string)."""
    return {
        "verdict": verdict, "confidence": "0.9100" if verdict != "unknown" else "0.0000",
        "analysis_version": VERSION,
        "families_present": " ".join(f for f, (s, _p) in families.items() if s == "present"),
        "families": {f: {"status": s, "probability": f"{p:.4f}", "score": "3.50",
                         "functions_matched": "4"} for f, (s, p) in families.items()},
    }


def functions(seed: int, n: int = 3) -> StoredFunctions:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample = SampleFunctions.of(vectors, [Function(sha(seed), hex(0x1000 + i), f"f{i}", 6)
                                          for i in range(n)], "w" * 64)
    return StoredFunctions(encode(sample), sample.weights_sha256, n)


async def evidence(store: PredictionStore, sha256: str) -> dict[str, tuple[str, float, int]]:
    return {e.family: (e.state, e.probability, e.functions_matched)
            for e in await store.family_evidence(sha256, MODEL)}


@pytest.fixture
async def store(database_url: str) -> Any:
    store = PredictionStore(database_url)
    await store.init_schema()
    yield store
    await store.close()


async def analysed(store: PredictionStore, sha256: str, run: str, found: dict[str, Any],
                   stored: StoredFunctions | None = None, filename: str = "f") -> None:
    await store.record_sample(sha256, 10, filename)
    await store.begin_run(sha256, MODEL, VERSION, run)
    assert await store.save_results(sha256, MODEL, run, VERSION, found, "# text", stored)


async def test_family_evidence_follows_the_results(store: PredictionStore) -> None:
    a = sha(1)
    await analysed(store, a, "run-1", results("zlib", {"zlib": ("present", 0.97),
                                                       "bzip2": ("weak", 0.2)}), functions(1))
    assert await evidence(store, a) == {"zlib": ("present", 0.97, 4), "bzip2": ("weak", 0.2, 4)}
    row = await store.get_prediction(a, MODEL)
    assert row is not None and (row.verdict, row.confidence) == ("zlib", 0.91)
    first = await store.sample_functions(a, MODEL)
    assert first is not None and first.functions == 3 and first.analysis_version == VERSION
    assert decode(first.vectors).functions[2].address == "0x1002"

    # a new run clears them with the results; its results replace them
    await store.begin_run(a, MODEL, VERSION, "run-2")
    assert await evidence(store, a) == {}
    assert await store.sample_functions(a, MODEL) is None
    row = await store.get_prediction(a, MODEL)
    assert row is not None and row.verdict is None
    assert await store.save_results(a, MODEL, "run-2", VERSION,
                                    results("xz", {"xz": ("present", 0.8)}), "", functions(2))
    assert await evidence(store, a) == {"xz": ("present", 0.8, 4)}
    second = await store.sample_functions(a, MODEL)
    assert second is not None and second.id > first.id

    # an operator's edit of the results (Update Predictions) is followed too; entries that
    # are not the engine's shape are left out
    edited = results("lz4", {"lz4": ("present", 0.7)})
    edited["families"]["bad"] = {"status": "present", "probability": "NaN", "score": "1"}
    edited["families"]["x" * 65] = {"status": "present", "probability": "0.9", "score": "1"}
    assert await store.update_fields(a, MODEL, prediction_results=edited)
    assert await evidence(store, a) == {"lz4": ("present", 0.7, 4)}

    assert await store.delete_prediction(a, MODEL)
    assert await evidence(store, a) == {}
    assert await store.sample_functions(a, MODEL) is None


async def test_migration_0005_backfills_stored_results(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        await migrate.upgrade(engine, "0004")
        async with engine.begin() as conn:
            now = datetime(2026, 1, 1)
            await conn.execute(text("INSERT INTO samples VALUES (:sha, 7, 'old', :t, :t, 1)"),
                               {"sha": sha(5), "t": now})
            await conn.execute(
                text("INSERT INTO predictions (sha256_hash, model, model_version, status, "
                     "prediction_results, created_at, updated_at) "
                     "VALUES (:sha, :model, :v, 'SUCCESS', :r, :t, :t)"),
                {"sha": sha(5), "model": MODEL, "v": VERSION, "t": now,
                 "r": json.dumps(results("zstd", {"zstd": ("present", 0.88),
                                                                "lz4": ("weak", 0.3)}))})
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    store = PredictionStore(database_url)
    try:
        assert await evidence(store, sha(5)) == {"zstd": ("present", 0.88, 4),
                                                 "lz4": ("weak", 0.3, 4)}
        row = await store.get_prediction(sha(5), MODEL)
        assert row is not None and (row.verdict, row.confidence) == ("zstd", 0.91)
        page = await store.list_samples(MODEL, SampleFilter(family="zstd"), None, 10)
        assert [s.sha256 for s, _p in page] == [sha(5)]
    finally:
        await store.close()


async def set_first_seen(store: PredictionStore, sha256: str, moment: datetime) -> None:
    async with store.session.begin() as session:
        await session.execute(update(Sample).where(Sample.sha256 == sha256)
                              .values(first_seen=moment))


async def test_pages_return_every_row_once_while_rows_arrive(store: PredictionStore) -> None:
    base = datetime(2026, 3, 1, 12, 0, 0)
    expected = []
    for i in range(8):  # pairs share a submission time: the sha256 orders them
        await store.record_sample(sha(100 + i), 1, f"page-{i}.bin")
        await set_first_seen(store, sha(100 + i), base + timedelta(seconds=i // 2))
        expected.append(sha(100 + i))
    seen: list[str] = []
    cursor = None
    arrived = 0
    while True:
        page = await store.list_samples(MODEL, SampleFilter(filename_like="page-%"), cursor, 3)
        seen += [s.sha256 for s, _p in page]
        if len(page) < 3:
            break
        last = page[-1][0]
        cursor = (last.first_seen, last.sha256)
        # a sample arrives between pages (a newer submission: after the cursor) and one
        # that is resubmitted (its order is its first submission: unchanged)
        arrived += 1
        await store.record_sample(sha(200 + arrived), 1, f"page-new-{arrived}.bin")
        await store.record_sample(expected[0], 1, "again")
    assert seen[:8] == expected
    # every row once: those there before in order, then every one that arrived
    assert sorted(seen[8:]) == [sha(200 + i) for i in range(1, arrived + 1)]
    assert len(seen) == len(set(seen)) and arrived >= 3


async def test_filters(store: PredictionStore) -> None:
    await analysed(store, sha(11), "r11", results("zlib", {"zlib": ("present", 0.9),
                                                           "xz": ("weak", 0.2)}),
                   filename="Tool-A.EXE")
    await analysed(store, sha(12), "r12", results("unknown", {"xz": ("weak", 0.3)}),
                   filename="tool_b.so")
    await store.record_sample(sha(13), 1, "pending.bin")
    await store.create_prediction(sha(13), MODEL)
    await set_first_seen(store, sha(13), datetime(2030, 1, 1))

    async def found(**kw: Any) -> list[str]:
        return [s.sha256 for s, _p in await store.list_samples(MODEL, SampleFilter(**kw),
                                                               None, 50)]

    assert await found(family="zlib") == [sha(11)]
    assert await found(family="xz") == []  # weak only: not present
    assert await found(family="xz", family_state="weak") == [sha(11), sha(12)]
    assert await found(verdict="unknown") == [sha(12)]
    assert await found(status=SUCCESS) == [sha(11), sha(12)]
    assert await found(status="PENDING") == [sha(13)]
    assert await found(analysis_version=VERSION) == [sha(11), sha(12)]
    assert await found(submitted_after=datetime(2029, 1, 1)) == [sha(13)]
    assert await found(submitted_before=datetime(2029, 1, 1)) == [sha(11), sha(12)]
    assert await found(filename_like="%tool%") == [sha(11), sha(12)]  # lower-cased name
    assert await found(filename_like="tool\\_b%") == [sha(12)]  # _ escaped: literal
    assert await found(filename_like="tool_a.exe") == [sha(11)]  # _ unescaped: any char


async def test_list_query_uses_indexes(store: PredictionStore) -> None:
    dialect = store.engine.dialect
    cases = {
        "family": (SampleFilter(family="zlib"), "ix_family_evidence_family"),
        "order": (SampleFilter(), "ix_samples_first_seen"),
    }
    async with store.engine.connect() as conn:
        if dialect.name == "postgresql":  # tiny tables: make the planner show its index
            await conn.execute(text("SET enable_seqscan = off"))
        for _name, (f, index) in cases.items():
            query = list_samples_query(MODEL, f, (datetime(2026, 1, 1), sha(1)), 50)
            compiled = query.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            prefix = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
            plan = "\n".join(str(r[-1]) for r in await conn.execute(text(prefix + str(compiled))))
            assert index in plan, plan


async def test_function_rows_load_by_growing_id(store: PredictionStore) -> None:
    for i in (21, 22, 23):
        await analysed(store, sha(i), f"r{i}", results("unknown", {}), functions(i))
    weights = "w" * 64
    rows = await store.sample_functions_after(MODEL, weights, 0, [], 2)
    assert [s for _i, s, _d in rows] == [sha(21), sha(22)]
    rest = await store.sample_functions_after(MODEL, weights, rows[-1][0], [], 2)
    assert [s for _i, s, _d in rest] == [sha(23)]
    newest = rest[-1][0]
    # the newest row deleted and a sample analysed again: its new id is still larger
    assert await store.delete_prediction(sha(23), MODEL)
    await analysed(store, sha(23), "r23b", results("unknown", {}), functions(23))
    again = await store.sample_functions_after(MODEL, weights, newest, [rows[0][0]], 10)
    assert [s for _i, s, _d in again] == [sha(21), sha(23)] and again[-1][0] > newest
    assert await store.sample_functions_after(MODEL, "v" * 64, 0, [], 10) == []
    ids = await store.sample_function_ids(MODEL, [sha(21), sha(23), sha(99)])
    assert ids == {sha(21): rows[0][0], sha(23): again[-1][0]}
    async with store.session() as session:
        assert len(list(await session.scalars(select(SampleFunctionsRow)))) == 3
        assert len(list(await session.scalars(select(FamilyEvidence)))) == 0


def twin_functions(base_seed: int, noise_seed: int, noise: float) -> StoredFunctions:
    """Functions close to those of `functions(base_seed)` (a rebuild of one source)."""
    base = decode(functions(base_seed).vectors)
    rng = np.random.default_rng(noise_seed)
    vectors = base.vectors.rows(0, 3) + noise * rng.standard_normal((3, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample = SampleFunctions.of(vectors, [Function(sha(noise_seed), hex(0x2000 + i), f"g{i}", 6)
                                          for i in range(3)], "w" * 64)
    return StoredFunctions(encode(sample), sample.weights_sha256, 3)


async def test_similar_index_loads_late_rows_and_drops_gone_ones(
    store: PredictionStore,
) -> None:
    indexes = SimilarIndexes()
    a, b, c = sha(31), sha(32), sha(33)
    await analysed(store, a, "ra", results("unknown", {}), functions(31))
    await analysed(store, b, "rb", results("unknown", {}), twin_functions(31, 32, 0.05))
    await analysed(store, c, "rc", results("unknown", {}), functions(33))
    # b's row as if its transaction committed after c's: absent at the first search
    async with store.session.begin() as session:
        late = await session.scalar(
            select(SampleFunctionsRow).where(SampleFunctionsRow.sha256 == b))
        assert late is not None
        values = {k: getattr(late, k) for k in ("id", "sha256", "model", "analysis_version",
                                                 "weights_sha256", "functions", "vectors",
                                                 "created_at")}
        await session.delete(late)
    query = decode(functions(31).vectors)

    async def similar(min_similarity: float = 0.8) -> list[str]:
        found, _held = await indexes.search(store, MODEL, a, query, [0, 1, 2], 10,
                                            min_similarity)
        return [s.sha256 for s in found]

    assert await similar(-1.0) == [c]
    async with store.session.begin() as session:
        session.add(SampleFunctionsRow(**values))
    assert await similar() == [b]  # the id skipped over is looked for again
    found, held = await indexes.search(store, MODEL, a, query, [1], 10, 0.8)
    assert held == 3 and [(p.function.name, p.other.name) for p in found[0].shared] \
        == [("f1", "g1")]

    # b analysed again into other code: its new row replaces the one held
    await store.begin_run(b, MODEL, VERSION, "rb2")
    assert await store.save_results(b, MODEL, "rb2", VERSION, results("unknown", {}),
                                    "", functions(34))
    assert await similar() == []
    # a prediction deleted: its sample is no longer answered
    await analysed(store, c, "rc2", results("unknown", {}), twin_functions(31, 33, 0.05))
    assert await similar() == [c]
    assert await store.delete_prediction(c, MODEL)
    assert await similar() == []
