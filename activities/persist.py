"""Persist stage, and the row changes the workflow makes when it starts, fails or is revoked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from sqlalchemy.exc import DBAPIError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import Deps
from common.contracts import STARTED, PersistRequest, StatusUpdate
from festive.attribution.similar import decode as decode_functions
from store.db import PredictionStore, StoredFunctions


async def _retryable[T](write: Awaitable[T]) -> T:
    """A database error as a short, retryable failure.

    SQLAlchemy's message carries the statement and its parameters (the whole results
    document), which made Temporal replace the failure with "Failure exceeds size limit".
    """
    try:
        return await write
    except DBAPIError as exc:
        raise ApplicationError(
            f"database error, will retry: {exc.orig}", type=type(exc.orig).__name__
        ) from None


class Persist:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @property
    def _store(self) -> PredictionStore:
        if self.deps.store is None:  # set by build_workers on the orchestration worker
            raise RuntimeError("persist activities need a database (orchestration worker)")
        return self.deps.store

    @activity.defn(name="persist_results")
    async def persist_results(self, request: PersistRequest) -> bool:
        blobs = self.deps.blobs  # S3 calls block: in a thread, off the event loop
        results = await asyncio.to_thread(blobs.read_json, request.results_sha256)
        explanation = (await asyncio.to_thread(blobs.read_bytes,
                                               request.explanation_sha256)).decode()
        functions = None
        if request.functions_sha256:  # runs from before the similar-sample index have none
            data = await asyncio.to_thread(blobs.read_bytes, request.functions_sha256)
            sample = decode_functions(data)
            functions = StoredFunctions(data, sample.weights_sha256, len(sample.functions))
        return await _retryable(self._store.save_results(
            request.sha256, request.model_name, request.run_id, request.model_version,
            results, explanation, functions,
        ))

    @activity.defn(name="record_status")
    async def record_status(self, update: StatusUpdate) -> bool:
        if update.status == STARTED:
            # A run claims the row when it starts, whoever started it (a submission, the
            # queue operation or a batch reanalysis); results of an older run are cleared.
            await _retryable(self._store.begin_run(
                update.sha256, update.model_name, update.model_version, update.run_id
            ))
        return await _retryable(self._store.set_status(
            update.sha256, update.model_name, update.run_id, update.status,
            update.model_version, update.error_details,
        ))
