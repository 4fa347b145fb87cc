"""AnalyzeSample: one durable run per (model, sample), five stages read top to bottom.

unpack -> lift -> embed/compare -> explain -> persist. Activities are referred to by
name, so nothing heavy is imported here; the Stage search attribute tells operators
(and the REST status endpoint, with no worker running) where a run is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from common import metrics
    from common.contracts import (
        BAD_SAMPLE,
        FAILURE,
        REVOKED,
        STAGE_FAILED,
        STAGE_REVOKED,
        STARTED,
        AnalyzeRequest,
        AnalyzeSummary,
        BinaryChild,
        CachedLifts,
        CachedUnpack,
        EmbedRequest,
        EmbedResult,
        ExplainRequest,
        ExplainResult,
        LiftRequest,
        LiftResult,
        PersistRequest,
        ReferenceSetRef,
        StatusUpdate,
        UnpackResult,
    )
    from common.failures import STORAGE_FULL
    from common.search_attributes import STAGE


# Transient faults (a worker restart, a locked database) retry with backoff; bad input
# is raised as non-retryable and fails once.
COMPUTE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60), maximum_attempts=6,
    non_retryable_error_types=[BAD_SAMPLE],
)
# Recording outcomes must not give up: nothing is lost while the database is away.
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30), maximum_attempts=0,
)
# A stage whose activity gave up because the worker's disk is full (StorageFull,
# worker/storage.py) is started again after this pause, for up to STORAGE_WAIT_MAX: the
# analysis resumes once space is freed instead of failing.
STORAGE_RETRY_PAUSE = timedelta(minutes=1)
STORAGE_WAIT_MAX = timedelta(days=1)
# The light steps (a status row, the reference set, explain, persist) and the stage
# caches (a sample's unpack, its children's lifts) run in the workflow's own worker as
# local activities: no task-queue round trip, which was most of a cached reanalysis.
# Histories from before replay the ordinary activities.
LOCAL_STEPS = "local-light-steps"
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
LIFT_TIMEOUT = timedelta(hours=1)
LIFT_HEARTBEAT = timedelta(seconds=15)  # the lift heartbeats every 2 s


@workflow.defn(name="AnalyzeSample")
class AnalyzeSample:
    def __init__(self) -> None:
        self._stage = "queued"
        self._stage_started_ms: int | None = None
        self._stages_ms: dict[str, int] = {}
        self._unpack_reused = False

    @workflow.query
    def progress(self) -> dict[str, object]:
        return {"stage": self._stage, "stages_ms": dict(self._stages_ms)}

    @workflow.run
    async def run(self, request: AnalyzeRequest) -> AnalyzeSummary:
        run_id = workflow.info().run_id
        try:
            await self._record(request, STARTED)
            unpacked = await self._unpack(request)
            _stop_if_cancelled()
            lifted = await self._lift(request, unpacked)
            _stop_if_cancelled()
            embedded = await self._embed(request, unpacked, lifted)
            _stop_if_cancelled()
            explained = await self._explain(request, embedded)
            _stop_if_cancelled()
            await self._persist(request, embedded, explained, run_id)
        # FailureError: an ActivityError, an ApplicationError, or a local activity's own
        # failure or cancel (they are not wrapped in an ActivityError)
        except (FailureError, asyncio.CancelledError) as err:
            interrupted = self._stage
            if is_cancelled_exception(err):
                metrics.count(workflow.metric_meter(), metrics.ANALYSES, outcome="revoked")
                self._enter(STAGE_REVOKED)
                await self._record(
                    request, REVOKED, f"revoked by request during stage '{interrupted}'"
                )
                raise
            details = f"{interrupted}: {_failure_details(err)}"
            meter = workflow.metric_meter()
            metrics.count(meter, metrics.ANALYSES, outcome="failure")
            metrics.count(meter, metrics.ANALYSIS_FAILURES, stage=interrupted,
                          type=_failure_type(err))
            self._enter(STAGE_FAILED)
            await self._record(request, FAILURE, details)
            raise ApplicationError(details, type="AnalysisFailed", non_retryable=True) from err
        self._enter("done")
        metrics.count(workflow.metric_meter(), metrics.ANALYSES, outcome="success")
        return AnalyzeSummary(
            sha256=request.sha256, model_name=request.model_name, verdict=embedded.verdict,
            children=len(unpacked.children), functions=sum(r.functions for r in lifted),
            stages_ms=dict(self._stages_ms), lifts_reused=sum(r.cached for r in lifted),
            unpack_reused=self._unpack_reused,
        )

    # --- the five stages ----------------------------------------------------------------
    async def _unpack(self, request: AnalyzeRequest) -> UnpackResult:
        self._enter("unpack")
        if workflow.patched(LOCAL_STEPS):
            cached = await _lookup("cached_unpack", request, CachedUnpack)
            if cached is not None and cached.unpacked is not None:
                self._unpack_reused = True
                return cached.unpacked
        return await _until_space(lambda: workflow.execute_activity(
            "unpack_sample", request, result_type=UnpackResult, task_queue=request.cpu_queue,
            start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=timedelta(seconds=30),
            retry_policy=COMPUTE_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        ))

    async def _lift(self, request: AnalyzeRequest, unpacked: UnpackResult) -> list[LiftResult]:
        self._enter("lift")
        cached: list[LiftResult | None] = [None] * len(unpacked.children)
        if unpacked.children and workflow.patched(LOCAL_STEPS):
            found = await _lookup("cached_lifts", unpacked, CachedLifts)
            if found is not None and len(found.lifts) == len(cached):
                cached = found.lifts
        return list(await asyncio.gather(*(
            _lift_one(request, child) if hit is None else _done(hit)
            for child, hit in zip(unpacked.children, cached, strict=True)
        )))

    async def _embed(
        self, request: AnalyzeRequest, unpacked: UnpackResult, lifted: list[LiftResult]
    ) -> EmbedResult:
        self._enter("embed")
        references = ""
        if workflow.patched("user-references"):
            # the references users added, as they are now (read where the database is)
            found = await _light("reference_set", [], ReferenceSetRef,
                                 timedelta(minutes=1), RECORD_RETRY)
            references = found.references_sha256
        return await _until_space(lambda: workflow.execute_activity(
            "embed_compare",
            EmbedRequest(request.sha256, request.model_name, lifted, unpacked.report_sha256,
                         references),
            result_type=EmbedResult, task_queue=request.gpu_queue,
            start_to_close_timeout=timedelta(minutes=30), heartbeat_timeout=timedelta(seconds=60),
            retry_policy=COMPUTE_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        ))

    async def _explain(self, request: AnalyzeRequest, embedded: EmbedResult) -> ExplainResult:
        self._enter("explain")
        return await _until_space(lambda: _light(
            "explain_results", [ExplainRequest(request.sha256, embedded.results_sha256)],
            ExplainResult, timedelta(minutes=2), COMPUTE_RETRY,
        ))

    async def _persist(
        self, request: AnalyzeRequest, embedded: EmbedResult, explained: ExplainResult,
        run_id: str,
    ) -> None:
        self._enter("persist")
        persist = PersistRequest(
            request.sha256, request.model_name, embedded.model_version or request.model_version,
            run_id, embedded.results_sha256, explained.explanation_sha256,
            embedded.functions_sha256,
        )
        await _light("persist_results", [persist], bool, timedelta(minutes=1), RECORD_RETRY)

    # --- bookkeeping ----------------------------------------------------------------------
    def _enter(self, stage: str) -> None:
        now_ms = int(workflow.time() * 1000)
        if self._stage_started_ms is not None and self._stage in _TIMED:
            self._stages_ms[self._stage] = now_ms - self._stage_started_ms
            metrics.observe(workflow.metric_meter(), metrics.STAGE_DURATION,
                            self._stages_ms[self._stage] / 1000, "s", stage=self._stage)
        self._stage_started_ms = now_ms
        self._stage = stage
        workflow.logger.info("stage %s", stage)
        workflow.upsert_search_attributes([STAGE.value_set(stage)])
        if workflow.patched("stage-timings-memo"):
            # describe() returns the memo with no worker running: stage timings for REST.
            workflow.upsert_memo({"stages_ms": dict(self._stages_ms)})

    async def _record(self, request: AnalyzeRequest, status: str, error: str | None = None) -> None:
        update = StatusUpdate(
            request.sha256, request.model_name, request.model_version,
            workflow.info().run_id, status, error,
        )
        await _light("record_status", [update], bool, timedelta(seconds=30), RECORD_RETRY)


async def _light[T](activity: str, args: Sequence[Any], result_type: type[T],
                    timeout: timedelta, retry: RetryPolicy) -> T:
    """A light step of the orchestration queue. It runs first here, as a local activity
    (one attempt, no task-queue round trip). Should that attempt fail, the step goes to
    the queue as an ordinary activity with `retry`: a database outage still shows
    operators a pending activity with its attempts and last failure."""
    if workflow.patched(LOCAL_STEPS):
        done = await _local_once(activity, args, result_type, timeout)
        if done is not None:
            return done
    return await workflow.execute_activity(
        activity, args=args, result_type=result_type, start_to_close_timeout=timeout,
        retry_policy=retry,
    )


async def _lookup[T](activity: str, arg: Any, result_type: type[T]) -> T | None:
    """A stage cache's answer (activities/stage_cache.py), looked up here; a lookup that
    fails finds nothing: the stage's own activity then does the work."""
    return await _local_once(activity, [arg], result_type, timedelta(minutes=1))


async def _local_once[T](activity: str, args: Sequence[Any], result_type: type[T],
                         timeout: timedelta) -> T | None:
    """One attempt as a local activity in this worker; None when it failed (a cancel
    is raised). A local activity's failure is its own error, not an ActivityError."""
    try:
        return await workflow.execute_local_activity(
            activity, args=args, result_type=result_type,
            start_to_close_timeout=timeout, retry_policy=ONE_ATTEMPT,
        )
    except FailureError as err:
        if is_cancelled_exception(err):
            raise
        workflow.logger.warning("%s failed as a local activity (%s)", activity,
                                _failure_details(err))
        return None


async def _lift_one(request: AnalyzeRequest, child: BinaryChild) -> LiftResult:
    return await _until_space(lambda: workflow.execute_activity(
        "lift_binary", LiftRequest(child), result_type=LiftResult,
        task_queue=request.cpu_queue, start_to_close_timeout=LIFT_TIMEOUT,
        heartbeat_timeout=LIFT_HEARTBEAT, retry_policy=COMPUTE_RETRY,
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    ))


async def _done[T](value: T) -> T:
    return value


def _stop_if_cancelled() -> None:
    """A stage's activity that finished its work although the run was cancelled meanwhile
    (a cancel reaches an activity only with a heartbeat) hands back its result and the
    SDK swallows the cancel: the run would go on to the next stage. A cancel requested of
    this task stays counted, so the run stops here and ends REVOKED."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError("cancelled while a stage finished")


async def _until_space[T](start: Callable[[], Awaitable[T]]) -> T:
    """Run a stage's activity; when it gave up for want of disk space (StorageFull), pause
    and start it again, for up to STORAGE_WAIT_MAX in all. Other failures pass through.
    Only a failed run's history differs, so recorded histories replay unchanged."""
    waited = timedelta(0)
    while True:
        try:
            return await start()
        except ActivityError as err:
            if _failure_type(err) != STORAGE_FULL or waited >= STORAGE_WAIT_MAX:
                raise
            workflow.logger.warning("out of storage space: the stage starts again in %s",
                                    STORAGE_RETRY_PAUSE)
            await workflow.sleep(STORAGE_RETRY_PAUSE)
            waited += STORAGE_RETRY_PAUSE


_TIMED = frozenset({"unpack", "lift", "embed", "explain", "persist"})


def _failure_type(err: BaseException) -> str:
    """The innermost failure's type (BadSample, MissingSample, a database error, ...), the
    label of ae_analysis_failures_total."""
    kind = "unknown"
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type:
            kind = cause.type
        elif not isinstance(cause, (ActivityError, ApplicationError)):
            kind = type(cause).__name__
        cause = cause.__cause__
    return kind


def _failure_details(err: BaseException) -> str:
    """The innermost message: what went wrong, not the chain of wrappers around it."""
    cause: BaseException | None = err
    message = str(err)
    while cause is not None:
        if isinstance(cause, ApplicationError):
            message = cause.message
        elif not isinstance(cause, ActivityError) and str(cause):
            message = str(cause)
        cause = cause.__cause__
    return message
