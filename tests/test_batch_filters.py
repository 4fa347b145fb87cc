"""Which samples a batch filter chooses, on a real SQLite file (store/db.py open_batch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.contracts import FAILURE, BatchFilter, BatchOutcome
from store.db import PredictionStore

MODEL, CURRENT = "M", "1.0+idx.a"
SHAS = [f"{i:064x}" for i in range(6)]
# 0: current SUCCESS (zlib, lz4 present)   1: SUCCESS of an older model (lz4)
# 2: FAILURE of the current model, another index   3: SUCCESS of another index (zlib)
# 4, 5: never analysed


@pytest.fixture
async def store(tmp_path: Path) -> PredictionStore:
    db = PredictionStore(f"sqlite+aiosqlite:///{tmp_path}/filters.db")
    await db.init_schema()
    for sha in SHAS:
        await db.record_sample(sha, 1, f"name-{sha[-1]}")
    await _result(db, SHAS[0], CURRENT, {"verdict": "zlib", "families_present": "zlib lz4"})
    await _result(db, SHAS[1], "0.9+idx.a", {"verdict": "lz4", "families_present": "lz4"})
    await db.begin_run(SHAS[2], MODEL, "1.0+idx.b", "r2")
    await db.set_status(SHAS[2], MODEL, "r2", FAILURE, "1.0+idx.b", "unpack: bad")
    await _result(db, SHAS[3], "1.0+idx.b", {"verdict": "zlib", "families_present": "zlib"})
    return db


async def _result(db: PredictionStore, sha: str, version: str, results: dict[str, str]) -> None:
    await db.begin_run(sha, MODEL, version, f"run-{sha[-1]}")
    await db.save_results(sha, MODEL, f"run-{sha[-1]}", version, results, "text")


async def chosen(db: PredictionStore, batch_filter: BatchFilter, batch_id: str = "b"
                 ) -> tuple[set[int], int]:
    batch = await db.open_batch(batch_id, "wf", MODEL, CURRENT, batch_filter)
    rows = await db.batch_page(batch_id, MODEL, CURRENT, "", 100)
    assert len(rows) == batch.total
    return {int(sha, 16) for sha, _name, _current in rows}, batch.cached


@pytest.mark.parametrize(("batch_filter", "members", "cached"), [
    (BatchFilter(), {1, 3, 4, 5}, 0),
    (BatchFilter(include_failed=True), {1, 2, 3, 4, 5}, 0),
    (BatchFilter(selection="all"), {1, 2, 3, 4, 5}, 1),
    (BatchFilter(selection="all", force=True), {0, 1, 2, 3, 4, 5}, 0),
    (BatchFilter(selection="outdated"), {1, 2, 3}, 0),
    (BatchFilter(selection="outdated-model"), {1}, 0),
    (BatchFilter(selection="all", statuses=["FAILURE"]), {2}, 0),
    (BatchFilter(selection="all", verdict="zlib"), {3}, 1),
    (BatchFilter(selection="all", family="lz4"), {1}, 1),
    (BatchFilter(selection="all", family="lz", force=True), set(), 0),
    (BatchFilter(selection="all", submitted_before="2000-01-01T00:00:00"), set(), 0),
    (BatchFilter(selection="all", submitted_after="2000-01-01T00:00:00"), {1, 2, 3, 4, 5}, 1),
])
async def test_filters_choose(store: PredictionStore, batch_filter: BatchFilter,
                              members: set[int], cached: int) -> None:
    assert await chosen(store, batch_filter) == (members, cached)


async def test_retry_of_takes_exactly_the_failed_members(store: PredictionStore) -> None:
    members, _ = await chosen(store, BatchFilter(selection="all", force=True), "first")
    assert members == set(range(6))
    for sha in (SHAS[4], SHAS[5]):
        await store.record_batch_outcome(BatchOutcome("first", sha, FAILURE, "r", "boom"))
    await store.record_batch_outcome(BatchOutcome("first", SHAS[1], "SUCCESS", "r"))
    assert await chosen(store, BatchFilter(selection="all", retry_of="first"), "retry") \
        == ({4, 5}, 0)
    assert [f.sha256 for f in await store.batch_failures("first", 10)] == [SHAS[4], SHAS[5]]
    assert await store.batch_counts("first") == {"PENDING": 3, "FAILURE": 2, "SUCCESS": 1}


async def test_opening_again_changes_nothing(store: PredictionStore) -> None:
    first = await store.open_batch("same", "wf", MODEL, CURRENT, BatchFilter())
    await store.record_sample("f" * 64, 1, "late")
    again = await store.open_batch("same", "wf", MODEL, CURRENT, BatchFilter())
    assert again.total == first.total == 4
