"""`ae`, the analyst CLI, against a live deployment of its own: the API as its own process
(`python -m api.server`), real workers on the Temporal dev server, binaries compiled here.
The CLI runs as a subprocess (`python -m cli`, what the `ae` entry point calls), so exit
codes and the stdout/stderr split are the real ones."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest
import pytest_asyncio
from click.testing import CliRunner
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cli.errors import Exit
from cli.main import ae, main
from common.config import Settings
from tests.conftest import (
    EXTERNAL_KEY,
    INTERNAL_KEY,
    ZLIB_STATIC,
    compile_c,
    make_settings,
    running_workers,
)
from tests.live_api import ROOT, free_port, live_api
from tests.test_attribution import TINY_SOURCE
from tests.test_pipeline_e2e import ZLIB_PROGRAM

SMALL_PROGRAM = TINY_SOURCE  # a few functions of its own, no library
UNKNOWN_SHA = "0" * 63 + "1"


def run_ae(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`ae ARGS` as a subprocess, with no setting inherited from the machine running it."""
    base = {k: v for k, v in os.environ.items() if k not in ("AE_URL", "AE_API_KEY", "AE_CONFIG")}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd,
                          env={**base, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=900)


async def ae_async(env: dict[str, str], *args: str, cwd: Path = ROOT
                   ) -> subprocess.CompletedProcess[str]:
    """The CLI blocks: run it off the event loop, which serves the workers."""
    return await asyncio.to_thread(run_ae, env, *args, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ae: error: "), result.stderr
    for word in words:
        assert word in lines[0], result.stderr


@pytest.fixture(scope="module")
def own_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty home, so that no ~/.config/ae/config.toml of this machine is read."""
    return tmp_path_factory.mktemp("home")


@pytest_asyncio.fixture(scope="module")
async def deployment(own_settings: Settings, client: Client, temporal_env: WorkflowEnvironment,
                     home: Path) -> AsyncIterator[dict[str, str]]:
    """Workers and an API process of this module's own; yields the CLI's environment."""
    env = {"AE_QUEUE_PREFIX": own_settings.queue_prefix, "AE_API_KEYS": EXTERNAL_KEY,
           "AE_INTERNAL_API_KEYS": INTERNAL_KEY,
           "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host}
    async with running_workers(client, own_settings):
        with live_api(own_settings.data_dir, **env) as port:
            yield {"AE_URL": f"http://127.0.0.1:{port}", "AE_API_KEY": INTERNAL_KEY,
                   "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of two small real binaries: a zlib program and one of no family."""
    tmp = tmp_path_factory.mktemp("cli-build")
    folder = tmp_path_factory.mktemp("cli-samples")
    zpack = compile_c(tmp, ZLIB_PROGRAM, "-O2", str(ZLIB_STATIC), name="zpack")
    small = compile_c(tmp, SMALL_PROGRAM, "-O2", name="charcount")
    (folder / "zpack").write_bytes(zpack.read_bytes())
    (folder / "charcount").write_bytes(small.read_bytes())
    return folder


async def test_submit_a_directory_and_wait_then_read_results(
    deployment: dict[str, str], programs: Path
) -> None:
    done = await ae_async(deployment, "submit", str(programs), "--wait", "--poll", "0.5")
    assert done.returncode == Exit.OK, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert done.stdout.splitlines()[0].split() == ["sha256", "status", "verdict", "file"]
    by_name = {Path(row[3]).name: row for row in rows}
    assert set(by_name) == {"zpack", "charcount"}
    assert all(row[1] == "SUCCESS" for row in rows), done.stdout
    assert by_name["zpack"][2] == "zlib"
    # The progress display (stderr, not a terminal: a line per change) went through the
    # stages and ended with every sample done.
    progress = done.stderr.splitlines()
    assert any(" lift " in line for line in progress), done.stderr
    for name in ("zpack", "charcount"):
        assert any(line.startswith(name) and " done " in line and "SUCCESS" in line
                   and "[############]" in line for line in progress), done.stderr
    zpack_sha = by_name["zpack"][0]

    as_json = await ae_async(deployment, "results", zpack_sha, "--json")
    assert as_json.returncode == Exit.OK, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["sha256_hash"] == zpack_sha and body["error_details"] is None
    assert body["prediction_results"]["verdict"] == "zlib"

    readable = await ae_async(deployment, "results", zpack_sha)
    assert readable.returncode == Exit.OK, readable.stderr
    assert "verdict:" in readable.stdout and "zlib (confidence 0." in readable.stdout
    family_rows = [line.split() for line in readable.stdout.splitlines()
                   if line.startswith("zlib ")]
    assert family_rows and family_rows[0][1] == "present"
    assert int(family_rows[0][3]) == int(body["prediction_results"]["families"]["zlib"]
                                         ["functions_matched"])

    status = await ae_async(deployment, "status", zpack_sha)
    assert status.returncode == Exit.OK, status.stderr
    assert "status:" in status.stdout and "SUCCESS" in status.stdout
    assert any(line.split() == ["stage:", "done"] for line in status.stdout.splitlines())
    status_json = json.loads((await ae_async(deployment, "status", zpack_sha, "--json")).stdout)
    assert status_json["detailed_status"]["FESTIVE Func Sim"]["stage"] == "done"

    # A resubmission answers at once (nothing new runs) and --json is a list per file.
    again = await ae_async(deployment, "submit", str(programs / "zpack"), "--json")
    assert again.returncode == Exit.OK, again.stderr
    assert json.loads(again.stdout) == [{"file": str(programs / "zpack"), "sha256": zpack_sha}]

    # Revoking an analysis that has ended is refused by the API (409): code 6.
    revoke = await ae_async(deployment, "revoke", zpack_sha)
    assert revoke.returncode == Exit.REFUSED
    one_line_error(revoke, "409", "not running")


async def test_search_similar_and_report_on_analysed_samples(
    deployment: dict[str, str], programs: Path, tmp_path: Path
) -> None:
    """After the directory test: both samples are stored and analysed."""
    done = await ae_async(deployment, "submit", str(programs), "--wait", "--json")
    assert done.returncode == Exit.OK, done.stdout + done.stderr
    found = await ae_async(deployment, "search", "--family", "zlib", "--json")
    assert found.returncode == Exit.OK, found.stderr
    rows = json.loads(found.stdout)
    assert [r["filename"] for r in rows] == ["zpack"] and rows[0]["families"][0] == "zlib"
    zpack_sha = rows[0]["sha256"]
    # pages of one follow the cursor: both samples, each once
    every = json.loads((await ae_async(deployment, "search", "--limit", "0", "--json")).stdout)
    paged = await ae_async(deployment, "search", "--limit", "2", "--json")
    assert sorted(r["sha256"] for r in json.loads(paged.stdout)) == sorted(
        r["sha256"] for r in every) and len(every) == 2
    table = await ae_async(deployment, "search", "--verdict", "zlib")
    assert table.returncode == Exit.OK and "zlib" in table.stdout and "zpack" in table.stdout

    similar = await ae_async(deployment, "similar", zpack_sha, "--json")
    assert similar.returncode == Exit.OK, similar.stderr
    body = json.loads(similar.stdout)
    assert body["sha256"] == zpack_sha and body["functions_searched"] > 0

    out = tmp_path / "zpack.html"
    report = await ae_async(deployment, "report", zpack_sha, "--out", str(out))
    assert report.returncode == Exit.OK, report.stderr
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "zlib" in html


async def test_an_analysis_that_fails_gives_the_failure_code(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"this is not a program\n" + os.urandom(256))
    failed = await ae_async(deployment, "submit", str(junk), "--wait", "--poll", "0.5")
    assert failed.returncode == Exit.FAILED, failed.stdout + failed.stderr
    assert "FAILURE" in failed.stdout
    assert "no supported executable" in failed.stderr
    sha256 = failed.stdout.splitlines()[1].split()[0]
    results = await ae_async(deployment, "results", sha256)
    assert results.returncode == Exit.FAILED
    one_line_error(results, "failed", "no supported executable")
    status = await ae_async(deployment, "status", sha256)
    assert status.returncode == Exit.FAILED and "FAILURE" in status.stdout


async def test_unknown_things_give_the_not_found_code(deployment: dict[str, str],
                                                      tmp_path: Path) -> None:
    for args in (["status", UNKNOWN_SHA], ["results", UNKNOWN_SHA], ["results", UNKNOWN_SHA,
                 "--json"], ["revoke", UNKNOWN_SHA], ["similar", UNKNOWN_SHA],
                 ["references", "show", UNKNOWN_SHA],
                 ["reanalyze", "watch", str(uuid.uuid4())]):
        result = await ae_async(deployment, *args)
        assert result.returncode == Exit.NOT_FOUND, (args, result.stdout, result.stderr)
        one_line_error(result, "404")
        assert result.stdout == ""
    # The report of an unknown sample: 404, and no file left behind.
    report = await ae_async(deployment, "report", UNKNOWN_SHA, cwd=tmp_path)
    assert report.returncode == Exit.NOT_FOUND
    one_line_error(report, "404", "/report")
    assert list(tmp_path.iterdir()) == []
    # Search answers 404 only where no such operation is served: under another prefix.
    search = await ae_async({**deployment, "AE_URL": deployment["AE_URL"] + "/no-such-prefix"},
                            "search", "--family", "zlib")
    assert search.returncode == Exit.NOT_FOUND
    one_line_error(search, "404", "/no-such-prefix/samples")


async def test_keys_give_the_unauthorised_code(deployment: dict[str, str]) -> None:
    wrong = await ae_async({**deployment, "AE_API_KEY": "not-a-key"}, "status", UNKNOWN_SHA)
    assert wrong.returncode == Exit.UNAUTHORISED
    one_line_error(wrong, "401", "invalid API key")
    missing = await ae_async({**deployment, "AE_API_KEY": ""}, "results", UNKNOWN_SHA)
    assert missing.returncode == Exit.UNAUTHORISED
    one_line_error(missing, "401", "AE_API_KEY")
    # An external key on an internal operation: 403, the same code.
    external = await ae_async({**deployment, "AE_API_KEY": EXTERNAL_KEY}, "references", "list")
    assert external.returncode == Exit.UNAUTHORISED
    one_line_error(external, "403", "internal")
    # A flag overrides the environment.
    flag = await ae_async(deployment, "--api-key", "not-a-key", "references", "list")
    assert flag.returncode == Exit.UNAUTHORISED


async def test_references_list(deployment: dict[str, str]) -> None:
    listed = await ae_async(deployment, "references", "list")
    assert listed.returncode == Exit.OK, listed.stderr
    assert re.match(r"(?m)^\d+ reference\(s\); index version \S+$", listed.stdout), listed.stdout
    body = json.loads((await ae_async(deployment, "references", "list", "--json")).stdout)
    assert body["references"] == [] and body["index_version"] in listed.stdout


async def test_a_config_file_gives_url_and_key(deployment: dict[str, str], tmp_path: Path
                                               ) -> None:
    config = tmp_path / "ae.toml"
    config.write_text(f'url = "{deployment["AE_URL"]}"\napi_key = "{INTERNAL_KEY}"\n')
    from_file = {"HOME": deployment["HOME"], "AE_CONFIG": str(config)}
    listed = await ae_async(from_file, "references", "list")
    assert listed.returncode == Exit.OK, listed.stderr
    # The default place, ~/.config/ae/config.toml, is read too.
    default = Path(deployment["XDG_CONFIG_HOME"]) / "ae" / "config.toml"
    default.parent.mkdir(parents=True, exist_ok=True)
    default.write_text(config.read_text())
    try:
        shown = json.loads((await ae_async({"HOME": deployment["HOME"], "XDG_CONFIG_HOME":
                                            deployment["XDG_CONFIG_HOME"]},
                                           "config", "--json")).stdout)
        assert shown["url"] == deployment["AE_URL"] and shown["sources"]["url"] == str(default)
        assert INTERNAL_KEY not in json.dumps(shown)
        # The environment beats the file.
        env_wins = await ae_async({**from_file, "AE_API_KEY": "not-a-key"}, "references", "list")
        assert env_wins.returncode == Exit.UNAUTHORISED
    finally:
        default.unlink()


async def test_references_add_relabel_remove(deployment: dict[str, str], programs: Path,
                                            tmp_path: Path) -> None:
    folder = tmp_path / "refs"
    folder.mkdir()
    (folder / "charcount").write_bytes((programs / "charcount").read_bytes())
    (folder / "readme.txt").write_bytes(b"not a program " + os.urandom(32))
    added = await ae_async(deployment, "references", "add", str(folder), "--family",
                           "cli-family", "--version", "1.0", "--tags", "cli", "--wait", "--json")
    # The text file fails (code 1, its error on stderr); the program is added.
    assert added.returncode == Exit.FAILED, added.stdout + added.stderr
    refs = {Path(r["filename"]).name: r for r in json.loads(added.stdout)}
    assert refs["charcount"]["status"] == "SUCCESS" and refs["charcount"]["family"] == "cli-family"
    assert refs["readme.txt"]["status"] == "FAILURE"
    assert f"reference {refs['readme.txt']['sha256']} ended FAILURE" in added.stderr
    sha256 = refs["charcount"]["sha256"]

    listed = await ae_async(deployment, "references", "list")
    assert listed.returncode == Exit.OK
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(sha256))
    assert row[1:6] == ["SUCCESS", "cli-family", "1.0", "cli", row[5]] and row[6] == "yes"

    relabel = await ae_async(deployment, "references", "relabel", sha256, "--family", "cli-fork")
    assert relabel.returncode == Exit.OK and " cli-fork " in relabel.stdout
    nothing = await ae_async(deployment, "references", "relabel", sha256)
    assert nothing.returncode == Exit.USAGE and "--family" in nothing.stderr
    removed = await ae_async(deployment, "references", "remove", sha256)
    assert removed.returncode == Exit.OK and "removed" in removed.stdout
    again = await ae_async(deployment, "references", "remove", sha256)
    assert again.returncode == Exit.NOT_FOUND
    one_line_error(again, "404")


async def test_reanalyze_start_watch_retry_and_cancel(deployment: dict[str, str],
                                                     tmp_path: Path) -> None:
    since = datetime.now(UTC).isoformat()  # a filter of this test's own: its own batch id
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a program either\n" + os.urandom(256))
    failed = await ae_async(deployment, "submit", str(junk), "--wait", "--poll", "0.5")
    assert failed.returncode == Exit.FAILED
    sha256 = failed.stdout.splitlines()[1].split()[0]

    started = await ae_async(deployment, "reanalyze", "start", "--selection", "all", "--status",
                             "FAILURE", "--since", since, "--force", "--watch", "--poll", "0.5",
                             "--json")
    # The batch ran the failed sample again, it failed again: code 1, listed with its error.
    assert started.returncode == Exit.FAILED, started.stdout + started.stderr
    progress = json.loads(started.stdout)
    assert progress["state"] == "done" and progress["total"] == 1 and progress["failed"] == 1
    assert [f["sha256"] for f in progress["failures"]] == [sha256]
    assert "no supported executable" in progress["failures"][0]["error_details"]
    # stderr: the batch id, a progress line per change, then the one error line.
    assert started.stderr.splitlines()[0] == f"batch {progress['batch_id']}"
    assert "done: 1/1 finished (done 0, failed 1)" in started.stderr
    assert started.stderr.splitlines()[-1].startswith("ae: error: ")
    assert "with 1 failed sample" in started.stderr.splitlines()[-1]
    batch_id = progress["batch_id"]

    shown = await ae_async(deployment, "reanalyze", "status", batch_id)
    assert shown.returncode == Exit.OK and sha256 in shown.stdout
    retried = await ae_async(deployment, "reanalyze", "retry-failed", batch_id, "--watch",
                             "--poll", "0.5")
    assert retried.returncode == Exit.FAILED, retried.stdout + retried.stderr
    assert sha256 in retried.stdout and re.search(r"(?m)^state:\s+done$", retried.stdout)
    cancel = await ae_async(deployment, "reanalyze", "cancel", batch_id)
    assert cancel.returncode == Exit.REFUSED
    one_line_error(cancel, "409", "not running")


def test_an_unreachable_api_gives_the_unreachable_code(home: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    for args in (["status", UNKNOWN_SHA], ["search"], ["references", "list"]):
        result = run_ae({"AE_URL": nobody, "AE_API_KEY": "k", "HOME": str(home)}, *args)
        assert result.returncode == Exit.UNREACHABLE, (args, result.stderr)
        one_line_error(result, "unreachable", nobody)


def test_bad_usage_gives_click_code_2(home: Path, tmp_path: Path) -> None:
    env = {"HOME": str(home)}
    assert run_ae(env, "status", "not-a-sha").returncode == Exit.USAGE
    assert run_ae(env, "submit", str(tmp_path / "missing")).returncode == Exit.USAGE
    assert run_ae(env, "search", "--since", "yesterday").returncode == Exit.USAGE
    empty = run_ae(env, "submit", str(tmp_path))
    assert empty.returncode == Exit.USAGE
    one_line_error(empty, "no regular file")
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("url = 3\n")
    config = run_ae({**env, "AE_CONFIG": str(bad_config)}, "config")
    assert config.returncode == Exit.USAGE
    one_line_error(config, "url")


def test_every_command_has_help_and_the_exit_codes_are_documented() -> None:
    runner = CliRunner()
    top = runner.invoke(ae, ["--help"])
    assert top.exit_code == 0
    for code in Exit:
        assert f"  {int(code)}  " in top.output, code

    def walk(group: click.Group, path: list[str]) -> list[list[str]]:
        found = []
        for name, command in group.commands.items():
            found.append([*path, name])
            if isinstance(command, click.Group):
                found += walk(command, [*path, name])
        return found

    commands = walk(ae, [])
    for expected in (["submit"], ["status"], ["results"], ["revoke"], ["report"], ["search"],
                     ["similar"], ["references", "add"], ["references", "list"],
                     ["references", "remove"], ["references", "relabel"],
                     ["reanalyze", "start"], ["reanalyze", "watch"], ["reanalyze", "cancel"],
                     ["reanalyze", "retry-failed"]):
        assert expected in commands, expected
    for command in commands:
        result = runner.invoke(ae, [*command, "--help"])
        assert result.exit_code == 0 and result.output.startswith("Usage: ae "), command


def test_the_ae_entry_point_is_this_cli() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = EntryPoint(name="ae", value=scripts["ae"], group="console_scripts")
    assert entry.load() is main
