"""`ae reanalyze`: batch reanalysis (the /internal/queue/reanalysis operations)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from cli.client import Api, Session
from cli.errors import CliError, Exit
from cli.output import echo_json, pairs, table
from common.contracts import BATCH_CANCELLED, BATCH_DONE, SELECTIONS

BASE = "/internal/queue/reanalysis"
ENDED = frozenset({BATCH_DONE, BATCH_CANCELLED})
OPENING_GRACE_S = 120.0  # a batch is recorded once its workflow has opened it (404 before)
STATUSES = ("PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED")

batch_id_arg = click.argument("batch_id")
watch_option = click.option("--watch", is_flag=True,
                            help="Then show its progress until it ends (as `watch`).")
poll_option = click.option("--poll", default=2.0, show_default=True,
                           type=click.FloatRange(min=0.1), help="Seconds between checks.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
concurrency_option = click.option("--concurrency", default=4, show_default=True,
                                  type=click.IntRange(1, 64), help="Analyses at once.")


@click.group()
def reanalyze() -> None:
    """Batch reanalysis of stored samples (internal key).

    \b
    `watch` (and `start --watch`) exits 0 when the batch ends with no failed member,
    1 when some failed (they are listed), 7 with --watch-timeout when it is still running.
    """


def _summary(progress: dict[str, Any]) -> str:
    return pairs([
        ("batch", progress.get("batch_id")), ("state", progress.get("state")),
        ("analysis_version", progress.get("analysis_version")),
        ("total", progress.get("total")),
        ("finished", f"{progress.get('finished')} (done {progress.get('done')}, failed "
                     f"{progress.get('failed')}, revoked {progress.get('revoked')}, skipped "
                     f"{progress.get('skipped')})"),
        ("running", progress.get("running")), ("remaining", progress.get("remaining")),
        ("cached", progress.get("cached")),
        ("rate_per_min", progress.get("rate_per_min")), ("eta_s", progress.get("eta_s")),
        ("elapsed_s", progress.get("elapsed_s")),
    ])


def _line(progress: dict[str, Any]) -> str:
    total = progress.get("total") or 0
    finished = progress.get("finished") or 0
    eta = progress.get("eta_s")
    return (f"{progress.get('state')}: {finished}/{total} finished (done {progress.get('done')}"
            f", failed {progress.get('failed')}), running {progress.get('running')}, "
            f"remaining {progress.get('remaining')}"
            f"{'' if eta is None else f', about {eta:.0f} s left'}")


def _show(progress: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(progress)
        return
    click.echo(_summary(progress))
    failures = progress.get("failures") or []
    if failures:
        click.echo(f"\nfailures ({progress.get('failures_total', len(failures))}):")
        click.echo(table(["sha256", "error"],
                         [[f.get("sha256"), f.get("error_details")] for f in failures]))


def _progress(api: Api, batch_id: str, grace_s: float) -> dict[str, Any]:
    """Get Reanalysis Progress; a 404 is waited out for grace_s (the batch is opening)."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            return api.json("GET", f"{BASE}/{batch_id}")
        except CliError as err:
            if err.exit_code != Exit.NOT_FOUND or time.monotonic() > deadline:
                raise
        time.sleep(1.0)


def _watch(api: Api, batch_id: str, poll_s: float, timeout_s: float | None, as_json: bool,
           grace_s: float = 0.0) -> None:
    err = sys.stderr
    live = err.isatty()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = ""
    while True:
        progress = _progress(api, batch_id, grace_s)
        line = _line(progress)
        if live:
            err.write("\r\x1b[2K" + line)
            err.flush()
        elif line != last:
            click.echo(line, file=err)
        last = line
        if progress.get("state") in ENDED:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"batch {batch_id} is still {progress.get('state')} after "
                           f"{timeout_s:g} s", Exit.NOT_READY)
        time.sleep(poll_s)
    if live:
        err.write("\n")
    _show(progress, as_json)
    if progress.get("failed"):
        raise CliError(f"batch {batch_id} ended {progress.get('state')} with "
                       f"{progress['failed']} failed sample(s)", Exit.FAILED)


def _started(session: Session, queued: dict[str, Any], watch: bool, poll: float,
             watch_timeout: float | None, as_json: bool) -> None:
    batch_id = queued["batch_id"]
    if not watch:
        if as_json:
            echo_json(queued)
        else:
            click.echo(f"batch {batch_id} ({queued.get('workflow_id')})")
        return
    click.echo(f"batch {batch_id}", err=True)
    _watch(session.api, batch_id, poll, watch_timeout, as_json, grace_s=OPENING_GRACE_S)


watch_timeout_option = click.option(
    "--watch-timeout", type=click.FloatRange(min=0), default=None,
    help="Stop watching after this many seconds (exit 7).")


@reanalyze.command()
@click.option("--selection", type=click.Choice(SELECTIONS), default="stale", show_default=True,
              help="stale: no result of the current analysis version; all; outdated: a result "
                   "of another model or index version; outdated-model: of another model "
                   "version.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only samples whose row has this status (repeatable).")
@click.option("--since", help="First submitted at or after (ISO 8601).")
@click.option("--until", help="... and before (ISO 8601).")
@click.option("--verdict", help="The result's verdict.")
@click.option("--family", help="A family present in the result.")
@click.option("--force", is_flag=True, help="Also redo results of the current version.")
@click.option("--include-failed", is_flag=True, help="stale: also retry samples that failed.")
@concurrency_option
@watch_option
@watch_timeout_option
@poll_option
@json_option
@click.pass_obj
def start(session: Session, selection: str, statuses: tuple[str, ...], since: str | None,
          until: str | None, verdict: str | None, family: str | None, force: bool,
          include_failed: bool, concurrency: int, watch: bool, watch_timeout: float | None,
          poll: float, as_json: bool) -> None:
    """Start (or join) a batch reanalysis of the samples the filter chooses; prints its id."""
    params: dict[str, Any] = {
        "selection": selection, "status": list(statuses), "submitted_after": since,
        "submitted_before": until, "verdict": verdict, "family": family,
        "force": "true" if force else None,
        "include_failed": "true" if include_failed else None, "concurrency": concurrency,
    }
    params = {k: v for k, v in params.items() if v not in (None, [])}
    queued = session.api.json("POST", BASE, params=params)
    _started(session, queued, watch, poll, watch_timeout, as_json)


@reanalyze.command()
@batch_id_arg
@watch_timeout_option
@poll_option
@json_option
@click.pass_obj
def watch(session: Session, batch_id: str, watch_timeout: float | None, poll: float,
          as_json: bool) -> None:
    """Show a batch's progress until it ends, then its summary and failures."""
    _watch(session.api, batch_id, poll, watch_timeout, as_json)


@reanalyze.command("status")
@batch_id_arg
@json_option
@click.pass_obj
def batch_status(session: Session, batch_id: str, as_json: bool) -> None:
    """A batch's progress now (Get Reanalysis Progress), once."""
    _show(_progress(session.api, batch_id, 0.0), as_json)


@reanalyze.command()
@batch_id_arg
@json_option
@click.pass_obj
def cancel(session: Session, batch_id: str, as_json: bool) -> None:
    """Cancel a running batch: its analyses are revoked, no new one starts."""
    _show(session.api.json("POST", f"{BASE}/{batch_id}/cancel"), as_json)


@reanalyze.command("retry-failed")
@batch_id_arg
@concurrency_option
@watch_option
@watch_timeout_option
@poll_option
@json_option
@click.pass_obj
def retry_failed(session: Session, batch_id: str, concurrency: int, watch: bool,
                 watch_timeout: float | None, poll: float, as_json: bool) -> None:
    """Start a new batch of exactly the samples that failed in this one."""
    queued = session.api.json("POST", f"{BASE}/{batch_id}/retry-failed",
                              params={"concurrency": concurrency})
    _started(session, queued, watch, poll, watch_timeout, as_json)
