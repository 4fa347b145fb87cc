"""ReanalyzeAll: every stored sample again (e.g. after a model update), without falling over.

A page of samples lacking a current result is read from the database; each becomes an
AnalyzeSample child under its canonical id, at most `concurrency` at once; then the
workflow continues as new with the cursor moved on, so its history stays small however
many samples there are. Cancelling it cancels the children it started.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from common import search_attributes
    from common.contracts import (
        AnalyzeRequest,
        ReanalyzeRequest,
        ReanalyzeSummary,
        SamplePage,
        SampleRef,
        workflow_id,
    )


@workflow.defn(name="ReanalyzeAll")
class ReanalyzeAll:
    @workflow.run
    async def run(self, request: ReanalyzeRequest) -> ReanalyzeSummary:
        page = await workflow.execute_activity(
            "samples_to_reanalyze",
            SamplePage(request.after_sha256, request.model_name, request.model_version,
                       request.include_failed, request.page_size),
            result_type=list[SampleRef],
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
        )
        limit = asyncio.Semaphore(max(1, request.concurrency))
        outcomes = await asyncio.gather(*(self._analyze(request, s, limit) for s in page))
        progress = dataclasses.replace(
            request,
            after_sha256=page[-1].sha256 if page else request.after_sha256,
            started=request.started + sum(o != "joined" for o in outcomes),
            joined=request.joined + outcomes.count("joined"),
            succeeded=request.succeeded + outcomes.count("succeeded"),
            failed=request.failed + outcomes.count("failed"),
        )
        if len(page) == request.page_size:
            workflow.continue_as_new(progress)
        return ReanalyzeSummary(progress.started, progress.joined, progress.succeeded,
                                progress.failed)

    async def _analyze(
        self, request: ReanalyzeRequest, sample: SampleRef, limit: asyncio.Semaphore
    ) -> str:
        async with limit:
            try:
                await workflow.execute_child_workflow(
                    "AnalyzeSample",
                    AnalyzeRequest(sample.sha256, request.model_name, request.model_version,
                                   request.cpu_queue, request.gpu_queue, sample.filename),
                    id=workflow_id(request.model_name, sample.sha256),
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                    search_attributes=search_attributes.for_new_analysis(
                        sample.sha256, request.model_name
                    ),
                )
            except WorkflowAlreadyStartedError:
                return "joined"  # a submission is analysing it right now
            except ChildWorkflowError:
                return "failed"  # recorded on the sample's own row, with error_details
            return "succeeded"
