"""AddReference: one durable run per reference sample a user adds, read top to bottom.

unpack -> lift (the sample pipeline's activities, and its lift cache) -> embed the lifted
functions into a vectors blob (gpu queue) -> record the row SUCCESS. Bad input fails once
with error_details, as analyses do. The labels live in the database row, not here.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from common.contracts import (
        FAILURE,
        MODEL_NAME,
        STARTED,
        SUCCESS,
        AnalyzeRequest,
        LiftRequest,
        LiftResult,
        ReferenceEmbedRequest,
        ReferenceEmbedResult,
        ReferenceRequest,
        ReferenceUpdate,
        UnpackResult,
    )
    from workflows.analyze import (
        COMPUTE_RETRY,
        LIFT_HEARTBEAT,
        LIFT_TIMEOUT,
        RECORD_RETRY,
        _failure_details,
    )


@workflow.defn(name="AddReference")
class AddReference:
    def __init__(self) -> None:
        self._stage = "queued"

    @workflow.run
    async def run(self, request: ReferenceRequest) -> ReferenceEmbedResult:
        try:
            await self._record(request, STARTED)
            unpacked = await self._unpack(request)
            lifted = await self._lift(request, unpacked)
            embedded = await self._embed(request, lifted)
            self._stage = "persist"
            await self._record(request, SUCCESS, embedded=embedded)
        except (ActivityError, ApplicationError, asyncio.CancelledError) as err:
            if is_cancelled_exception(err):
                details = f"cancelled during stage '{self._stage}'"
            else:
                details = f"{self._stage}: {_failure_details(err)}"
            await self._record(request, FAILURE, details)
            if is_cancelled_exception(err):
                raise
            raise ApplicationError(details, type="ReferenceFailed", non_retryable=True) from err
        return embedded

    async def _unpack(self, request: ReferenceRequest) -> UnpackResult:
        self._stage = "unpack"
        return await workflow.execute_activity(
            "unpack_sample",
            AnalyzeRequest(request.sha256, MODEL_NAME, "", request.cpu_queue, request.gpu_queue,
                           request.filename),
            result_type=UnpackResult, task_queue=request.cpu_queue,
            start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=timedelta(seconds=30),
            retry_policy=COMPUTE_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    async def _lift(self, request: ReferenceRequest, unpacked: UnpackResult) -> list[LiftResult]:
        self._stage = "lift"
        return list(await asyncio.gather(*(
            workflow.execute_activity(
                "lift_binary", LiftRequest(child), result_type=LiftResult,
                task_queue=request.cpu_queue, start_to_close_timeout=LIFT_TIMEOUT,
                heartbeat_timeout=LIFT_HEARTBEAT, retry_policy=COMPUTE_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            for child in unpacked.children
        )))

    async def _embed(
        self, request: ReferenceRequest, lifted: list[LiftResult]
    ) -> ReferenceEmbedResult:
        self._stage = "embed"
        return await workflow.execute_activity(
            "embed_reference", ReferenceEmbedRequest(request.sha256, lifted),
            result_type=ReferenceEmbedResult, task_queue=request.gpu_queue,
            start_to_close_timeout=timedelta(minutes=30), heartbeat_timeout=timedelta(seconds=60),
            retry_policy=COMPUTE_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    async def _record(
        self, request: ReferenceRequest, status: str, error: str | None = None,
        embedded: ReferenceEmbedResult | None = None,
    ) -> None:
        update = ReferenceUpdate(request.sha256, workflow.info().run_id, status, error)
        if embedded is not None:
            update.vectors_sha256 = embedded.vectors_sha256
            update.functions = embedded.functions
            update.weights_sha256 = embedded.weights_sha256
        await workflow.execute_activity(
            "record_reference", update, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RECORD_RETRY,
        )
