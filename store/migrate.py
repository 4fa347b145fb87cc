"""The database schema, managed by Alembic (store/migrations), for SQLite and PostgreSQL.

Every process that opens the store (the API, the orchestration workers) brings the
schema up to the newest revision at start, one process at a time: a PostgreSQL advisory
lock (held until the migration's transaction ends) or, for a SQLite file, an exclusive
lock on `<file>.migrate-lock` beside it. A database made before Alembic (tables created
by create_all, no `alembic_version`) is adopted: the first migrations create only the
tables it lacks.

    python -m store.migrate            # upgrade DATABASE_URL's database to the newest
    python -m store.migrate --current  # print its revision
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key: any constant shared by every process of this project
PG_LOCK_KEY = 0x41450001


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS}")
    return head


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision` (the newest by default), one process at a time."""
    async with _sqlite_file_lock(engine):
        async with engine.connect() as conn:
            await conn.run_sync(_upgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def _upgrade(conn: Connection, revision: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    command.upgrade(alembic_config(conn), revision)
    conn.commit()


@contextlib.asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """For a SQLite file, an exclusive lock on `<file>.migrate-lock`, waited for in a
    thread (the event loop of a process holding it already goes on)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(f"{database}.migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _main(show_current: bool) -> None:
    from common.config import load_or_exit

    engine = create_async_engine(load_or_exit("migrate").database_url)
    try:
        if not show_current:
            await upgrade(engine)
        print(await current_revision(engine) or "none")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--current", action="store_true",
                        help="print the database's revision and change nothing")
    args = parser.parse_args()
    asyncio.run(_main(args.current))


if __name__ == "__main__":
    main()
