"""The API process's similar-sample indexes: one festive.attribution.similar.SimilarIndex
per (model, weights), fed from the database table `sample_functions` (every machine
sees it; nothing is read from a worker's files) and never from torch.

Incremental: each search first loads the rows with an id above the newest held. On
PostgreSQL, ids are taken when a transaction inserts and become visible when it
commits, so a row can appear below the newest id already held: ids skipped over are
looked for again for `GAP_WINDOW_S` seconds. A sample whose row was deleted or replaced
since it was loaded is dropped when a search finds it (its ids are checked against the
table before answering).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from festive.attribution.similar import SampleFunctions, SimilarIndex, SimilarSample, decode
from store.db import PredictionStore

PAGE = 200  # rows loaded per query
GAP_WINDOW_S = 600.0  # how long an id skipped over is looked for again
MAX_GAPS = 10_000
SEARCH_ROUNDS = 4  # searches again after dropping rows found stale


@dataclass
class HeldIndex:
    index: SimilarIndex = field(default_factory=SimilarIndex)
    gaps: dict[int, float] = field(default_factory=dict)  # id -> when it was skipped over
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class SimilarIndexes:
    held: dict[tuple[str, str], HeldIndex] = field(default_factory=dict)

    async def search(
        self, store: PredictionStore, model: str, sha256: str, sample: SampleFunctions,
        query_rows: list[int], limit: int, min_similarity: float,
    ) -> tuple[list[SimilarSample], int]:
        """The samples sharing functions with `sample`'s `query_rows`, best first, and
        how many samples the index holds."""
        held = self.held.setdefault((model, sample.weights_sha256), HeldIndex())
        async with held.lock:  # one refresh or search of an index at a time
            await _refresh(held, store, model, sample.weights_sha256)
            for _ in range(SEARCH_ROUNDS):
                found = await asyncio.to_thread(
                    held.index.search, sha256, sample, np.asarray(query_rows, np.int64), limit,
                    min_similarity)
                current = await store.sample_function_ids(model, [s.sha256 for s in found])
                stale = [s for s in found if current.get(s.sha256) != s.row_id]
                if not stale:
                    break
                for s in stale:
                    held.index.forget(s.sha256)
                await _refresh(held, store, model, sample.weights_sha256)
            return found, sum(e.alive for e in held.index.entries)


def _decode_all(rows: list[tuple[int, str, bytes]]) -> list[tuple[int, str, SampleFunctions]]:
    return [(row_id, sha256, decode(data)) for row_id, sha256, data in rows]


async def _refresh(held: HeldIndex, store: PredictionStore, model: str, weights: str) -> None:
    """Load the rows newer than the newest held, and those skipped over lately."""
    now = time.monotonic()
    held.gaps = {i: t for i, t in held.gaps.items() if now - t < GAP_WINDOW_S}
    while True:
        newest = held.index.newest_id
        rows = await store.sample_functions_after(model, weights, newest, sorted(held.gaps),
                                                  PAGE)
        decoded = await asyncio.to_thread(_decode_all, rows)
        previous = newest
        for row_id, _sha, _sample in decoded:
            held.gaps.pop(row_id, None)
            if row_id > previous + 1 and len(held.gaps) < MAX_GAPS:
                for missing in range(previous + 1, min(row_id, previous + 1 + MAX_GAPS)):
                    held.gaps.setdefault(missing, now)
            previous = max(previous, row_id)
        held.index.add(decoded)
        if len(rows) < PAGE:
            return
