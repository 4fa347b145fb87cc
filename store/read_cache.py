"""Rows the API reads on every poll (Get Status, Get Results), kept in the API process
while SQLite says that nothing has been committed since they were read, and read again on
a connection of the event loop's own.

SQLite's `PRAGMA data_version` changes, for one connection, whenever another connection
of any process commits. A connection of our own that never writes asks it before each of
these reads: a few microseconds, no thread hop. While the value is unchanged, the rows
read under it are answered again. One primary-key read through SQLAlchemy's asyncio
session and aiosqlite costs ~1.1 ms of CPU on the 2-core benchmark machine (five hops to
aiosqlite's thread and back), the check ~5 µs (BENCHMARKS.md).

A commit retires every kept row, and the polled rows are then read again all at once: a
hundred open runs polled by clients cost a hundred reads in each API process at every
commit (each analysis commits at its start and end). So a row that is not kept is read
on the event loop, through a plain sqlite3 connection (read-only, `timeout=0`, WAL: it
neither writes nor waits for a lock) and SQLAlchemy's synchronous session: ~0.25 ms of
CPU. When that connection cannot read at once (the database locked, an error), the read
goes to aiosqlite as before, and requests that miss together share that one.

The value is asked before the read, so a row is never kept under a newer value than the
one it was read at. A failed check (the database busy, the file gone) is a miss, and the
read goes to the database as before. The rows handed out are shared: readers must not
change them. Bounded by an estimate of their bytes, least recently used out first.

PostgreSQL has no such counter; there every read goes to the server.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from common.shared_calls import SharedCalls

T = TypeVar("T")

BUDGET_BYTES = 64 * 1024 * 1024


class CommitWatch:
    def __init__(self, path: str, budget_bytes: int = BUDGET_BYTES) -> None:
        self.path = path
        self.budget_bytes = budget_bytes
        self.hits = 0
        self.read_now = 0  # reads made on the event loop's connection (the tests count them)
        self._conn: sqlite3.Connection | None = None
        self._rows: OrderedDict[Hashable, tuple[int, object, int]] = OrderedDict()
        self._bytes = 0
        self._reading = SharedCalls()
        self._engine = create_engine(
            f"sqlite:///{path}", poolclass=StaticPool,
            connect_args={"timeout": 0, "check_same_thread": False},
        )
        event.listen(self._engine, "connect", _read_only)

    def version(self) -> int | None:
        """SQLite's data_version for our connection; None when it cannot be had."""
        try:
            if self._conn is None:
                # autocommit: the PRAGMA opens no transaction that would pin a snapshot;
                # timeout 0: a locked database is a miss at once, never a wait on the
                # event loop
                self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                             check_same_thread=False)
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None

    async def read(self, key: Hashable, load: Callable[[], Awaitable[T]],
                   size: Callable[[T], int], now: Callable[[Session], T] | None = None) -> T:
        """`load()`'s answer, or the one kept for `key` if nothing was committed since.
        `now`, when given, is the same read on a synchronous session: tried first, on the
        event loop's own connection, before `load()`."""
        version = self.version()
        if version is None:
            return await load()
        found = self._rows.get(key)
        if found is not None and found[0] == version:
            self._rows.move_to_end(key)
            self.hits += 1
            return found[1]  # type: ignore[return-value]
        if now is not None:
            try:
                with Session(self._engine) as session:
                    value = now(session)
            except DBAPIError:
                pass  # locked, or anything else: aiosqlite's read says what it is
            else:
                self.read_now += 1
                self._keep(key, version, value, size(value))
                return value
        # Requests that miss together (a commit has just retired what was kept) share one
        # read: a stampede of reads would queue on the connection pool.
        return await self._reading.call((key, version), partial(self._load, key, version,
                                                                load, size))

    async def _load(self, key: Hashable, version: int, load: Callable[[], Awaitable[T]],
                    size: Callable[[T], int]) -> T:
        value = await load()
        self._keep(key, version, value, size(value))
        return value

    def _keep(self, key: Hashable, version: int, value: object, nbytes: int) -> None:
        old = self._rows.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
        if nbytes > self.budget_bytes // 16:
            return  # one large row would push out many small ones
        self._rows[key] = (version, value, nbytes)
        self._bytes += nbytes
        while self._bytes > self.budget_bytes:
            _, (_, _, dropped) = self._rows.popitem(last=False)
            self._bytes -= dropped

    def close(self) -> None:
        self._engine.dispose()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._rows.clear()
        self._bytes = 0


def _read_only(dbapi_conn: Any, _record: Any) -> None:
    """The event loop's connection reads only: a write through it would be a bug."""
    dbapi_conn.execute("PRAGMA query_only=1")
