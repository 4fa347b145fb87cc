"""Sample commands: submit, status, results, revoke, report, search, similar."""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from cli.client import Session
from cli.errors import CliError, Exit
from cli.output import echo_json, pairs, sha256_arg, table
from cli.progress import Tracked, wait_all
from common.contracts import FAILURE, FINAL_STATES, REVOKED, SUCCESS

SEARCH_PAGE = 100  # rows asked for per page of Search


def files_of(path: Path) -> list[Path]:
    """A file, or every regular file under a directory (symbolic links left out)."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        if not found:
            raise CliError(f"no regular file under {path}", Exit.USAGE)
        return found
    return [path]


def _verdict(results: dict[str, Any] | None) -> str | None:
    return (results or {}).get("verdict") if isinstance(results, dict) else None


# --- submit -----------------------------------------------------------------------------
@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--wait", is_flag=True,
              help="Show each sample's stage until it ends; then its status and verdict.")
@click.option("--poll", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between status checks with --wait.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=None,
              help="With --wait, give up after this many seconds (exit 7).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list, one per file).")
@click.pass_obj
def submit(session: Session, path: Path, wait: bool, poll: float, wait_timeout: float | None,
           as_json: bool) -> None:
    """Submit FILE, or every regular file under DIR, for analysis.

    Prints `sha256  filename` per file (with --wait: `sha256  status  verdict  filename`
    once all have ended; the progress display goes to stderr). A file the API refuses is
    reported and the others go on; the exit code is that of the first problem (6 for a
    refused upload, 1 for an analysis that ended FAILURE or REVOKED).
    """
    api = session.api
    rows: list[dict[str, Any]] = []
    problems: list[CliError] = []

    def problem(message: str, code: Exit) -> None:
        problems.append(CliError(message, code))
        problems[-1].show()

    files = files_of(path)
    for file in files:
        try:
            sha256 = api.submit(file)
        except OSError as err:
            problem(f"{file}: {err.strerror or err}", Exit.USAGE)
        except CliError as err:
            if err.exit_code in (Exit.UNREACHABLE, Exit.UNAUTHORISED, Exit.USAGE):
                raise  # nothing else would get through either
            problem(f"{file}: {err.format_message()}", Exit(err.exit_code))
        else:
            rows.append({"file": str(file), "sha256": sha256})
            if not wait and not as_json:
                click.echo(f"{sha256}  {file}")
    if wait and rows:
        tracked = {row["sha256"]: Tracked(label=Path(row["file"]).name, sha256=row["sha256"])
                   for row in rows}
        wait_all(api, list(tracked.values()), poll, wait_timeout)
        for row in rows:
            item = tracked[row["sha256"]]
            row["status"] = item.status
            row["error_details"] = item.detail.get("error_details")
            row["verdict"] = None
            if item.status == SUCCESS:
                row["verdict"] = _verdict(api.results(row["sha256"]).get("prediction_results"))
            else:
                problem(f"{row['file']}: {item.status}: {row['error_details'] or 'no details'}",
                        Exit.FAILED)
        if not as_json:
            click.echo(table(["sha256", "status", "verdict", "file"],
                             [[r["sha256"], r["status"], r["verdict"], r["file"]] for r in rows]))
    if as_json:
        echo_json(rows)
    if problems:
        raise CliError(f"{len(problems)} of {len(files)} file(s) did not succeed",
                       Exit(problems[0].exit_code))


# --- status -----------------------------------------------------------------------------
@click.command()
@click.argument("sha256", callback=sha256_arg)
@click.option("--json", "as_json", is_flag=True, help="Print Get Status's answer as JSON.")
@click.pass_obj
def status(session: Session, sha256: str, as_json: bool) -> None:
    """Show a sample's status and stage (Get Status).

    Exits 0 when the model's analysis succeeded, 1 when it ended FAILURE or REVOKED, 7
    while it is still running.
    """
    body = session.api.status(sha256)
    model = session.config.model
    if as_json:
        echo_json(body)
    else:
        for name, word in body.get("status", {}).items():
            detail = body.get("detailed_status", {}).get(name) or {}
            click.echo(pairs([
                ("sample", sha256), ("model", name), ("status", word),
                ("stage", detail.get("stage")), ("attempt", detail.get("attempt")),
                ("started", detail.get("started_at")), ("closed", detail.get("closed_at")),
                ("elapsed_s", detail.get("elapsed_s")),
                ("stages_ms", " ".join(f"{k}={v}" for k, v in
                                       (detail.get("stages_ms") or {}).items())),
                ("last_failure", detail.get("last_failure")),
                ("error", detail.get("error_details")),
            ]))
            for activity in detail.get("pending_activities") or []:
                click.echo(f"  activity {activity.get('activity')}: {activity.get('state')}, "
                           f"attempt {activity.get('attempt')}, progress "
                           f"{activity.get('progress') or '-'}")
    _exit_for_status(sha256, body.get("status", {}).get(model), model)


def _exit_for_status(sha256: str, word: str | None, model: str) -> None:
    if word is None:
        raise CliError(f"{sha256} has no analysis with model {model}", Exit.NOT_FOUND)
    if word in (FAILURE, REVOKED):
        raise CliError(f"the analysis of {sha256} ended {word}", Exit.FAILED)
    if word not in FINAL_STATES:
        raise CliError(f"the analysis of {sha256} is {word}: not finished", Exit.NOT_READY)


# --- results ----------------------------------------------------------------------------
@click.command()
@click.argument("sha256", callback=sha256_arg)
@click.option("--json", "as_json", is_flag=True, help="Print Get Results' answer as JSON.")
@click.option("--matches", default=10, show_default=True, type=click.IntRange(min=0),
              help="Best matching functions listed in the table.")
@click.pass_obj
def results(session: Session, sha256: str, as_json: bool, matches: int) -> None:
    """Show a sample's results (Get Results): verdict, families, matched functions.

    Exits 1 when the analysis ended FAILURE or REVOKED (its error on stderr), 7 when it has
    no results yet.
    """
    body = session.api.results(sha256)
    found = body.get("prediction_results")
    if as_json:
        echo_json(body)
    elif found:
        click.echo(results_table(sha256, body, found, matches))
    if body.get("error_details"):
        raise CliError(f"the analysis of {sha256} failed: {body['error_details']}", Exit.FAILED)
    if not found:
        raise CliError(f"{sha256} has no results yet (see `ae status {sha256}`)",
                       Exit.NOT_READY)


def results_table(sha256: str, body: dict[str, Any], found: dict[str, Any],
                  matches: int) -> str:
    families = found.get("families") or {}
    skipped = found.get("skipped") or {}
    head = pairs([
        ("sample", sha256),
        ("model", f"{body.get('model')} {found.get('model_version', '')} "
                  f"(index {found.get('index_version', '-')})"),
        ("predicted", body.get("predicted_at")),
        ("verdict", f"{found.get('verdict')} (confidence {found.get('confidence', '-')})"),
        ("present", found.get("families_present")),
        ("weak", found.get("families_weak")),
        ("functions", f"{found.get('functions_total', '-')} total, "
                      f"{found.get('functions_considered', '-')} considered, "
                      f"{found.get('functions_matched', '-')} matched"),
        ("binaries", len(found.get("children") or {})),
        ("skipped", f"{len(skipped)} archive member(s)" if skipped else None),
    ])
    parts = [head]
    if isinstance(families, dict) and families:
        parts.append(table(
            ["family", "status", "probability", "matched", "share", "best_sim", "versions"],
            [[name, f.get("status"), f.get("probability"), f.get("functions_matched"),
              f.get("share_of_considered"), f.get("best_similarity"),
              f.get("reference_versions")] for name, f in families.items()]))
    best = sorted((found.get("matches") or {}).values(), key=_weight, reverse=True)[:matches]
    if best:
        parts.append(table(
            ["address", "function", "family", "reference function", "similarity", "p"],
            [[m.get("address"), m.get("name"), m.get("family"), m.get("reference_function"),
              m.get("similarity"), m.get("match_probability")] for m in best]))
    return "\n\n".join(parts)


def _weight(match: dict[str, Any]) -> tuple[float, float]:
    """Best first: the match probability, then the similarity (both stored as text)."""
    def number(key: str) -> float:
        try:
            return float(match.get(key, 0))
        except (TypeError, ValueError):
            return 0.0
    return number("match_probability"), number("similarity")


# --- revoke -----------------------------------------------------------------------------
@click.command()
@click.argument("sha256", callback=sha256_arg)
@click.pass_obj
def revoke(session: Session, sha256: str) -> None:
    """Revoke a sample's running analysis (Revoke Prediction Task).

    Exits 4 when there is no analysis of it, 6 when it is not running.
    """
    click.echo(session.api.revoke(sha256).get("detail", "revoked"))


# --- report -----------------------------------------------------------------------------
@click.command()
@click.argument("sha256", callback=sha256_arg)
@click.option("--out", "out", type=click.Path(dir_okay=False, allow_dash=True),
              help="Save the HTML here ('-' for stdout). Default: ./<sha256>.html")
@click.option("--open", "open_it", is_flag=True,
              help="Save it to a temporary file and open it in the browser.")
@click.pass_obj
def report(session: Session, sha256: str, out: str | None, open_it: bool) -> None:
    """Save a sample's HTML report, or open it in a browser."""
    if out is not None and open_it:
        raise click.UsageError("give --out or --open, not both")
    html = session.api.report(sha256)
    if out == "-":
        sys.stdout.buffer.write(html)
        return
    if open_it:
        with tempfile.NamedTemporaryFile("wb", prefix=f"ae-{sha256[:12]}-", suffix=".html",
                                         delete=False) as handle:
            handle.write(html)
        target = Path(handle.name)
    else:
        target = Path(out) if out else Path(f"{sha256}.html")
        try:
            target.write_bytes(html)
        except OSError as err:
            raise CliError(f"cannot write {target}: {err.strerror or err}", Exit.USAGE) from err
    click.echo(str(target))
    if open_it and click.launch(target.resolve().as_uri()) != 0:
        raise CliError(f"no browser could open {target}", Exit.USAGE)


# --- search -----------------------------------------------------------------------------
def _iso(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError as err:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from err
    return value


@click.command()
@click.option("--family", help="A family present in the result.")
@click.option("--verdict", help="The result's verdict.")
@click.option("--status", "status_word", help="SUCCESS, FAILURE, STARTED, ...")
@click.option("--model", "model_name", help="Model name of the result.")
@click.option("--analysis-version", help="<model version>+idx.<index version>")
@click.option("--since", callback=_iso, help="Submitted at or after (ISO 8601).")
@click.option("--until", callback=_iso, help="Submitted before (ISO 8601).")
@click.option("--filename", help="Filename glob, e.g. '*.dll'.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0),
              help="Rows in all (0: every page).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list.")
@click.pass_obj
def search(session: Session, family: str | None, verdict: str | None, status_word: str | None,
           model_name: str | None, analysis_version: str | None, since: str | None,
           until: str | None, filename: str | None, limit: int, as_json: bool) -> None:
    """Find samples (Search Samples: GET /samples), following the cursor page by page."""
    params: dict[str, Any] = {
        "family": family, "verdict": verdict, "status": status_word, "model": model_name,
        "analysis_version": analysis_version, "submitted_after": since,
        "submitted_before": until, "filename": filename,
    }
    params = {k: v for k, v in params.items() if v is not None}
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page_size = SEARCH_PAGE if limit == 0 else min(SEARCH_PAGE, limit - len(items))
        page = session.api.search({**params, "limit": page_size,
                                   **({"after": cursor} if cursor else {})})
        items.extend(page.get("items") or [])
        cursor = page.get("next")
        if not cursor or (limit and len(items) >= limit):
            break
    items = items[:limit] if limit else items
    if as_json:
        echo_json(items)
        return
    click.echo(table(["sha256", "status", "verdict", "families", "submitted", "filename"],
                     [[i.get("sha256"), i.get("status"), i.get("verdict"),
                       " ".join(i.get("families") or []), i.get("submitted_at"),
                       i.get("filename")] for i in items]))
    click.echo(f"{len(items)} sample(s){' (more: raise --limit)' if cursor else ''}", err=True)


# --- similar ----------------------------------------------------------------------------
@click.command()
@click.argument("sha256", callback=sha256_arg)
@click.option("--function", "function", help="Only this function of the sample (its address).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="Similar samples listed.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_obj
def similar(session: Session, sha256: str, function: str | None, limit: int,
            as_json: bool) -> None:
    """Stored samples that share functions with this one, best first."""
    params: dict[str, Any] = {"limit": limit, **({"function": function} if function else {})}
    body = session.api.similar(sha256, params)
    if as_json:
        echo_json(body)
        return
    rows = body.get("items") or []
    click.echo(table(["sha256", "score", "shared", "verdict", "filename"],
                     [[r.get("sha256"), r.get("score"), _shared(r), r.get("verdict"),
                       r.get("filename")] for r in rows]))


def _shared(row: dict[str, Any]) -> Any:
    return row.get("shared_count")


COMMANDS = [submit, status, results, revoke, report, search, similar]
