"""The database side of references users add: the set an analysis searches, and the row
changes an AddReference run makes (orchestration queue: the only one with the database)."""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.deps import Deps
from activities.persist import _retryable
from common.contracts import ReferenceSetRef, ReferenceUpdate
from festive import served
from festive.card import index_version, model_card
from store.db import PredictionStore


class References:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @property
    def _store(self) -> PredictionStore:
        if self.deps.store is None:
            raise RuntimeError("reference activities need a database (orchestration worker)")
        return self.deps.store

    @activity.defn(name="reference_set")
    async def reference_set(self) -> ReferenceSetRef:
        """The active user references as a blob (JSON list) for the embed stage, which
        runs where there is no database, and the index version they make."""
        blobs = self.deps.blobs
        record = await asyncio.to_thread(served.read, blobs, self.deps.settings.gpu_queue)
        card = record or model_card()  # the model the GPU workers serve, else this copy's
        rows = await self._store.active_references(card["weights_sha256"])
        entries = [{"sha256": r.sha256, "family": r.family, "version": r.version,
                    "vectors_sha256": r.vectors_sha256} for r in rows]
        version = index_version(card["index_version"],
                                [(r.sha256, r.family, r.version) for r in rows])
        return ReferenceSetRef(await asyncio.to_thread(blobs.put_json, entries), version)

    @activity.defn(name="record_reference")
    async def record_reference(self, update: ReferenceUpdate) -> bool:
        return await _retryable(self._store.update_reference(update))
