"""Get Status of open runs: about one describe() per run per AE_STATUS_REFRESH_S in each
API process, and no request waiting longer than AE_STATUS_WAIT_S for one.

While a run is open its describe() view changes (an activity starts, retries, ends), so
Temporal is asked. Many clients polling the same runs would each cost a describe() on
the Temporal server, which shares its machine with the workers. So each API process
keeps the answer it made for a run, next to the database row it was made with, and asks
again once it is due: at a random point in the second half of AE_STATUS_REFRESH_S (1 s
by default; 0: always ask), so that views first asked together are not asked again
together. A request that finds a view due, for a run that is polled often, gets it at
once while the new describe() runs for the requests after it (see STALE_FACTOR); other
requests wait for the new view, but for AE_STATUS_WAIT_S at most (25 ms by default): a
describe() can take hundreds of milliseconds on a busy Temporal server. When it is not in
by then, or Temporal cannot be reached (the `unavailable` errors), the request gets the
view kept for the same row, however old (its `as_of` says when it was made), or, for a
run this process has not described yet, the view of the database row alone (`source`
"database": the status the workflow recorded, no stage or activities); a describe() on
its way goes on and is kept for the requests after it. A run with no row has nothing
else to answer: it waits for Temporal, and gets its error. The row changing (the
workflow records a new status, the sample is queued again) retires the entry at once.
Requests for a run whose describe() is on its way share that one instead of sending
their own; at most AE_STATUS_DESCRIBES (1 by default) are sent at once: a process that
starts (or a client that starts polling) with many open runs asks about each of them, and
that burst took the cores the requests are answered on (the Temporal server's share of
it most of all); requests beyond it get the row's view after AE_STATUS_WAIT_S. Bounded:
least recently used out first.

An ended run's view is kept without a time limit by api/finished.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from api import metrics
from api.finished import RowKey, row_state
from common.shared_calls import SharedCalls
from store.models import Prediction

log = logging.getLogger("api.running")

CAPACITY = 10_000
# A view that is due is answered at once, with a describe() started behind it, while it
# is younger than this many refreshes and its run was asked about within the last
# refresh (a run polled often). Otherwise the request waits for the new view (up to
# AE_STATUS_WAIT_S): a client that polls every few seconds gets a fresh one, not the view
# its previous poll started, whenever Temporal answers in time.
# At 2, with 100 runs polled at 500/s, describe() calls slowed by a busy Temporal server
# let views age past it and a second of requests waited (p99 651 ms; BENCHMARKS.md).
STALE_FACTOR = 5
# A view falls due a little before its refresh, by a random part of up to this much of
# it: views first asked together (a client polling many runs) are not asked again
# together.
JITTER = 0.5

# (Celery word, detailed status), or None when neither the database nor Temporal knows
# a run of this model for the sample.
View = tuple[str, dict[str, Any]] | None


@dataclass
class _Kept:
    row_key: RowKey
    view: View
    due_at: float
    stale_at: float
    asked_at: float  # the last request about this run


class RecentViews:
    def __init__(self, max_age_s: float, wait_s: float, concurrent: int,
                 unavailable: tuple[type[BaseException], ...] = (),
                 capacity: int = CAPACITY, clock: Callable[[], float] = time.monotonic,
                 jitter: float = JITTER) -> None:
        self.max_age_s = max_age_s
        self.wait_s = wait_s
        self.unavailable = unavailable  # describe()'s errors that mean "Temporal is away"
        self.capacity = capacity
        self.clock = clock
        self.jitter = jitter
        self.described = 0  # describe() calls made through here (the tests count them)
        self._entries: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._asking = SharedCalls()  # the describe() calls on their way
        self.concurrent = concurrent
        self._describing = asyncio.Semaphore(concurrent)  # ... of which sent to Temporal
        self.most_at_once = 0  # the most describe() calls sent at once (the tests read it)
        self._sent = 0

    async def view(self, sha256: str, model: str, row: Prediction | None,
                   describe: Callable[[], Awaitable[View]],
                   from_row: Callable[[], View]) -> View:
        """The view kept for this run and row while it is fresh; while it is due, for a
        run polled often, the same with a describe() started behind it (STALE_FACTOR);
        otherwise the answer of `describe()` (one at a time per run and row), kept, when
        it comes within `wait_s`; failing that, or when it fails with an `unavailable`
        error, the kept view, else `from_row()` (for a run with a row; without one there
        is nothing to answer but Temporal's view, or its error)."""
        key, row_key = (sha256, model), row_state(row)
        ask = partial(self._ask, key, row_key, describe)
        kept = self._entries.get(key)
        now = self.clock()
        if kept is not None and kept.row_key != row_key:
            kept = None
        if kept is not None:
            polled_often = now - kept.asked_at < self.max_age_s
            kept.asked_at = now
            if now < kept.due_at or (polled_often and now < kept.stale_at):
                self._entries.move_to_end(key)
                if now >= kept.due_at:  # due: answered now, refreshed for the next
                    self._asking.start((sha256, model, row_key), ask)
                metrics.STATUS_VIEWS.labels("kept").inc()
                return kept.view
        asking = self._asking.start((sha256, model, row_key), ask)
        if row is None:
            return await asyncio.shield(asking)
        done, _ = await asyncio.wait([asking], timeout=self.wait_s)
        if done:
            error = asking.exception()
            if error is None:
                metrics.STATUS_VIEWS.labels("described").inc()
                return asking.result()  # type: ignore[return-value]
            if not isinstance(error, self.unavailable):
                raise error
            log.warning("no view of %s from Temporal (%s): answering the %s", sha256[:12],
                        error, "view kept" if kept is not None else "database row")
        metrics.STATUS_VIEWS.labels("older" if kept is not None else "row").inc()
        return kept.view if kept is not None else from_row()

    async def _ask(self, key: tuple[str, str], row_key: RowKey,
                   describe: Callable[[], Awaitable[View]]) -> View:
        async with self._describing:
            asked_at = self.clock()
            self.described += 1
            self._sent += 1
            self.most_at_once = max(self.most_at_once, self._sent)
            try:
                answer = await describe()
            finally:
                self._sent -= 1
        if self.max_age_s > 0:
            self._keep(key, row_key, asked_at, answer)
        return answer

    def _keep(self, key: tuple[str, str], row_key: RowKey, asked_at: float, view: View
              ) -> None:
        old = self._entries.get(key)
        last_request = max(asked_at, old.asked_at) if old is not None else asked_at
        self._entries[key] = _Kept(
            row_key, view,
            due_at=asked_at + self.max_age_s * (1 - self.jitter * random.random()),
            stale_at=asked_at + self.max_age_s * STALE_FACTOR, asked_at=last_request)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
