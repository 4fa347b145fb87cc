"""Get Status of finished runs without a Temporal round trip.

A run that has ended does not change in Temporal any more, so its describe() view (the
detailed_status fields) is kept here, per API process, next to the database row it was
made for. A request is answered from this memory while the row is the same one: the
same run id, status and last update. Anything that starts a new run or records another
outcome changes the row (begin_run, the workflow's record_status), so the entry no
longer matches and Temporal is asked again. Bounded: least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any

from common.contracts import FINAL_STATES
from store.models import Prediction

CAPACITY = 50_000


# What identifies the state of a row: its run, status and last update.
RowKey = tuple[str | None, str, datetime | None] | None


def row_state(row: Prediction | None) -> RowKey:
    """The row's state, as api/finished.py and api/running.py compare it."""
    return None if row is None else (row.celery_task_id, row.status, row.updated_at)


class FinishedRuns:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[Any, str, dict[str, Any]]] = (
            OrderedDict())

    def get(self, row: Prediction | None) -> tuple[str, dict[str, Any]] | None:
        """(Celery word, detailed status) kept for this row, if the row is unchanged."""
        if row is None or row.status not in FINAL_STATES:
            return None
        key = (row.sha256_hash, row.model)
        found = self._entries.get(key)
        if found is None or found[0] != row_state(row):
            return None
        self._entries.move_to_end(key)
        return found[1], found[2]

    def put(self, row: Prediction | None, run_id: str | None, running: bool, word: str,
            detail: dict[str, Any]) -> None:
        """Keep an answer made from Temporal when it is final: the row records an outcome
        of the very run Temporal described, and that run has ended."""
        if (row is None or running or row.status not in FINAL_STATES or run_id is None
                or run_id != row.celery_task_id):
            return
        self._entries[(row.sha256_hash, row.model)] = (row_state(row), word, detail)
        self._entries.move_to_end((row.sha256_hash, row.model))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
