"""Batch reanalysis handlers: start one by filter, watch it, retry its failures, cancel it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Path, Query
from temporalio.service import RPCError, RPCStatusCode

from api import pipeline
from api.handlers import State
from api.schemas import BatchFailureOut, BatchProgressOut, BatchQueued
from api.state import ApiState
from api.versions import current_analysis_version
from common.contracts import (
    BATCH_RUNNING,
    FAILURE,
    PENDING,
    REVOKED,
    SKIPPED,
    SUCCESS,
    BatchFilter,
)
from festive.card import MODEL_NAME
from store.db import utcnow
from store.models import Batch

FAILURES_LISTED = 100
WORD = r"^[A-Za-z0-9._+-]{1,64}$"
BatchId = Annotated[
    str,
    Path(title="Batch", pattern=r"^[0-9a-fA-F-]{32,36}$",
         description="the batch id Queue Reanalysis answered (its first run id)"),
]
Concurrency = Annotated[int, Query(ge=1, le=64, description="analyses at once")]


async def queue_reanalysis(
    state: State,
    include_failed: Annotated[bool, Query(description="stale: also retry samples that failed")]
    = False,
    concurrency: Concurrency = 4,
    selection: Annotated[
        Literal["stale", "all", "outdated", "outdated-model"],
        Query(description="stale: no result of the current analysis version (default); all; "
              "outdated: a result of another model or index version; outdated-model: of "
              "another model version"),
    ] = "stale",
    status: Annotated[
        list[Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]] | None,
        Query(description="only samples whose row has one of these statuses"),
    ] = None,
    submitted_after: Annotated[
        datetime | None, Query(description="first submitted at or after (ISO 8601; UTC if no "
                               "zone)")] = None,
    submitted_before: Annotated[datetime | None, Query(description="... and before")] = None,
    verdict: Annotated[str | None, Query(pattern=WORD, description="the result's verdict")]
    = None,
    family: Annotated[str | None, Query(pattern=WORD, description="a family present in the "
                                        "result")] = None,
    force: Annotated[bool, Query(description="also redo results of the current analysis "
                                 "version")] = False,
) -> BatchQueued:
    """Reanalyse the samples a filter chooses, as one durable batch (ReanalysisBatch)."""
    after, before = _utc(submitted_after), _utc(submitted_before)
    if after is not None and before is not None and after >= before:
        raise HTTPException(422, "submitted_after must be before submitted_before")
    batch_filter = BatchFilter(
        selection=selection, include_failed=include_failed, statuses=sorted(set(status or [])),
        submitted_after=after.isoformat() if after else "",
        submitted_before=before.isoformat() if before else "",
        verdict=verdict or "", family=family or "", force=force,
    )
    return await _start(state, batch_filter, concurrency)


async def batch_progress(state: State, batch_id: BatchId) -> BatchProgressOut:
    """done / failed / running / remaining, rate and time left, and the failures."""
    return await _progress(state, await _require_batch(state, batch_id))


async def retry_failed(state: State, batch_id: BatchId, concurrency: Concurrency = 4
                       ) -> BatchQueued:
    """A new batch of exactly the samples that failed in this one."""
    batch = await _require_batch(state, batch_id)
    if not (await state.store.batch_counts(batch.batch_id)).get(FAILURE):
        raise HTTPException(409, f"batch {batch.batch_id} has no failed samples")
    return await _start(state, BatchFilter(selection="all", retry_of=batch.batch_id), concurrency)


async def cancel_batch(state: State, batch_id: BatchId) -> BatchProgressOut:
    """Cancel the batch: the analyses it started are cancelled (REVOKED), none start."""
    batch = await _require_batch(state, batch_id)
    if batch.state != BATCH_RUNNING:
        raise HTTPException(409, f"batch {batch.batch_id} is not running ({batch.state})")
    client = await state.temporal()
    try:
        await pipeline.cancel_batch(client, batch.workflow_id, batch.batch_id)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(409, f"batch {batch.batch_id} is not running") from err
        raise
    return await _progress(state, batch)


# --- helpers --------------------------------------------------------------------------
async def _start(state: ApiState, batch_filter: BatchFilter, concurrency: int) -> BatchQueued:
    client = await state.temporal()
    batch_id, batch_workflow = await pipeline.start_batch(
        client, state.settings, MODEL_NAME, await current_analysis_version(state),
        batch_filter, concurrency,
    )
    return BatchQueued(id=batch_id, batch_id=batch_id, workflow_id=batch_workflow)


async def _require_batch(state: ApiState, batch_id: str) -> Batch:
    batch = await state.store.get_batch(batch_id.lower())
    if batch is None:
        raise HTTPException(404, f"no batch {batch_id.lower()} (a batch is recorded once its "
                                 "workflow has opened it)")
    return batch


async def _progress(state: ApiState, batch: Batch) -> BatchProgressOut:
    counts = await state.store.batch_counts(batch.batch_id)
    failures = await state.store.batch_failures(batch.batch_id, FAILURES_LISTED)
    listed = [BatchFailureOut(sha256=f.sha256, run_id=f.run_id, error_details=f.error_details)
              for f in failures]
    view: dict[str, Any] | None = None
    if batch.state == BATCH_RUNNING:
        view = await pipeline.query_batch(await state.temporal(), batch.workflow_id,
                                          batch.batch_id)
    if view is None:
        view = _database_view(batch, counts)
    fields = set(BatchProgressOut.model_fields)
    return BatchProgressOut(
        **{k: v for k, v in view.items() if k in fields},
        failures=listed, failures_total=counts.get(FAILURE, 0),
    )


def _database_view(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    """What the database knows: outcomes recorded so far (no worker needed)."""
    done, failed = counts.get(SUCCESS, 0), counts.get(FAILURE, 0)
    revoked, skipped = counts.get(REVOKED, 0), counts.get(SKIPPED, 0)
    ended = batch.closed_at or utcnow()
    elapsed_s = max(0.0, (ended - batch.created_at).total_seconds())
    analysed = done + failed + revoked
    rate = analysed / elapsed_s if elapsed_s else 0.0
    pending = counts.get(PENDING, 0)
    running_unknown = batch.state == BATCH_RUNNING
    return {
        "batch_id": batch.batch_id, "workflow_id": batch.workflow_id, "state": batch.state,
        "source": "database", "analysis_version": batch.model_version, "filter": batch.filter,
        "total": batch.total, "done": done, "failed": failed, "revoked": revoked,
        "skipped": skipped, "finished": done + failed + revoked + skipped,
        # PENDING members of a running batch are running or waiting: the database cannot tell
        "running": None if running_unknown else 0, "remaining": pending,
        "cached": batch.cached, "elapsed_s": round(elapsed_s, 1),
        "rate_per_min": round(rate * 60, 2),
        "eta_s": round(pending / rate, 1) if running_unknown and rate else None,
    }


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError as err:
        raise HTTPException(422, f"{moment.isoformat()} is out of range in UTC") from err
