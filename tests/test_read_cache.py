"""The API's polled reads are kept while SQLite's data_version says nothing was committed
(store/read_cache.py): a repeated read is answered from memory, and a commit from this
store, another store or another process is seen by the very next read, made on the event
loop's own read-only connection when it can be, else through aiosqlite. Real SQLite
files."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from common.contracts import MODEL_NAME, STARTED
from store.db import PredictionStore
from store.read_cache import CommitWatch

SHA = "ab" * 32


async def _store(path: Path, read_cache: bool = True) -> PredictionStore:
    store = PredictionStore(f"sqlite+aiosqlite:///{path}", read_cache=read_cache)
    await store.init_schema()
    return store


async def test_repeated_reads_are_kept_until_any_commit(tmp_path: Path) -> None:
    db = tmp_path / "ae.db"
    store, other = await _store(db), await _store(db, read_cache=False)
    try:
        await store.record_sample(SHA, 10, "s")
        await store.begin_run(SHA, MODEL_NAME, "v1", "run-1")
        first = await store.get_prediction(SHA, MODEL_NAME)
        assert first is not None and first.status == "PENDING"
        assert await store.get_prediction(SHA, MODEL_NAME) is first  # kept
        states = await store.list_prediction_states(SHA)
        assert await store.list_prediction_states(SHA) is states
        sample = await store.get_sample(SHA)
        assert sample is not None and await store.get_sample(SHA) is sample
        assert store.commits is not None and store.commits.hits == 3
        assert store.commits.read_now == 3  # each first read, on the loop's connection

        # A commit through another engine (as another API process or a worker would).
        assert await other.set_status(SHA, MODEL_NAME, "run-1", STARTED, "v1")
        seen = await store.get_prediction(SHA, MODEL_NAME)
        assert seen is not None and seen is not first and seen.status == STARTED
        assert [r.status for r in await store.list_prediction_states(SHA)] == [STARTED]

        # A commit of another process, outside SQLAlchemy altogether.
        subprocess.run([sys.executable, "-c", (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute(\"update predictions set status = 'FAILURE'\"); c.commit()"), str(db)],
            check=True)
        failed = await store.get_prediction(SHA, MODEL_NAME)
        assert failed is not None and failed.status == "FAILURE"

        # A commit of this very store.
        assert await store.delete_prediction(SHA, MODEL_NAME)
        assert await store.get_prediction(SHA, MODEL_NAME) is None
        assert await store.list_prediction_states(SHA) == []
    finally:
        await store.close()
        await other.close()


async def test_only_sqlite_files_are_watched(tmp_path: Path) -> None:
    postgres = PredictionStore("postgresql+asyncpg://u:p@127.0.0.1:9/none", read_cache=True)
    memory = PredictionStore("sqlite+aiosqlite:///:memory:", read_cache=True)
    plain = await _store(tmp_path / "plain.db", read_cache=False)
    try:
        assert postgres.commits is None and memory.commits is None and plain.commits is None
    finally:
        for store in (postgres, memory, plain):
            await store.close()


async def test_the_budget_bounds_what_is_kept(tmp_path: Path) -> None:
    store = await _store(tmp_path / "ae.db")
    watch = CommitWatch(str(tmp_path / "ae.db"), budget_bytes=16_000)

    async def load(value: str) -> str:
        return value

    try:
        for i in range(40):
            await watch.read(("k", i), lambda i=i: load(f"v{i}"), lambda _: 900)
        assert watch._bytes <= 16_000 and len(watch._rows) == 16_000 // 900
        # the newest are kept, the oldest went first
        assert await watch.read(("k", 39), lambda: load("fresh"), lambda _: 900) == "v39"
        assert await watch.read(("k", 0), lambda: load("fresh"), lambda _: 900) == "fresh"
        # one row over a sixteenth of the budget is never kept
        await watch.read("big", lambda: load("big"), lambda _: 2_000)
        assert "big" not in watch._rows
    finally:
        watch.close()
        await store.close()


async def test_reads_that_miss_together_share_one(tmp_path: Path) -> None:
    watch = CommitWatch(str(tmp_path / "ae.db"))
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return f"row {calls}"

    try:
        answers = await asyncio.gather(*(watch.read("k", load, len) for _ in range(20)))
        assert answers == ["row 1"] * 20 and calls == 1

        # A request that goes away does not take the answer from the others.
        first = asyncio.create_task(watch.read("j", load, len))
        second = asyncio.create_task(watch.read("j", load, len))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == "row 2" and calls == 2
        assert await watch.read("j", load, len) == "row 2"  # kept
    finally:
        watch.close()


async def test_the_loop_connection_only_reads_and_gives_way_to_aiosqlite(tmp_path: Path
                                                                        ) -> None:
    store = await _store(tmp_path / "ae.db")
    watch = CommitWatch(str(tmp_path / "ae.db"))
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        return "through aiosqlite"

    def write(session: Session) -> str:
        session.execute(text("update predictions set status = 'FAILURE'"))
        return "written"

    def count(session: Session) -> str:
        return f"{session.scalar(text('select count(*) from predictions'))} rows"

    try:
        await store.record_sample(SHA, 10, "s")
        await store.begin_run(SHA, MODEL_NAME, "v1", "run-1")
        assert await watch.read("n", load, len, now=count) == "1 rows"
        assert loads == 0 and watch.read_now == 1
        # A write on the loop's connection fails (query_only); aiosqlite's read answers.
        assert await watch.read("w", load, len, now=write) == "through aiosqlite"
        assert loads == 1 and watch.read_now == 1
        row = await store.get_prediction(SHA, MODEL_NAME)
        assert row is not None and row.status == "PENDING"
        # So does a read the loop's connection cannot make (here: no such table).
        missing = await watch.read(
            "m", load, len, now=lambda s: str(s.scalar(text("select 1 from nowhere"))))
        assert missing == "through aiosqlite" and loads == 2
    finally:
        watch.close()
        await store.close()
