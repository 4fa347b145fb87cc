"""`submit --wait`: poll Get Status for each sample and show its stage until all have ended.

On a terminal the display is one line per sample, redrawn in place; otherwise (a pipe, a
log file) one line is printed each time a sample's status or stage changes. Either way it
goes to stderr, so stdout carries only the results.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click

from cli.client import Api
from cli.errors import CliError, Exit
from common.contracts import FINAL_STATES, PENDING, STAGES

BAR_WIDTH = 12
BUSY = 503  # Temporal or the database briefly unavailable: keep polling


@dataclass
class Tracked:
    """One sample being waited for, and what Get Status last said about it."""

    label: str
    sha256: str
    status: str = PENDING
    stage: str = "queued"
    activity: str = ""  # the pending activity and its heartbeat, e.g. "lift_binary 3/5"
    elapsed_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    def update(self, body: dict[str, Any], model: str) -> None:
        self.status = body.get("status", {}).get(model, self.status)
        self.detail = body.get("detailed_status", {}).get(model) or {}
        self.stage = self.detail.get("stage") or self.stage
        self.elapsed_s = self.detail.get("elapsed_s")
        self.activity = " ".join(
            f"{a.get('activity', '')}{' ' + str(a['progress']) if a.get('progress') else ''}"
            f"{' attempt ' + str(a['attempt']) if (a.get('attempt') or 1) > 1 else ''}"
            for a in self.detail.get("pending_activities") or [])

    def line(self, label_width: int) -> str:
        done = STAGES.index(self.stage) if self.stage in STAGES else None
        if self.status == "SUCCESS":
            done = len(STAGES) - 1
        filled = 0 if done is None else round(BAR_WIDTH * done / (len(STAGES) - 1))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        elapsed = "" if self.elapsed_s is None else f"{self.elapsed_s:6.0f}s"
        text = (f"{self.label:<{label_width}}  {self.sha256[:12]}  [{bar}]  {self.stage:<8} "
                f"{self.status:<8} {elapsed}  {self.activity}")
        return text.rstrip()


def wait_all(api: Api, tracked: list[Tracked], poll_s: float, timeout_s: float | None) -> None:
    """Poll until every sample's status is final (SUCCESS, FAILURE, REVOKED)."""
    err = sys.stderr
    live = err.isatty()
    width = max((len(t.label) for t in tracked), default=0)
    shown: dict[str, tuple[str, str]] = {}
    drawn = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for item in tracked:
            if item.final:
                continue
            try:
                item.update(api.status(item.sha256), api.config.model)
            except CliError as exc:
                if exc.status_code != BUSY:
                    raise
        if live:
            if drawn:
                err.write(f"\x1b[{drawn}F")  # back to the first line of the display
            columns = shutil.get_terminal_size().columns - 1  # a wrapped line breaks redraw
            for item in tracked:
                err.write("\x1b[2K" + item.line(width)[:columns] + "\n")
            drawn = len(tracked)
            err.flush()
        else:
            for item in tracked:
                now = (item.status, item.stage)
                if shown.get(item.sha256) != now:
                    shown[item.sha256] = now
                    click.echo(item.line(width), file=err)
        if all(item.final for item in tracked):
            return
        if deadline is not None and time.monotonic() > deadline:
            left = [t.label for t in tracked if not t.final]
            raise CliError(f"still running after {timeout_s:g} s: {', '.join(left)}",
                           Exit.NOT_READY)
        time.sleep(poll_s)
