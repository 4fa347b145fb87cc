"""What a failed Temporal run says, for people: its innermost application message.

Pure Python: imported by workflows (passed through the sandbox) and by activities.
"""

from __future__ import annotations

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
