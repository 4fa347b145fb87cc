"""Disk full is a condition of the machine, not of the sample: an activity that could not
write (ENOSPC, EDQUOT, SQLite's "database or disk is full") fails with the retryable type
StorageFull, whatever error its code let through, and the analysis waits for space
(workflows/analyze.py) instead of recording a FAILURE."""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from common.failures import STORAGE_FULL, is_storage_full


class _StorageFullInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:  # noqa: A002
        try:
            return await super().execute_activity(input)
        except ApplicationError as exc:
            if exc.type == STORAGE_FULL or not is_storage_full(exc):
                raise
            raise _storage_full(exc) from exc
        except Exception as exc:
            if not is_storage_full(exc):
                raise
            raise _storage_full(exc) from exc


def _storage_full(exc: BaseException) -> ApplicationError:
    info = activity.info()
    activity.logger.warning("%s: out of storage (%s); retried once space is freed",
                            info.activity_type, exc)
    return ApplicationError(
        f"out of storage space on the worker ({exc}); the analysis waits and retries "
        "once space is freed", type=STORAGE_FULL,
    )


class StorageFullInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:  # noqa: A002
        return _StorageFullInbound(next)
