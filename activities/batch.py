"""The database and Temporal I/O of a batch reanalysis (workflows/batch.py): open the
batch (its members chosen by filter, inside the database), read them a page at a time,
record each member's outcome, close it; and wait for an analysis run the batch cannot
await as its own child (one a submission started, or one started before the batch
continued as new)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from activities.deps import Deps
from activities.persist import _retryable
from common.contracts import (
    FAILURE,
    REVOKED,
    SUCCESS,
    AnalysisOutcome,
    AwaitAnalysis,
    BatchClose,
    BatchOpen,
    BatchOpened,
    BatchOutcome,
    BatchPage,
    BatchPageRequest,
    BatchSample,
)
from common.failures import innermost_message
from store.db import PredictionStore

HEARTBEAT_S = 10.0


class BatchActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @property
    def _store(self) -> PredictionStore:
        if self.deps.store is None:
            raise RuntimeError("batch activities need the database (orchestration worker)")
        return self.deps.store

    @activity.defn(name="open_batch")
    async def open_batch(self, request: BatchOpen) -> BatchOpened:
        batch = await _retryable(self._store.open_batch(
            request.batch_id, request.workflow_id, request.model_name, request.model_version,
            request.filter,
        ))
        activity.logger.info("batch %s opened: %d samples, %d already current",
                             request.batch_id, batch.total, batch.cached)
        return BatchOpened(total=batch.total, cached=batch.cached)

    @activity.defn(name="batch_page")
    async def batch_page(self, request: BatchPageRequest) -> BatchPage:
        rows = await _retryable(self._store.batch_page(
            request.batch_id, request.model_name, request.model_version,
            request.after_sha256, request.limit,
        ))
        return BatchPage([BatchSample(sha, name, current) for sha, name, current in rows])

    @activity.defn(name="record_batch_outcome")
    async def record_batch_outcome(self, outcome: BatchOutcome) -> bool:
        return await _retryable(self._store.record_batch_outcome(outcome))

    @activity.defn(name="close_batch")
    async def close_batch(self, request: BatchClose) -> None:
        await _retryable(self._store.close_batch(request.batch_id, request.state))

    @activity.defn(name="await_analysis")
    async def await_analysis(self, request: AwaitAnalysis) -> AnalysisOutcome:
        """The outcome of an AnalyzeSample run, once it ends (heartbeating meanwhile)."""
        if self.deps.client is None:
            raise RuntimeError("await_analysis needs a Temporal client")
        handle = self.deps.client.get_workflow_handle(
            request.workflow_id, run_id=request.run_id or None
        )
        run_id = request.run_id
        if not run_id:
            try:
                run_id = (await handle.describe()).run_id
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    raise ApplicationError(f"no run of {request.workflow_id}",
                                           type="NoSuchRun", non_retryable=True) from err
                raise
            handle = self.deps.client.get_workflow_handle(request.workflow_id, run_id=run_id)
        beat = asyncio.create_task(_heartbeat(run_id))
        try:
            summary: Any = await handle.result(follow_runs=False)
        except WorkflowFailureError as err:
            if isinstance(err.cause, CancelledError):
                return AnalysisOutcome(REVOKED, run_id, "revoked")
            return AnalysisOutcome(FAILURE, run_id, innermost_message(err))
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        reused = int(summary.get("lifts_reused", 0)) if isinstance(summary, dict) else 0
        children = int(summary.get("children", 0)) if isinstance(summary, dict) else 0
        return AnalysisOutcome(SUCCESS, run_id, None, max(0, children - reused), reused)


async def _heartbeat(detail: str) -> None:
    while True:
        activity.heartbeat(detail)
        await asyncio.sleep(HEARTBEAT_S)
