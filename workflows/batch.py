"""ReanalysisBatch: reanalyse the samples a filter chooses, in a sliding window.

open (the database chooses the members) -> a window of at most `concurrency` analyses:
each finished one is recorded and the next starts at once, so a slow sample never holds
up the rest -> continue as new every `children_per_run` starts (history stays small),
carrying the cursor, the counters and the analyses still running -> close.

Members run as AnalyzeSample children under their canonical ids, so a sample already
being analysed (a submission) is joined and awaited, never run twice at once. Children
outlive a continue-as-new (ParentClosePolicy.ABANDON) and the next run awaits them.
Cancelling the batch cancels the analyses it started and records how each ended.
The `progress` query answers done / failed / running / remaining, rate and time left.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from common import metrics, search_attributes
    from common.contracts import (
        BATCH_CANCELLED,
        BATCH_DONE,
        BATCH_RUNNING,
        FAILURE,
        REVOKED,
        SKIPPED,
        SUCCESS,
        AnalysisOutcome,
        AnalyzeRequest,
        AnalyzeSummary,
        AwaitAnalysis,
        BatchClose,
        BatchFailure,
        BatchOpen,
        BatchOpened,
        BatchOutcome,
        BatchPage,
        BatchPageRequest,
        BatchProgress,
        BatchRequest,
        BatchSample,
        BatchSummary,
        RunningSample,
        workflow_id,
    )
    from common.failures import innermost_message

# Database work retries until it lands (a locked database is a pause, not a failure).
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30), maximum_attempts=0,
)
DB_TIMEOUT = timedelta(minutes=2)
RECENT_FAILURES = 20


@workflow.defn(name="ReanalysisBatch")
class ReanalysisBatch:
    def __init__(self) -> None:
        self._request: BatchRequest | None = None
        self._p: BatchProgress | None = None
        self._state = BATCH_RUNNING
        self._running: dict[str, RunningSample] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._buffer: list[BatchSample] = []
        self._started_this_run = 0
        self._changes = 0
        self._left_running = 0  # joined analyses no longer watched after a cancel

    # --- what operators see -----------------------------------------------------------
    @workflow.query
    def progress(self) -> dict[str, object]:
        if self._p is None or self._request is None:
            return {"state": "opening"}
        p = self._p
        finished = p.done + p.failed + p.revoked + p.skipped
        running = len(self._running)
        elapsed_s = max(0.0, (workflow.now() - datetime.fromisoformat(p.started_at))
                        .total_seconds())
        analysed = p.done + p.failed + p.revoked
        rate = analysed / elapsed_s if elapsed_s > 0 else 0.0
        remaining = max(0, p.total - finished - running)
        left = remaining + running
        return {
            "batch_id": p.batch_id, "workflow_id": workflow.info().workflow_id,
            "state": self._state, "analysis_version": self._request.model_version,
            "filter": dataclasses.asdict(self._request.filter),
            "concurrency": self._request.concurrency,
            "total": p.total, "done": p.done, "failed": p.failed, "revoked": p.revoked,
            "skipped": p.skipped, "running": running, "remaining": remaining,
            "finished": finished, "joined": p.joined, "cached": p.cached,
            "left_running": self._left_running,
            "lifts_new": p.lifts_new, "lifts_reused": p.lifts_reused,
            "started_at": p.started_at, "elapsed_s": round(elapsed_s, 1),
            "rate_per_min": round(rate * 60, 2),
            "eta_s": round(left / rate, 1) if rate > 0 and left else (0.0 if not left else None),
            "runs": p.runs,
            "running_samples": sorted(self._running),
            "recent_failures": [dataclasses.asdict(f) for f in p.recent_failures],
        }

    # --- the batch ----------------------------------------------------------------------
    @workflow.run
    async def run(self, request: BatchRequest) -> BatchSummary:
        self._request = request
        try:
            self._p = request.progress or await self._open(request)
            carried, self._p.running = self._p.running, []
            for sample in carried:  # still running when the previous run continued as new
                self._watch(sample, self._await_elsewhere(sample))
            while True:
                await self._fill_window(request)
                if not self._running:
                    break  # every member started or skipped, and every analysis ended
                if self._continue_as_new_due(request):
                    workflow.continue_as_new(dataclasses.replace(request, progress=self._carry()))
                seen = self._changes

                def moved(seen: int = seen) -> bool:
                    return self._changes != seen or self._continue_as_new_due(request)

                await workflow.wait_condition(moved)
        except asyncio.CancelledError:
            await self._cancel_members()
            raise
        return await self._close(BATCH_DONE)

    async def _open(self, request: BatchRequest) -> BatchProgress:
        info = workflow.info()
        batch_id = info.first_execution_run_id
        opened = await workflow.execute_activity(
            "open_batch",
            BatchOpen(batch_id, info.workflow_id, request.model_name, request.model_version,
                      request.filter),
            result_type=BatchOpened, start_to_close_timeout=timedelta(minutes=30),
            retry_policy=DB_RETRY,
        )
        return BatchProgress(batch_id=batch_id, started_at=workflow.now().isoformat(),
                             total=opened.total, cached=opened.cached)

    def _continue_as_new_due(self, request: BatchRequest) -> bool:
        return (self._started_this_run >= request.children_per_run
                or workflow.info().is_continue_as_new_suggested())

    async def _fill_window(self, request: BatchRequest) -> None:
        """Start members until `concurrency` analyses run or the cursor is exhausted."""
        while (len(self._running) < max(1, request.concurrency)
               and not self._continue_as_new_due(request)):
            sample = await self._next_sample(request)
            if sample is None:
                return
            await self._start(request, sample)

    async def _next_sample(self, request: BatchRequest) -> BatchSample | None:
        p = self._require_progress()
        if not self._buffer and not p.exhausted:
            # Only as many as the window has room for: whether a member is current (done
            # meanwhile by a submission) is read just before it starts.
            room = max(1, request.concurrency - len(self._running))
            page = await workflow.execute_activity(
                "batch_page",
                BatchPageRequest(p.batch_id, request.model_name, request.model_version,
                                 p.after_sha256, min(request.page_size, room)),
                result_type=BatchPage, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            )
            self._buffer = list(page.samples)
            p.exhausted = not page.samples
        if not self._buffer:
            return None
        return self._buffer.pop(0)

    async def _start(self, request: BatchRequest, sample: BatchSample) -> None:
        p = self._require_progress()
        p.after_sha256 = sample.sha256
        if sample.current and not request.filter.force:
            # the cache rule: a result of the current analysis version is not redone
            await self._record(BatchOutcome(p.batch_id, sample.sha256, SKIPPED))
            metrics.count(workflow.metric_meter(), metrics.BATCH_SAMPLES, outcome="skipped")
            p.skipped += 1
            return
        self._started_this_run += 1
        try:
            handle = await workflow.start_child_workflow(
                "AnalyzeSample",
                AnalyzeRequest(sample.sha256, request.model_name, request.model_version,
                               request.cpu_queue, request.gpu_queue, sample.filename),
                id=workflow_id(request.model_name, sample.sha256),
                result_type=AnalyzeSummary,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                # It outlives a continue-as-new; a cancel of the batch cancels it explicitly.
                parent_close_policy=ParentClosePolicy.ABANDON,
                search_attributes=search_attributes.for_new_analysis(
                    sample.sha256, request.model_name
                ),
            )
        except WorkflowAlreadyStartedError:
            # a submission (or another batch) is analysing it now: await that run
            p.joined += 1
            joined = RunningSample(sample.sha256, "", own=False)
            self._watch(joined, self._await_elsewhere(joined))
            return
        own = RunningSample(sample.sha256, handle.first_execution_run_id or "", own=True)
        self._watch(own, self._await_child(handle, own.run_id))

    def _watch(self, sample: RunningSample, outcome: object) -> None:
        self._running[sample.sha256] = sample
        self._tasks[sample.sha256] = asyncio.create_task(self._finish(sample, outcome))

    async def _finish(self, sample: RunningSample, outcome_of: object) -> None:
        p = self._require_progress()
        try:
            outcome: AnalysisOutcome = await outcome_of  # type: ignore[misc]
            await self._record(BatchOutcome(p.batch_id, sample.sha256, outcome.status,
                                            outcome.run_id, outcome.error_details))
        except (asyncio.CancelledError, ActivityError) as err:
            if not is_cancelled_exception(err):
                raise
            # a joined analysis the cancelled batch stops watching (it is not ours to stop)
            self._left_running += 1
            self._forget(sample)
            return
        metrics.count(workflow.metric_meter(), metrics.BATCH_SAMPLES,
                      outcome=outcome.status.lower())
        workflow.logger.info("member %s: %s (run %s) %s", sample.sha256, outcome.status,
                             outcome.run_id, outcome.error_details or "")
        if outcome.status == SUCCESS:
            p.done += 1
        elif outcome.status == REVOKED:
            p.revoked += 1
        else:
            p.failed += 1
            p.recent_failures = [
                *p.recent_failures,
                BatchFailure(sample.sha256, outcome.run_id, outcome.error_details or ""),
            ][-RECENT_FAILURES:]
        p.lifts_new += outcome.lifts_new
        p.lifts_reused += outcome.lifts_reused
        self._forget(sample)

    def _forget(self, sample: RunningSample) -> None:
        self._running.pop(sample.sha256, None)
        self._tasks.pop(sample.sha256, None)
        self._changes += 1

    async def _await_child(
        self, handle: workflow.ChildWorkflowHandle[object, AnalyzeSummary], run_id: str
    ) -> AnalysisOutcome:
        try:
            summary = await handle
        except ChildWorkflowError as err:
            if is_cancelled_exception(err):
                return AnalysisOutcome(REVOKED, run_id, "revoked with its batch")
            return AnalysisOutcome(FAILURE, run_id, innermost_message(err))
        reused = summary.lifts_reused
        return AnalysisOutcome(SUCCESS, run_id, None, max(0, summary.children - reused), reused)

    async def _await_elsewhere(self, sample: RunningSample) -> AnalysisOutcome:
        request = self._require_request()
        try:
            outcome = await workflow.execute_activity(
                "await_analysis",
                AwaitAnalysis(workflow_id(request.model_name, sample.sha256), sample.run_id),
                result_type=AnalysisOutcome, start_to_close_timeout=timedelta(days=7),
                heartbeat_timeout=timedelta(seconds=60), retry_policy=DB_RETRY,
                cancellation_type=ActivityCancellationType.TRY_CANCEL,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            return AnalysisOutcome(FAILURE, sample.run_id, innermost_message(err))
        if not sample.run_id:
            sample.run_id = outcome.run_id
        return outcome

    async def _record(self, outcome: BatchOutcome) -> None:
        await workflow.execute_activity(
            "record_batch_outcome", outcome, start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
        )

    def _carry(self) -> BatchProgress:
        p = self._require_progress()
        return dataclasses.replace(p, runs=p.runs + 1, running=list(self._running.values()))

    async def _cancel_members(self) -> None:
        """Cancel the analyses this batch started, wait until each has ended and been
        recorded; stop watching those it joined. Then close the batch as cancelled."""
        self._state = "cancelling"
        request = self._require_request()
        for sample in list(self._running.values()):
            if sample.own and sample.run_id:
                try:
                    await workflow.get_external_workflow_handle(
                        workflow_id(request.model_name, sample.sha256), run_id=sample.run_id
                    ).cancel()
                except Exception:  # noqa: BLE001 - it ended meanwhile: its outcome stands
                    workflow.logger.info("analysis %s ended before its cancel", sample.sha256)
            else:
                self._tasks[sample.sha256].cancel()
        await workflow.wait_condition(lambda: not self._running)
        if self._p is not None:
            await self._close(BATCH_CANCELLED)

    async def _close(self, state: str) -> BatchSummary:
        p = self._require_progress()
        self._state = state
        await workflow.execute_activity(
            "close_batch", BatchClose(p.batch_id, state), start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
        )
        return BatchSummary(p.batch_id, state, p.total, p.done, p.failed, p.revoked,
                            p.skipped, p.joined, p.cached)

    def _require_progress(self) -> BatchProgress:
        if self._p is None:
            raise ApplicationError("the batch is not open yet", non_retryable=True)
        return self._p

    def _require_request(self) -> BatchRequest:
        if self._request is None:
            raise ApplicationError("the batch has no request", non_retryable=True)
        return self._request
