"""`ae references`: reference samples users add (the internal References operations)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cli.client import Api, Session
from cli.errors import CliError, Exit
from cli.output import echo_json, sha256_arg, table
from cli.samples import files_of

BASE = "/internal/references"
FINAL = frozenset({"SUCCESS", "FAILURE"})
LIST_PAGE = 500


def _rows(refs: list[dict[str, Any]]) -> str:
    return table(
        ["sha256", "status", "family", "version", "tags", "functions", "searched", "filename"],
        [[r.get("sha256"), r.get("status"), r.get("family"), r.get("version"), r.get("tags"),
          r.get("functions"), "yes" if r.get("searched") else "no", r.get("filename")]
         for r in refs])


def _tags(value: str | None) -> list[str] | None:
    return None if value is None else [t.strip() for t in value.split(",") if t.strip()]


@click.group()
def references() -> None:
    """Reference samples: labelled code families every analysis searches (internal key)."""


@references.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--family", required=True, help="Code family, one word (a new or a known one).")
@click.option("--version", "family_version", required=True, help="Version of the family's code.")
@click.option("--tags", default="", help="Comma-separated tags.")
@click.option("--wait", is_flag=True, help="Wait until each is SUCCESS or FAILURE.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=None,
              help="With --wait, give up after this many seconds (exit 7).")
@click.option("--json", "as_json", is_flag=True, help="Print the references as a JSON list.")
@click.pass_obj
def add(session: Session, path: Path, family: str, family_version: str, tags: str, wait: bool,
        wait_timeout: float | None, as_json: bool) -> None:
    """Add FILE, or every regular file under DIR, each as its own reference.

    Exits 1 when, with --wait, a reference ended FAILURE; 6 when the API refused one.
    """
    api = session.api
    form = {"family": family, "version": family_version, **({"tags": tags} if tags else {})}
    added: list[dict[str, Any]] = []
    problems: list[CliError] = []
    files = files_of(path)
    for file in files:
        try:
            with file.open("rb") as handle:
                ref = api.json("POST", BASE, data=form, files={"sample": (file.name, handle)})
        except OSError as err:
            problems.append(CliError(f"{file}: {err.strerror or err}", Exit.USAGE))
            problems[-1].show()
            continue
        except CliError as err:
            if err.exit_code in (Exit.UNREACHABLE, Exit.UNAUTHORISED, Exit.USAGE):
                raise
            problems.append(CliError(f"{file}: {err.format_message()}", Exit(err.exit_code)))
            problems[-1].show()
            continue
        added.append(ref)
    if wait:
        added = [_wait(api, ref["sha256"], wait_timeout) for ref in added]
        for ref in added:
            if ref.get("status") != "SUCCESS":
                problems.append(CliError(f"reference {ref['sha256']} ended {ref.get('status')}: "
                                         f"{ref.get('error_details')}", Exit.FAILED))
                problems[-1].show()
    if as_json:
        echo_json(added)
    elif added:
        click.echo(_rows(added))
    if problems:
        raise CliError(f"{len(problems)} of {len(files)} file(s) did not succeed",
                       Exit(problems[0].exit_code))


def _wait(api: Api, sha256: str, timeout_s: float | None) -> dict[str, Any]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        ref = api.json("GET", f"{BASE}/{sha256}")
        if ref.get("status") in FINAL:
            return ref
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"reference {sha256} is still {ref.get('status')} after "
                           f"{timeout_s:g} s", Exit.NOT_READY)
        time.sleep(1.0)


@references.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print {references: [...], index_version} as JSON.")
@click.pass_obj
def list_references(session: Session, as_json: bool) -> None:
    """Every reference, in sha256 order, and the index version analyses use now."""
    refs: list[dict[str, Any]] = []
    after, index_version = "", ""
    while True:
        page = session.api.json("GET", BASE, params={"after": after, "limit": LIST_PAGE})
        refs.extend(page.get("references") or [])
        index_version = page.get("index_version", "")
        if not page.get("next_cursor"):
            break
        after = page["next_cursor"]
    if as_json:
        echo_json({"references": refs, "index_version": index_version})
        return
    if refs:
        click.echo(_rows(refs))
    click.echo(f"{len(refs)} reference(s); index version {index_version}")


@references.command()
@click.argument("sha256", callback=sha256_arg)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(session: Session, sha256: str, as_json: bool) -> None:
    """One reference, with its error if it failed."""
    ref = session.api.json("GET", f"{BASE}/{sha256}")
    if as_json:
        echo_json(ref)
        return
    click.echo(_rows([ref]))
    if ref.get("error_details"):
        click.echo(f"error: {ref['error_details']}")


@references.command()
@click.argument("sha256", callback=sha256_arg)
@click.option("--family", help="New family.")
@click.option("--version", "family_version", help="New version.")
@click.option("--tags", help="New comma-separated tags ('' clears them).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def relabel(session: Session, sha256: str, family: str | None, family_version: str | None,
            tags: str | None, as_json: bool) -> None:
    """Change a reference's family, version and/or tags (a new index version)."""
    body = {k: v for k, v in {"family": family, "version": family_version,
                              "tags": _tags(tags)}.items() if v is not None}
    if not body:
        raise click.UsageError("give --family, --version and/or --tags")
    ref = session.api.json("PATCH", f"{BASE}/{sha256}", json=body)
    if as_json:
        echo_json(ref)
    else:
        click.echo(_rows([ref]))


@references.command()
@click.argument("sha256", callback=sha256_arg)
@click.pass_obj
def remove(session: Session, sha256: str) -> None:
    """Stop searching a reference (a new index version)."""
    click.echo(session.api.json("DELETE", f"{BASE}/{sha256}").get("detail", "removed"))
