"""Unpack stage: find every executable in the sample (archives opened safely, in a
sandboxed child process: unpacking/contained.py)."""

from __future__ import annotations

import asyncio
import dataclasses

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import Deps
from activities.stage_cache import store_unpack
from common.contracts import BAD_SAMPLE, AnalyzeRequest, BinaryChild, UnpackResult
from common.failures import STORAGE_FULL
from sandbox import SandboxUnavailable
from sandbox.warm import CHILDREN_DIR, Children
from unpacking.contained import (
    CHILD_MODULE,
    ChildLimits,
    UnpackFailed,
    UnpackNoSpace,
    child_limits,
    unpack_contained,
)
from unpacking.extract import BadSample, UnpackLimits


class Unpack:
    def __init__(self, deps: Deps, limits: UnpackLimits | None = None) -> None:
        self.deps = deps
        self.limits = limits or UnpackLimits()
        settings = deps.settings
        self.child = ChildLimits(memory_mb=settings.unpack_memory_mb,
                                 timeout_s=settings.unpack_timeout_s)
        # unpack children started ahead of their job (sandbox/warm.py)
        self.children = Children(CHILD_MODULE, deps.blobs.scratch / CHILDREN_DIR,
                                 child_limits(self.limits, self.child),
                                 keep=settings.warm_children, prefix="unpack-")

    @activity.defn(name="unpack_sample")
    async def unpack_sample(self, request: AnalyzeRequest) -> UnpackResult:
        blobs = self.deps.blobs
        if not await asyncio.to_thread(blobs.exists, request.sha256):  # S3 blocks: a thread
            # The API stores the blob before starting the workflow; a missing blob means
            # the blob directory was wiped or is not shared with this worker.
            raise ApplicationError(
                f"sample {request.sha256} is not in the blob store at {blobs.location}",
                type="MissingSample",
            )
        try:
            report = await unpack_contained(
                blobs, request.sha256, self.limits, self.child, name=request.filename or None,
                tick=lambda _line: activity.heartbeat("unpacking"), started=self.children,
            )
        except BadSample as exc:
            raise ApplicationError(str(exc), type=BAD_SAMPLE, non_retryable=True) from exc
        except UnpackNoSpace as exc:  # our disk: the analysis waits for space
            raise ApplicationError(str(exc), type=STORAGE_FULL) from exc
        except (UnpackFailed, SandboxUnavailable) as exc:  # the machine's fault: retried
            raise ApplicationError(str(exc), type=type(exc).__name__) from exc
        children = [
            BinaryChild(
                sha256=c.sha256, name=c.name or request.filename or c.sha256[:12],
                format=c.format, depth=c.depth, size=c.size, parent_sha256=c.parent_sha256,
            )
            for c in report.children
        ]
        report_sha = await asyncio.to_thread(
            blobs.put_json,
            {
                "children": [dataclasses.asdict(c) for c in children],
                "skipped": report.skipped,
                "archives": report.archives,
            }
        )
        result = UnpackResult(children=children, report_sha256=report_sha)
        if report.time_limited:  # a less busy machine may find more: unpacked again next time
            activity.logger.info("unpack of %s not kept for reuse: part of it ran out of time",
                                 request.sha256)
        else:
            await asyncio.to_thread(store_unpack, blobs, request, self.limits, result)
        return result
