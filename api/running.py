"""Get Status of open runs: about one describe() per run per AE_STATUS_REFRESH_S in each
API process.

While a run is open its describe() view changes (an activity starts, retries, ends), so
Temporal is asked. Many clients polling the same runs would each cost a describe() on
the Temporal server, which shares its machine with the workers. So each API process
keeps the answer it made for a run, next to the database row it was made with, and asks
again once it is due: at a random point in the second half of AE_STATUS_REFRESH_S (1 s
by default; 0: always ask), so that views first asked together are not asked again
together. A request that finds a view due gets it at once while the new describe() runs
for the requests after it (a describe() can take hundreds of milliseconds on a busy
Temporal server; a view up to STALE_FACTOR refreshes old is answered that way, an older
one is waited for). The row changing (the workflow records a new status, the sample is
queued again) retires the entry at once. Requests for a run whose describe() is on its
way wait for that one instead of sending their own. Bounded: least recently used out
first.

An ended run's view is kept without a time limit by api/finished.py.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any

from common.shared_calls import SharedCalls
from store.models import Prediction

CAPACITY = 10_000
# A view past its refresh, but younger than this many refreshes, is answered at once while
# a describe() for the next request runs; an older one is waited for. The price: a client
# that polls every few seconds gets the view its previous poll started (a final status
# still comes through the row at once). At 2, with 100 runs polled at 500/s, describe()
# calls slowed by a busy Temporal server let views age past it and a second of requests
# waited (p99 651 ms in that second; BENCHMARKS.md).
STALE_FACTOR = 5
JITTER = 0.5

# (Celery word, detailed status), or None when neither the database nor Temporal knows
# a run of this model for the sample.
View = tuple[str, dict[str, Any]] | None
RowKey = tuple[str | None, str, datetime | None] | None


def _row_key(row: Prediction | None) -> RowKey:
    return None if row is None else (row.celery_task_id, row.status, row.updated_at)


class RecentViews:
    def __init__(self, max_age_s: float, capacity: int = CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.capacity = capacity
        self.clock = clock
        self.described = 0  # describe() calls made through here (the tests count them)
        # (row key, due at, too stale at, view)
        self._entries: OrderedDict[tuple[str, str], tuple[RowKey, float, float, View]] = (
            OrderedDict())
        self._asking = SharedCalls()  # the describe() calls on their way

    async def view(self, sha256: str, model: str, row: Prediction | None,
                   describe: Callable[[], Awaitable[View]]) -> View:
        """The view kept for this run and row while it is fresh; while it is due but not
        yet STALE_FACTOR refreshes old, the same, with a describe() started behind it;
        otherwise the answer of `describe()` (one at a time per run and row), kept."""
        key, row_key = (sha256, model), _row_key(row)
        ask = partial(self._ask, key, row_key, describe)
        found = self._entries.get(key)
        if found is not None and found[0] == row_key:
            kept_row, due_at, stale_at, view = found
            now = self.clock()
            if now < stale_at:
                self._entries.move_to_end(key)
                if now >= due_at:  # due: answered now, refreshed for the next
                    self._asking.start((sha256, model, row_key), ask)
                return view
        return await self._asking.call((sha256, model, row_key), ask)

    async def _ask(self, key: tuple[str, str], row_key: RowKey,
                   describe: Callable[[], Awaitable[View]]) -> View:
        asked_at = self.clock()
        self.described += 1
        answer = await describe()
        if self.max_age_s > 0:
            self._keep(key, row_key, asked_at, answer)
        return answer

    def _keep(self, key: tuple[str, str], row_key: RowKey, asked_at: float, view: View
              ) -> None:
        # Due a little before its refresh, by a random part of up to JITTER of it: views
        # first asked together (a client polling many runs) are not asked again together.
        due_at = asked_at + self.max_age_s * (1 - JITTER * random.random())
        stale_at = asked_at + self.max_age_s * STALE_FACTOR
        self._entries[key] = (row_key, due_at, stale_at, view)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
