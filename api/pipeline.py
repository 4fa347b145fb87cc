"""The API's side of Temporal: start, describe and cancel AnalyzeSample runs.

Status is built from describe() and the Stage search attribute, which answer with no
worker running; the database row is the source of truth once a run has ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from common import search_attributes
from common.config import Settings
from common.contracts import (
    FAILURE,
    FINAL_STATES,
    PENDING,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    AnalyzeRequest,
    BatchFilter,
    BatchRequest,
    ReferenceRequest,
    batch_workflow_id,
    reference_workflow_id,
    workflow_id,
)
from store.models import Prediction

RPC_TIMEOUT = timedelta(seconds=10)

_CLOSED_TO_CELERY = {
    WorkflowExecutionStatus.COMPLETED: SUCCESS,
    WorkflowExecutionStatus.FAILED: FAILURE,
    WorkflowExecutionStatus.TIMED_OUT: FAILURE,
    WorkflowExecutionStatus.TERMINATED: FAILURE,
    WorkflowExecutionStatus.CANCELED: REVOKED,
}


@dataclass
class RunInfo:
    run_id: str
    running: bool
    description: WorkflowExecutionDescription


async def start_analysis(
    client: Client, settings: Settings, sha256: str, model_name: str, model_version: str,
    filename: str,
) -> str:
    """Start a run, or join the one already running for this id; returns its run id."""
    request = AnalyzeRequest(
        sha256=sha256, model_name=model_name, model_version=model_version,
        cpu_queue=settings.cpu_queue, gpu_queue=settings.gpu_queue, filename=filename,
    )
    handle = await client.start_workflow(
        "AnalyzeSample", request,
        id=workflow_id(model_name, sha256),
        task_queue=settings.orchestration_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=search_attributes.for_new_analysis(sha256, model_name),
        static_summary=f"{model_name} on {filename or sha256[:12]}",
        rpc_timeout=RPC_TIMEOUT,
    )
    if handle.result_run_id is None:  # the SDK sets it on every started (or joined) run
        raise RuntimeError(f"Temporal gave no run id for the analysis of {sha256}")
    return handle.result_run_id


async def start_batch(
    client: Client, settings: Settings, model_name: str, model_version: str,
    batch_filter: BatchFilter, concurrency: int,
) -> tuple[str, str]:
    """Start a ReanalysisBatch, or join the one running for this (model, version, filter).
    Returns (batch id, workflow id); the batch id is the first run id of its chain."""
    request = BatchRequest(
        model_name=model_name, model_version=model_version, cpu_queue=settings.cpu_queue,
        gpu_queue=settings.gpu_queue, filter=batch_filter, concurrency=concurrency,
        children_per_run=settings.batch_children_per_run,
    )
    batch_workflow = batch_workflow_id(model_name, model_version, batch_filter)
    handle = await client.start_workflow(
        "ReanalysisBatch", request, id=batch_workflow,
        task_queue=settings.orchestration_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"reanalyse with {model_name} {model_version}: {batch_filter.selection}",
        rpc_timeout=RPC_TIMEOUT,
    )
    if handle.result_run_id is None:
        raise RuntimeError(f"Temporal gave no run id for {batch_workflow}")
    # A batch joined after it continued as new answers its current run: its id is the first.
    description = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    first = description.raw_description.workflow_execution_info.first_run_id
    return first or handle.result_run_id, batch_workflow


async def query_batch(client: Client, batch_workflow: str, batch_id: str) -> dict[str, Any] | None:
    """The running batch's own view (its `progress` query), or None when no worker answers
    in time or the id now belongs to another batch."""
    handle = client.get_workflow_handle(batch_workflow)
    try:
        view = await handle.query("progress", rpc_timeout=timedelta(seconds=5))
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None
    if not isinstance(view, dict) or view.get("batch_id") != batch_id:
        return None
    return {**view, "source": "workflow"}


async def cancel_batch(client: Client, batch_workflow: str, batch_id: str) -> None:
    handle = client.get_workflow_handle(batch_workflow, first_execution_run_id=batch_id)
    await handle.cancel(rpc_timeout=RPC_TIMEOUT)


async def start_reference(
    client: Client, settings: Settings, sha256: str, filename: str
) -> str:
    """Start AddReference for a sample, or join the run already going; returns its run id.
    Whether it needs to run at all (done already) is the database's call."""
    handle = await client.start_workflow(
        "AddReference", ReferenceRequest(sha256, settings.cpu_queue, settings.gpu_queue, filename),
        id=reference_workflow_id(sha256), task_queue=settings.orchestration_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"add reference {filename or sha256[:12]}",
        rpc_timeout=RPC_TIMEOUT,
    )
    if handle.result_run_id is None:
        raise RuntimeError(f"Temporal gave no run id for {reference_workflow_id(sha256)}")
    return handle.result_run_id


async def describe_run(client: Client, model_name: str, sha256: str) -> RunInfo | None:
    """The latest run for (model, sample), or None when Temporal has none (or forgot it)."""
    handle = client.get_workflow_handle(workflow_id(model_name, sha256))
    try:
        description = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return RunInfo(
        run_id=description.run_id,
        running=description.status == WorkflowExecutionStatus.RUNNING,
        description=description,
    )


async def cancel_run(client: Client, model_name: str, sha256: str, run_id: str) -> None:
    """Revoke = cancellation, never termination: the workflow records REVOKED itself."""
    handle = client.get_workflow_handle(workflow_id(model_name, sha256), run_id=run_id)
    await handle.cancel(rpc_timeout=RPC_TIMEOUT)


def celery_status(row: Prediction | None, run: RunInfo | None) -> str:
    """Celery's word: Temporal's view while a run is open, the row's once it has ended."""
    if run is None or not run.running:
        if row is not None and row.status in FINAL_STATES:
            return row.status
        if run is None:
            return row.status if row is not None else PENDING
        return _CLOSED_TO_CELERY.get(run.description.status, FAILURE)  # type: ignore[arg-type]
    pending = run.description.raw_description.pending_activities
    if any(_waiting_for_retry(a) for a in pending):
        return RETRY
    stage = run.description.typed_search_attributes.get(search_attributes.STAGE)
    if stage in (None, "queued") and not pending:
        return PENDING
    return STARTED


def detailed_status(row: Prediction | None) -> dict[str, Any]:
    """The detailed status the database row alone tells (`source` "database"): the run
    Temporal no longer knows, or one it did not describe in time (api/running.py)."""
    return {
        "workflow_id": None, "run_id": row.celery_task_id if row else None,
        "execution_status": None, "stage": None, "attempt": None, "last_failure": None,
        "started_at": None, "closed_at": None, "elapsed_s": None, "stages_ms": None,
        "task_queue": None, "history_length": None,
        "pending_activities": [],
        "model_version": row.model_version if row else None,
        "error_details": row.error_details if row else None,
        "source": "database",
        # the row's last change (stored as naive UTC)
        "as_of": row.updated_at.replace(tzinfo=UTC).isoformat()
        if row and row.updated_at else None,
    }


async def described_status(row: Prediction | None, run: RunInfo | None) -> dict[str, Any]:
    """The detailed status from Temporal's describe() of the run (`source` "temporal",
    `as_of` now, or when it ended: the view of an ended run no longer changes), over the
    row's."""
    detail = detailed_status(row)
    if run is None:
        return detail
    desc = run.description
    raw = desc.raw_description
    activities = [_activity_view(a) for a in raw.pending_activities]
    end = desc.close_time or datetime.now(UTC)
    detail.update(
        workflow_id=desc.id,
        run_id=desc.run_id,
        execution_status=desc.status.name if desc.status else None,
        stage=desc.typed_search_attributes.get(search_attributes.STAGE),
        attempt=max((a["attempt"] for a in activities), default=None),
        last_failure=next((a["last_failure"] for a in activities if a["last_failure"]), None),
        started_at=desc.start_time.isoformat() if desc.start_time else None,
        closed_at=desc.close_time.isoformat() if desc.close_time else None,
        elapsed_s=round((end - desc.start_time).total_seconds(), 3) if desc.start_time else None,
        stages_ms=await desc.memo_value("stages_ms", None),
        task_queue=desc.task_queue,
        history_length=desc.history_length,
        pending_activities=activities,
        source="temporal",
        as_of=end.isoformat(),
    )
    return detail


def _waiting_for_retry(activity: Any) -> bool:
    scheduled = PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
    return activity.attempt > 1 and activity.state == scheduled


def _activity_view(activity: Any) -> dict[str, Any]:
    progress = None
    if activity.heartbeat_details.payloads:
        data = activity.heartbeat_details.payloads[-1].data
        progress = data.decode(errors="replace").strip('"')
    return {
        "activity": activity.activity_type.name,
        "state": PendingActivityState.Name(activity.state).removeprefix("PENDING_ACTIVITY_STATE_"),
        "attempt": activity.attempt,
        "maximum_attempts": activity.maximum_attempts,
        "progress": progress,
        "last_heartbeat": activity.last_heartbeat_time.ToDatetime(UTC).isoformat()
        if activity.HasField("last_heartbeat_time") else None,
        "last_failure": activity.last_failure.message or None,
        "next_attempt_at": activity.next_attempt_schedule_time.ToDatetime(UTC).isoformat()
        if activity.HasField("next_attempt_schedule_time") else None,
    }
