"""What a failed Temporal run says, for people: its innermost application message.

Pure Python: imported by workflows (passed through the sandbox) and by activities.
"""

from __future__ import annotations

import errno

from temporalio.exceptions import ApplicationError


def innermost_message(err: BaseException) -> str:
    """The innermost ApplicationError's message (a child's error_details), not the
    wrappers around it; the error's own text when there is none."""
    message = str(err)
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            message = cause.message
        cause = cause.__cause__
    return message


# An activity that could not write because the disk (or quota) is full: retried, and the
# analysis waits for space rather than failing (workflows/analyze.py).
STORAGE_FULL = "StorageFull"
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = "database or disk is full"


def is_storage_full(err: BaseException) -> bool:
    """Whether err, or an exception it was raised from, says the storage is full: ENOSPC
    or EDQUOT from the operating system, or SQLite's "database or disk is full"."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
            return True
        if _SQLITE_FULL in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
