"""Exit codes scripts can rely on, and the one error every command raises for them."""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import IO, Any

import click


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # an analysis (or a reference, or a batch member) ended FAILURE or REVOKED
    USAGE = 2  # bad usage: click's own code, also for a bad config file or argument
    UNREACHABLE = 3  # no answer from the API: connection refused, DNS, timeout
    NOT_FOUND = 4  # the API answered 404: unknown sample, prediction, batch or operation
    UNAUTHORISED = 5  # the API answered 401 (no or unknown key) or 403 (internal operation)
    REFUSED = 6  # any other error answer (400, 409, 413, 422, 5xx)
    NOT_READY = 7  # not finished: status/results of a running analysis, a wait timed out
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES_HELP = """\b
Exit codes:
  0    done
  1    an analysis (reference, batch member) ended FAILURE or REVOKED
  2    bad usage (unknown option, bad argument, bad config file)
  3    the API is unreachable (connection refused, DNS, timeout)
  4    not found (404: no such sample, prediction, batch or operation)
  5    unauthorised (401: no or unknown key; 403: an internal key is needed)
  6    the API refused the request otherwise (400, 409, 413, 422, 5xx)
  7    not finished yet (status or results of a running analysis; a --wait-timeout)
  130  interrupted (Ctrl-C)
"""


class CliError(click.ClickException):
    """A one-line message on stderr and a documented exit code."""

    def __init__(self, message: str, code: Exit, status_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the server sent
        self.exit_code = int(code)  # type: ignore[misc]  # click reads it per instance
        self.status_code = status_code  # the HTTP status of an error answer, if any

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"ae: error: {self.format_message()}", file=file or sys.stderr)
