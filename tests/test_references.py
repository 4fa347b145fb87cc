"""References users add: through the API (and its CLI), lifted by real angr, embedded by
the model, searched by the next analysis. A deployment of its own, so that its
references change no other module's verdicts."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from common.config import Settings
from common.contracts import MODEL_NAME, reference_workflow_id, workflow_id
from festive.attribution.index import ExtraBuild, ReferenceIndex
from festive.attribution.search import Quantised
from festive.card import index_version, model_card
from store.db import PredictionStore
from store.models import SCHEMA_VERSION
from tests.conftest import (
    EXTERNAL_KEY,
    INTERNAL_KEY,
    api_client,
    make_settings,
    running_workers,
    submit,
    wait_for_final,
)
from tests.live_api import ROOT, live_api

# A small library of our own: in no reference family; ten functions worth judging.
LIBRARY = r"""
#include <stdint.h>
#include <string.h>
#define NOINLINE __attribute__((noinline))
NOINLINE int rl_parse(const char *s, int *out, int max) {
    int n = 0, v = 0, in = 0;
    for (; *s && n < max; s++) {
        if (*s >= '0' && *s <= '9') { v = v * 10 + (*s - '0'); in = 1; }
        else if (*s == ',' || *s == ';') { if (in) out[n++] = v; v = 0; in = 0; }
        else if (*s == '#') break;
        else return -1;
    }
    if (in && n < max) out[n++] = v;
    return n;
}
NOINLINE void rl_sort(int *a, int n) {
    for (int i = 1; i < n; i++) {
        int v = a[i], j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}
NOINLINE uint32_t rl_hash(const unsigned char *p, size_t n, uint32_t seed) {
    uint32_t h = seed ^ 0x9e3779b9u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x01000193u;
        if ((h & 0xff) == 0x5a) h = (h << 7) | (h >> 25);
        else if (h & 1) h ^= 0xdeadbeefu;
    }
    return h ^ (h >> 16);
}
NOINLINE int rl_rle_encode(const unsigned char *in, int n, unsigned char *out, int cap) {
    int o = 0;
    for (int i = 0; i < n;) {
        int run = 1;
        while (i + run < n && in[i + run] == in[i] && run < 255) run++;
        if (o + 2 > cap) return -1;
        out[o++] = (unsigned char)run;
        out[o++] = in[i];
        i += run;
    }
    return o;
}
NOINLINE int rl_rle_decode(const unsigned char *in, int n, unsigned char *out, int cap) {
    int o = 0;
    for (int i = 0; i + 1 < n; i += 2) {
        int run = in[i];
        if (run == 0) return -2;
        if (o + run > cap) return -1;
        for (int k = 0; k < run; k++) out[o++] = in[i + 1];
    }
    return o;
}
NOINLINE int rl_base36(unsigned long v, char *buf, int cap) {
    char tmp[32]; int n = 0;
    if (cap < 2) return -1;
    if (v == 0) { buf[0] = '0'; buf[1] = 0; return 1; }
    while (v && n < 31) {
        int d = (int)(v % 36);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= 36;
    }
    if (n + 1 > cap) return -1;
    for (int i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    buf[n] = 0;
    return n;
}
NOINLINE int rl_median(int *a, int n) {
    if (n <= 0) return 0;
    rl_sort(a, n);
    if (n % 2) return a[n / 2];
    int lo = a[n / 2 - 1], hi = a[n / 2];
    if ((lo < 0) != (hi < 0)) return (lo + hi) / 2;
    return lo + (hi - lo) / 2;
}
NOINLINE int rl_tokens(char *s, char **tok, int max) {
    int n = 0; char *p = s;
    while (*p && n < max) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        tok[n++] = p;
        while (*p && *p != ' ' && *p != '\t') p++;
        if (*p) *p++ = 0;
    }
    return n;
}
NOINLINE int rl_checksum_ok(const char *line) {
    size_t len = strlen(line);
    if (len < 3 || line[len - 3] != '*') return 0;
    unsigned sum = 0;
    for (size_t i = 0; i + 3 < len; i++) sum = (sum + (unsigned char)line[i]) & 0xff;
    unsigned want = 0;
    for (size_t i = len - 2; i < len; i++) {
        char c = line[i];
        want = want * 16 + (unsigned)(c >= '0' && c <= '9' ? c - '0' : (c | 32) - 'a' + 10);
    }
    return sum == want;
}
"""

DECLARATIONS = r"""
#include <stdio.h>
#include <stdint.h>
#include <string.h>
int rl_parse(const char *, int *, int); int rl_median(int *, int);
uint32_t rl_hash(const unsigned char *, size_t, uint32_t);
int rl_rle_encode(const unsigned char *, int, unsigned char *, int);
int rl_rle_decode(const unsigned char *, int, unsigned char *, int);
int rl_base36(unsigned long, char *, int); int rl_tokens(char *, char **, int);
int rl_checksum_ok(const char *);
"""

# The reference: the library in a small tool.
TOOL = DECLARATIONS + r"""
int main(int argc, char **argv) {
    int v[64]; unsigned char z[256], back[256]; char b[40], line[128], *tok[8];
    const char *in = argc > 1 ? argv[1] : "3,1,2;9,7";
    int n = rl_parse(in, v, 64);
    int e = rl_rle_encode((const unsigned char *)in, (int)strlen(in), z, sizeof z);
    int d = rl_rle_decode(z, e, back, sizeof back);
    rl_base36(rl_hash((const unsigned char *)in, strlen(in), 7), b, sizeof b);
    snprintf(line, sizeof line, "%s", in);
    printf("%d %d %d %s %d %d\n", rl_median(v, n), e, d, b, rl_tokens(line, tok, 8),
           rl_checksum_ok(in));
    return 0;
}
"""

# The sample: the same library linked into another program, with code of its own.
APP = DECLARATIONS + r"""
static int count_vowels(const char *s) {
    int n = 0;
    for (; *s; s++) if (strchr("aeiou", *s)) n++;
    return n;
}
int main(int argc, char **argv) {
    char line[256], *tok[16]; int v[64]; unsigned char z[512], back[512]; char b[40];
    for (int i = 1; i < argc; i++) {
        snprintf(line, sizeof line, "%s", argv[i]);
        int t = rl_tokens(line, tok, 16);
        int n = rl_parse(argv[i], v, 64);
        int e = rl_rle_encode((const unsigned char *)argv[i], (int)strlen(argv[i]), z, sizeof z);
        int d = rl_rle_decode(z, e, back, sizeof back);
        rl_base36(rl_hash(back, d > 0 ? (size_t)d : 0, 11), b, sizeof b);
        printf("%s: %d tokens, median %d, %s, vowels %d, ok %d\n", argv[i], t,
               n > 0 ? rl_median(v, n) : -1, b, count_vowels(argv[i]), rl_checksum_ok(argv[i]));
    }
    return 0;
}
"""


def build(tmp: Path, main_source: str, name: str, *flags: str) -> Path:
    """main_source linked with the library, both compiled with these flags."""
    (tmp / "rl.c").write_text(LIBRARY)
    (tmp / f"{name}.c").write_text(main_source)
    out = tmp / name
    subprocess.run(["gcc", *flags, str(tmp / f"{name}.c"), str(tmp / "rl.c"), "-o", str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("refprogs")
    return {"tool": build(tmp, TOOL, "rltool", "-O2"),
            "app": build(tmp, APP, "rlapp", "-O2"),
            "tool_o1": build(tmp, TOOL, "rltool-o1", "-O1")}


@pytest.fixture(scope="module")
def own_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("references"))


@pytest_asyncio.fixture(scope="module")
async def own_api(own_settings: Settings, client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with running_workers(client, own_settings), api_client(own_settings, client) as http:
        yield http


async def add_reference(api: httpx.AsyncClient, path: Path | bytes, name: str,
                        **form: str) -> httpx.Response:
    data = path if isinstance(path, bytes) else path.read_bytes()
    return await api.post("/internal/references", data=form, files={"sample": (name, data)})


async def wait_for_reference(api: httpx.AsyncClient, sha256: str,
                             timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await api.get(f"/internal/references/{sha256}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in ("SUCCESS", "FAILURE"):
            return body
        await asyncio.sleep(0.5)
    raise AssertionError(f"reference {sha256} not done within {timeout_s} s: {body}")


async def analyse(api: httpx.AsyncClient, path: Path) -> dict[str, Any]:
    """Submit (or resubmit) a sample, wait, and return its stored prediction."""
    sha256 = await submit(api, path, path.name)
    status = await wait_for_final(api, sha256)
    assert status["status"][MODEL_NAME] == "SUCCESS", status
    response = await api.get(f"/internal/predictions/{sha256}/{MODEL_NAME}")
    assert response.status_code == 200, response.text
    return response.json()


async def versions(api: httpx.AsyncClient) -> dict[str, str]:
    return (await api.get("/versions")).json()[MODEL_NAME]


async def test_adding_a_reference_changes_the_next_verdict(
    own_api: httpx.AsyncClient, client: Client, programs: dict[str, Path]
) -> None:
    api = own_api
    shipped = await versions(api)
    assert shipped["index_version"] == shipped["shipped_index_version"]
    assert shipped["user_references"] == "0"

    before = await analyse(api, programs["app"])
    assert before["prediction_results"]["verdict"] == "unknown", \
        before["prediction_results"]["families"]
    assert before["prediction_results"]["index_version"] == shipped["index_version"]

    response = await add_reference(api, programs["tool"], "rltool", family="acme-parser",
                                   version="1.0", tags="vendor:acme, gcc")
    assert response.status_code == 201, response.text
    added = response.json()
    assert (added["family"], added["version"], added["tags"]) == (
        "acme-parser", "1.0", ["vendor:acme", "gcc"])
    assert added["status"] in ("PENDING", "STARTED") and not added["searched"]
    ref = await wait_for_reference(api, added["sha256"])
    assert ref["status"] == "SUCCESS", ref
    assert ref["searched"] and ref["functions"] >= 8 and ref["error_details"] is None

    # A new index version: shipped + the user references.
    current = await versions(api)
    assert current["index_version"].startswith(shipped["index_version"] + ".u")
    assert current["user_references"] == "1"
    assert current["analysis_version"] == f"{current['version']}+idx.{current['index_version']}"
    listed = (await api.get("/internal/references")).json()
    assert [r["sha256"] for r in listed["references"]] == [ref["sha256"]]
    assert listed["index_version"] == current["index_version"] and listed["next_cursor"] is None

    # Resubmitting the sample analyses it again, and the verdict names the new family.
    after = await analyse(api, programs["app"])
    assert after["celery_task_id"] != before["celery_task_id"]
    results = after["prediction_results"]
    assert results["verdict"] == "acme-parser", results["families"]
    assert results["index_version"] == current["index_version"]
    assert results["model_version"] == current["version"]
    assert results["analysis_version"] == current["analysis_version"]
    info = (await api.get(f"/predictions/{after['sha256_hash']}/status")).json()
    assert info["detailed_status"][MODEL_NAME]["model_version"] == current["analysis_version"]
    family = results["families"]["acme-parser"]
    assert family["status"] == "present" and int(family["functions_matched"]) >= 5
    assert family["reference_versions"] == "1.0"
    evidence = [m for m in results["matches"].values() if m["family"] == "acme-parser"]
    assert {m["reference_function"] for m in evidence} >= {"rl_parse", "rl_rle_encode"}
    assert all(f"user:{ref['sha256'][:12]}" in m["reference_build"] for m in evidence)
    assert "acme-parser" in after["explanation_results"]
    # Its report shows the user reference's own lifted code beside the sample's.
    page = await api.get(f"/predictions/{after['sha256_hash']}/{MODEL_NAME}/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sections = [s for s in page.text.split('<details id="match-')[1:]
                if "a reference a user added" in s]
    assert sections, page.text[:3000]
    for section in sections:
        reference_side = section.split("<h3>Reference function</h3>")[1]
        assert ref["sha256"] in reference_side and "cannot be shown" not in reference_side
        assert reference_side.count('<div class="block') >= 5

    # The same sha256 again: the existing reference, no new run, labels unchanged.
    run = await client.get_workflow_handle(reference_workflow_id(ref["sha256"])).describe()
    again = await add_reference(api, programs["tool"], "copy", family="other", version="9")
    assert again.status_code == 200, again.text
    assert again.json() == ref
    described = await client.get_workflow_handle(reference_workflow_id(ref["sha256"])).describe()
    assert described.run_id == run.run_id

    # Tags do not change what is searched: same index version.
    tagged = await api.patch(f"/internal/references/{ref['sha256']}", json={"tags": ["x"]})
    assert tagged.status_code == 200 and tagged.json()["tags"] == ["x"]
    assert (await versions(api))["index_version"] == current["index_version"]

    # Relabel: a new index version, and the next verdict follows the new label.
    relabelled = await api.patch(f"/internal/references/{ref['sha256']}",
                                 json={"family": "acme-fork", "version": "2.0"})
    assert relabelled.status_code == 200, relabelled.text
    assert (relabelled.json()["family"], relabelled.json()["version"]) == ("acme-fork", "2.0")
    renamed = await versions(api)
    assert renamed["index_version"] not in (current["index_version"], shipped["index_version"])
    forked = await analyse(api, programs["app"])
    assert forked["celery_task_id"] != after["celery_task_id"]
    assert forked["prediction_results"]["verdict"] == "acme-fork"
    assert forked["prediction_results"]["index_version"] == renamed["index_version"]
    assert forked["prediction_results"]["families"]["acme-fork"]["reference_versions"] == "2.0"

    # Remove: back to the shipped index, and to an unknown verdict.
    removed = await api.delete(f"/internal/references/{ref['sha256']}")
    assert removed.status_code == 200, removed.text
    assert (await api.get(f"/internal/references/{ref['sha256']}")).status_code == 404
    assert (await api.delete(f"/internal/references/{ref['sha256']}")).status_code == 404
    assert (await versions(api))["index_version"] == shipped["index_version"]
    last = await analyse(api, programs["app"])
    assert last["celery_task_id"] != forked["celery_task_id"]
    assert last["prediction_results"]["verdict"] == "unknown"
    assert last["prediction_results"]["index_version"] == shipped["index_version"]
    # nothing changed since: a resubmission starts nothing
    await submit(api, programs["app"], "rlapp")
    run = await client.get_workflow_handle(workflow_id(MODEL_NAME, last["sha256_hash"])).describe()
    assert run.run_id == last["celery_task_id"]


async def test_a_non_binary_reference_fails_with_error_details(
    own_api: httpx.AsyncClient, client: Client
) -> None:
    api = own_api
    index_before = (await versions(api))["index_version"]
    junk = b"plain text, not a program\n" + os.urandom(512)
    response = await add_reference(api, junk, "notes.txt", family="acme-parser", version="1.0")
    assert response.status_code == 201, response.text
    sha256 = response.json()["sha256"]
    ref = await wait_for_reference(api, sha256, timeout_s=180)
    assert ref["status"] == "FAILURE" and not ref["searched"]
    assert "no supported executable" in ref["error_details"], ref
    assert (await versions(api))["index_version"] == index_before
    # Bad input fails once: every activity of the run ran one attempt.
    history = await client.get_workflow_handle(reference_workflow_id(sha256)).fetch_history()
    attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                if e.HasField("activity_task_started_event_attributes")]
    assert attempts and max(attempts) == 1
    # A failed reference runs again when added again, with the new labels.
    first_run = (await client.get_workflow_handle(reference_workflow_id(sha256)).describe()).run_id
    retry = await add_reference(api, junk, "notes.txt", family="acme-notes", version="2")
    assert retry.status_code == 200 and retry.json()["family"] == "acme-notes"
    retried = await wait_for_reference(api, sha256, timeout_s=180)
    assert retried["status"] == "FAILURE"
    second = await client.get_workflow_handle(reference_workflow_id(sha256)).describe()
    assert second.run_id != first_run


async def test_bad_reference_requests_get_clear_errors(
    own_api: httpx.AsyncClient, own_settings: Settings, client: Client
) -> None:
    api = own_api
    program = b"\x7fELF" + os.urandom(64)
    cases = [
        ({"version": "1"}, "family"),
        ({"family": "acme"}, "version"),
        ({"family": "unknown", "version": "1"}, "family"),
        ({"family": "two words", "version": "1"}, "family"),
        ({"family": "acme", "version": "1", "tags": ",".join(f"t{i}" for i in range(17))},
         "tags"),
        ({"family": "a" * 65, "version": "1"}, "family"),
    ]
    for form, field in cases:
        response = await add_reference(api, program, "p", **form)
        assert response.status_code == 422, (form, response.text)
        assert any(field in e["loc"] for e in response.json()["detail"]), response.text
    response = await add_reference(api, program, "p", family="acme", version="1" * 2000)
    assert response.status_code == 400 and "longer than" in response.json()["detail"]
    no_file = await api.post("/internal/references", data={"family": "a", "version": "1"},
                             files={"other": ("x", b"x")})
    assert no_file.status_code == 422
    empty = await add_reference(api, b"", "empty", family="acme", version="1")
    assert empty.status_code == 400
    listed = (await api.get("/internal/references", params={"limit": 500})).json()
    assert all(r["family"] != "acme" for r in listed["references"])  # none was added

    missing = "0" * 64
    assert (await api.get(f"/internal/references/{missing}")).status_code == 404
    assert (await api.patch(f"/internal/references/{missing}",
                            json={"family": "x"})).status_code == 404
    assert (await api.patch(f"/internal/references/{missing}", json={})).status_code == 422
    assert (await api.patch(f"/internal/references/{missing}",
                            json={"family": "x", "colour": "red"})).status_code == 422
    assert (await api.get("/internal/references", params={"after": "zz"})).status_code == 422
    assert (await api.get("/internal/references", params={"limit": 0})).status_code == 422
    # Internal operations: an external key gets 403, no key 401.
    for key, code in ((EXTERNAL_KEY, 403), (None, 401)):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with api_client(own_settings, client) as other:
            other.headers.clear()
            other.headers.update(headers)
            assert (await other.get("/internal/references")).status_code == code


async def test_list_pages_with_a_cursor(
    own_api: httpx.AsyncClient, programs: dict[str, Path]
) -> None:
    api = own_api
    shas = []
    for i in range(3):  # junk: fails fast, but is listed all the same
        response = await add_reference(api, f"page {i}\n".encode() + os.urandom(64),
                                       f"p{i}", family="pager", version=str(i))
        assert response.status_code == 201, response.text
        shas.append(response.json()["sha256"])
    seen: list[str] = []
    after = ""
    while True:
        page = (await api.get("/internal/references",
                              params={"after": after, "limit": 2})).json()
        assert len(page["references"]) <= 2
        seen += [r["sha256"] for r in page["references"]]
        if page["next_cursor"] is None:
            break
        after = page["next_cursor"]
    assert seen == sorted(seen) and set(shas) <= set(seen)
    for sha in shas:
        await wait_for_reference(api, sha, timeout_s=180)
        assert (await api.delete(f"/internal/references/{sha}")).status_code == 200


def run_cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AE_URL": f"http://127.0.0.1:{port}", "AE_API_KEY": INTERNAL_KEY}
    return subprocess.run([sys.executable, "-m", "api.references_cli", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


async def test_cli_adds_a_directory_lists_relabels_and_removes(
    own_api: httpx.AsyncClient, own_settings: Settings, temporal_env: WorkflowEnvironment,
    programs: dict[str, Path], tmp_path: Path,
) -> None:
    folder = tmp_path / "refs"
    (folder / "nested").mkdir(parents=True)
    (folder / "rltool-o1").write_bytes(programs["tool_o1"].read_bytes())
    (folder / "nested" / "readme.txt").write_bytes(b"not a program " + os.urandom(32))
    env = {"AE_QUEUE_PREFIX": own_settings.queue_prefix, "AE_API_KEYS": EXTERNAL_KEY,
           "AE_INTERNAL_API_KEYS": INTERNAL_KEY,
           "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host}
    with live_api(own_settings.data_dir, **env) as port:
        # The CLI blocks: run it off the event loop, which serves the workers.
        added = await asyncio.to_thread(run_cli, port, "add", str(folder), "--family",
                                        "cli-family", "--version", "3.1", "--tags", "cli",
                                        "--wait")
        assert added.returncode == 1, added.stdout + added.stderr  # the text file failed
        assert added.stdout.count("added ") == 2
        assert "SUCCESS  cli-family 3.1" in added.stdout
        assert "FAILURE  cli-family 3.1" in added.stdout and "error:" in added.stdout
        tool_sha = next(line.split()[1] for line in added.stdout.splitlines()
                        if line.startswith("done") and "SUCCESS" in line)

        listed = await asyncio.to_thread(run_cli, port, "list")
        assert listed.returncode == 0 and tool_sha in listed.stdout
        assert "index version" in listed.stdout

        relabel = await asyncio.to_thread(run_cli, port, "relabel", tool_sha, "--family", "x2")
        assert relabel.returncode == 0 and f"{tool_sha}  SUCCESS  x2 3.1" in relabel.stdout
        nothing = await asyncio.to_thread(run_cli, port, "relabel", tool_sha)
        assert nothing.returncode == 2 and "--family" in nothing.stderr

        removed = await asyncio.to_thread(run_cli, port, "remove", tool_sha)
        assert removed.returncode == 0 and "removed" in removed.stdout
        again = await asyncio.to_thread(run_cli, port, "remove", tool_sha)
        assert again.returncode == 1 and "404" in again.stderr
        bad = await asyncio.to_thread(run_cli, port, "show", "not-a-sha")
        assert bad.returncode == 1 and "422" in bad.stderr
    gone = await asyncio.to_thread(run_cli, port, "list")
    assert gone.returncode == 3 and "not reachable" in gone.stderr


# --- parts without a deployment --------------------------------------------------------------
def test_index_version_follows_the_labels_not_their_order() -> None:
    a, b = ("a" * 64, "fam", "1"), ("b" * 64, "fam", "2")
    assert index_version("base", []) == "base"
    assert index_version("base", [a, b]) == index_version("base", [b, a])
    assert index_version("base", [a, b]).startswith("base.u")
    assert index_version("base", [a]) != index_version("base", [a, b])
    assert index_version("base", [a]) != index_version("base", [("a" * 64, "other", "1")])
    assert index_version("base", [a]) != index_version("other", [a])
    version = f"{model_card()['version']}+idx.{index_version('x' * 16, [a])}"
    assert len(version) <= 64  # fits the predictions.model_version column


def test_appended_rows_join_a_known_family_or_start_a_new_one() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, 8)).astype(np.float32)
    base = ReferenceIndex(Quantised.of(rows), ["zlib"], ["zlib 1 gcc"], ["x86_64"], ["1"],
                          np.zeros(3, np.int16), [np.asarray([0], np.int32)] * 3,
                          ["inflate", "deflate", "crc32"], np.asarray([9, 9, 9], np.int32),
                          np.asarray([0.5, 1.0, 1.0], np.float32), {"index_version": "v0"})
    extra = [
        ExtraBuild("zlib 2 user:aa", "zlib", "2", "AMD64", rows[:1], ["inflate"], np.asarray([9])),
        ExtraBuild("acme 1 user:bb", "acme", "1", "AMD64", rows[1:], ["f", "g"],
                   np.asarray([7, 8])),
    ]
    grown = base.with_builds(extra, "v0.u1")
    assert grown.version == "v0.u1" and base.version == "v0" and base.n_rows == 3
    assert grown.families == ["zlib", "acme"] and grown.n_rows == 6
    assert grown.row_family.tolist() == [0, 0, 0, 0, 1, 1]
    assert [grown.builds[b[0]] for b in grown.row_builds[3:]] == [
        "zlib 2 user:aa", "acme 1 user:bb", "acme 1 user:bb"]
    assert grown.build_version[-1] == "1" and grown.row_rarity.tolist()[3:] == [1.0, 1.0, 1.0]
    identities = grown.identities()
    assert identities[3] == identities[0]  # zlib's inflate, whichever build: one identity
    assert len(set(identities.tolist())) == 5
    assert np.allclose(grown.vectors.rows(3, 6), rows, atol=0.02)
    with pytest.raises(ValueError, match="shape"):
        base.with_builds([ExtraBuild("bad", "x", "1", "", np.zeros((1, 4), np.float32), ["f"],
                                     np.asarray([5]))], "v")


async def test_an_older_database_gains_the_references_table(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # what schema 1 created
        conn.execute("CREATE TABLE store_info (key VARCHAR(32) PRIMARY KEY, value VARCHAR(128))")
        conn.execute("INSERT INTO store_info VALUES ('schema_version', '1')")
        conn.execute("CREATE TABLE samples (sha256 VARCHAR(64) PRIMARY KEY, size INTEGER, "
                     "filename VARCHAR(255), first_seen DATETIME, last_submitted DATETIME, "
                     "submissions INTEGER)")
        conn.execute("INSERT INTO samples VALUES (?, 1, 'kept', '2026-01-01', '2026-01-01', 1)",
                     ("c" * 64,))
    store = PredictionStore(f"sqlite+aiosqlite:///{db}")
    try:
        await store.init_schema()
        assert await store.schema_version() == SCHEMA_VERSION
        assert (await store.get_sample("c" * 64)).filename == "kept"
        row, created = await store.add_reference("d" * 64, "acme", "1", ["t"], "f")
        assert created and row.status == "PENDING"
        assert (await store.list_references("", 10))[0].sha256 == "d" * 64
    finally:
        await store.close()
