"""Finding samples through the API, on a deployment of its own (real Temporal dev server,
real workers lifting with angr and embedding with FESTIVE; SQLite, then PostgreSQL): List Samples
pages, filters and rejects bad values; Similar Samples finds the sample built from the
same source as the top match, both ways, and one function's neighbours."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import update
from temporalio.client import Client

from common.contracts import MODEL_NAME
from store.models import Sample
from tests.conftest import (
    EXTERNAL_KEY,
    ZLIB_STATIC,
    api_client,
    compile_c,
    make_settings,
    running_workers,
    submit,
    wait_for_final,
)
from tests.postgres import LocalPostgres
from tests.test_pipeline_e2e import ZLIB_PROGRAM

# One source, built twice with different flags: its functions are each other's twins.
TOOLKIT = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned table[256];

void make_table(void) {
    for (unsigned n = 0; n < 256; n++) {
        unsigned c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[n] = c;
    }
}

unsigned checksum(const unsigned char *p, size_t len) {
    unsigned c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

size_t run_length(const unsigned char *in, size_t len, unsigned char *out) {
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && in[j] == in[i] && j - i < 255) j++;
        if (j - i > 2 || in[i] == 0xff) { out[o++] = 0xff; out[o++] = (unsigned char)(j - i); }
        else for (size_t k = i; k < j; k++) out[o++] = in[k];
        out[o++] = in[i];
        i = j;
    }
    return o;
}

int parse_fields(char *line, long *values, int max) {
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(line, ",; ", &save); tok && n < max;
         tok = strtok_r(NULL, ",; ", &save)) {
        char *end;
        long v = strtol(tok, &end, 0);
        if (*end != '\0') { if (strcmp(tok, "-") == 0) v = -1; else continue; }
        values[n++] = v;
    }
    return n;
}

void sort_values(long *v, int n) {
    for (int gap = n / 2; gap > 0; gap /= 2)
        for (int i = gap; i < n; i++) {
            long t = v[i];
            int j = i;
            while (j >= gap && v[j - gap] > t) { v[j] = v[j - gap]; j -= gap; }
            v[j] = t;
        }
}

long median_of(long *v, int n) {
    if (n == 0) return 0;
    sort_values(v, n);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
    char line[512];
    long values[64];
    unsigned char packed[1024];
    make_table();
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strlen(line);
        unsigned sum = checksum((const unsigned char *)line, len);
        size_t plen = run_length((const unsigned char *)line, len, packed);
        int n = parse_fields(line, values, 64);
        printf("%08x %zu %d %ld %s\n", sum, plen, n, median_of(values, n), argc > 1 ? argv[1] : "");
    }
    return 0;
}
"""

# Another program altogether.
OTHER = r"""
#include <stdio.h>
#include <string.h>

int is_prime(unsigned long n) {
    if (n < 2) return 0;
    for (unsigned long d = 2; d * d <= n; d++) if (n % d == 0) return 0;
    return 1;
}

void encode64(const unsigned char *in, size_t len, char *out) {
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = in[i] << 16 | (i + 1 < len ? in[i + 1] << 8 : 0)
                     | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = a[v >> 18 & 63]; out[o++] = a[v >> 12 & 63];
        out[o++] = i + 1 < len ? a[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? a[v & 63] : '=';
    }
    out[o] = '\0';
}

int words(const char *s) {
    int n = 0, in = 0;
    for (; *s; s++) {
        if (*s == ' ' || *s == '\t' || *s == '\n') in = 0;
        else if (!in) { in = 1; n++; }
    }
    return n;
}

int main(void) {
    char line[300], out[500];
    unsigned long primes = 0;
    while (fgets(line, sizeof line, stdin)) {
        encode64((const unsigned char *)line, strlen(line), out);
        for (unsigned long k = 0; k < strlen(line) * 100; k++) primes += is_prime(k);
        printf("%s %d %lu\n", out, words(line), primes);
    }
    return 0;
}
"""


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgresql"])
async def deployment(
    request: pytest.FixtureRequest, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """Its own deployment, on each database in turn; four samples analysed: the toolkit
    at -O2 and at -O1 -fno-inline, another program, and a program with zlib linked in."""
    tmp = tmp_path_factory.mktemp("find")
    settings = make_settings(tmp / "data")
    if request.param == "postgresql":
        server: LocalPostgres = request.getfixturevalue("postgres")
        settings = dataclasses.replace(settings,
                                       database_url_override=await server.create_database())
    binaries = {
        "toolkit-O2": compile_c(tmp, TOOLKIT, "-O2", name="toolkit-O2"),
        "toolkit-O1": compile_c(tmp, TOOLKIT, "-O1", "-fno-inline", name="toolkit-O1"),
        "other": compile_c(tmp, OTHER, "-O2", name="other"),
        "zpack": compile_c(tmp, ZLIB_PROGRAM, "-O2", str(ZLIB_STATIC), name="zpack"),
    }
    async with running_workers(client, settings), api_client(settings, client) as http:
        shas = {name: await submit(http, path, f"{name}.bin") for name, path in binaries.items()}
        for name, sha256 in shas.items():
            status = await wait_for_final(http, sha256)
            assert status["status"][MODEL_NAME] == "SUCCESS", (name, status)
        yield http, shas


async def test_same_source_builds_are_each_others_top_similar_sample(
    deployment: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    api, shas = deployment
    a, b = shas["toolkit-O2"], shas["toolkit-O1"]
    for this, twin in ((a, b), (b, a)):
        response = await api.get(f"/samples/{this}/similar",
                                 headers={"Authorization": f"Bearer {EXTERNAL_KEY}"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["samples_indexed"] >= 4 and body["functions_searched"] > 0
        top = body["items"][0]
        assert top["sha256"] == twin, body
        assert top["filename"].startswith("toolkit") and top["shared_count"] >= 3
        names = {(p["name"], p["other_name"]) for p in top["shared_functions"]}
        assert ("checksum", "checksum") in names or ("run_length", "run_length") in names, names
        assert all(p["similarity"] >= body["min_similarity"] for p in top["shared_functions"])
        scores = [item["score"] for item in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert this not in {item["sha256"] for item in body["items"]}

    # one function's neighbours: only pairs of that function
    pairs = (await api.get(f"/samples/{a}/similar")).json()["items"][0]["shared_functions"]
    chosen = pairs[0]
    response = await api.get(f"/samples/{a}/similar", params={"function": chosen["address"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["functions_searched"] == 1 and body["items"][0]["sha256"] == b
    assert {p["address"] for item in body["items"] for p in item["shared_functions"]} \
        == {chosen["address"]}
    by_name = (await api.get(f"/samples/{a}/similar",
                             params={"function": chosen["name"]})).json()
    assert by_name["items"][0]["shared_functions"][0]["address"] == chosen["address"]


async def test_similar_samples_errors(
    deployment: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    api, shas = deployment
    missing = (await api.get(f"/samples/{'e' * 64}/similar")).json()
    assert "no prediction" in missing["detail"]
    response = await api.get(f"/samples/{shas['other']}/similar", params={"function": "0x1"})
    assert response.status_code == 404 and "no function" in response.json()["detail"]
    for params in ({"limit": 0}, {"min_similarity": 2}, {"model": "nope"}):
        response = await api.get(f"/samples/{shas['other']}/similar", params=params)
        assert response.status_code == 422, (params, response.text)
    assert (await api.get("/samples/xyz/similar")).status_code == 422


async def test_family_filter_finds_the_sample_with_that_family(
    deployment: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    api, shas = deployment
    body = (await api.get("/samples", params={"family": "zlib"})).json()
    assert [item["sha256"] for item in body["items"]] == [shas["zpack"]]
    item = body["items"][0]
    assert "zlib" in item["families"] and item["verdict"] == "zlib"
    assert item["status"] == "SUCCESS" and item["model"] == MODEL_NAME
    assert item["filename"] == "zpack.bin" and 0 < item["confidence"] <= 1
    assert item["analysis_version"] and body["next"] is None
    results = (await api.get(f"/predictions/{shas['zpack']}/{MODEL_NAME}/results")).json()
    assert item["families"] == results["prediction_results"]["families_present"].split()
    assert (await api.get("/samples", params={"verdict": "zlib"})).json()["items"] == [item]
    verdicts = {}
    for sha256 in shas.values():
        stored = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
        verdicts[sha256] = stored["prediction_results"]["verdict"]
    unknown = (await api.get("/samples", params={"verdict": "unknown"})).json()["items"]
    assert {i["sha256"] for i in unknown} == {s for s, v in verdicts.items() if v == "unknown"}
    assert "unknown" in verdicts.values(), verdicts
    assert (await api.get("/samples", params={"family": "nonesuch"})).json()["items"] == []
    glob = (await api.get("/samples", params={"filename": "TOOLKIT-*.bin"})).json()["items"]
    assert {i["sha256"] for i in glob} == {shas["toolkit-O2"], shas["toolkit-O1"]}
    sub = (await api.get("/samples", params={"filename": "kit-o1"})).json()["items"]
    assert [i["sha256"] for i in sub] == [shas["toolkit-O1"]]


async def test_pages_return_every_sample_exactly_once(
    deployment: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    api, shas = deployment
    store = api._transport.app.state.ae.store  # type: ignore[attr-defined]
    # five more samples recorded (not analysed), two of them at one submission time
    extra = [hashlib.sha256(f"page-{i}".encode()).hexdigest() for i in range(5)]
    moment = datetime(2020, 5, 1)
    for i, sha256 in enumerate(extra):
        await store.record_sample(sha256, 1, f"page-{i}")
        async with store.session.begin() as session:
            await session.execute(update(Sample).where(Sample.sha256 == sha256)
                                  .values(first_seen=moment + timedelta(seconds=i // 2)))
    everything = set(shas.values()) | set(extra)
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params = {"limit": 3, **({"after": after} if after else {})}
        response = await api.get("/samples", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert len(body["items"]) <= 3
        seen += [item["sha256"] for item in body["items"]]
        after = body["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) and set(seen) == everything and pages >= 3
    assert seen[:5] == sorted(extra[:2]) + sorted(extra[2:4]) + extra[4:]
    stamps = [(await api.get("/samples", params={"limit": 500})).json()["items"]]
    times = [item["submitted_at"] for item in stamps[0]]
    assert times == sorted(times)
    recorded = next(i for i in stamps[0] if i["sha256"] == extra[0])
    assert recorded["status"] is None and recorded["verdict"] is None


async def test_bad_values_are_rejected_with_a_message(
    deployment: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    api, _shas = deployment
    for cursor in ("garbage!", "e30", "WyJ4IiwgInkiXQ", "a" * 200):
        response = await api.get("/samples", params={"after": cursor})
        assert response.status_code == 400, (cursor, response.text)
        assert "not a cursor" in response.json()["detail"]
    for params in ({"limit": 0}, {"limit": 501}, {"status": "DONE"}, {"model": "x"},
                   {"filename": "a\x00b"}, {"analysis_version": "1.2\x00"},
                   {"submitted_after": "yesterday"}, {"family": "a b"},
                   {"submitted_after": "2026-02-01", "submitted_before": "2026-01-01"}):
        response = await api.get("/samples", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["detail"]
    response = await api.get("/samples", params={"submitted_after": "2000-01-01T00:00:00Z",
                                                 "submitted_before": "2100-01-01"})
    assert response.status_code == 200 and response.json()["items"]
    assert (await api.get("/samples", headers={"Authorization": "Bearer nope"})).status_code \
        == 401


def test_the_api_side_index_needs_no_torch() -> None:
    """The API process builds and searches the similar-sample index with numpy alone."""
    script = (
        "import sys, numpy as np\n"
        "import api.app, api.samples, api.similar\n"
        "from festive.attribution.similar import Function, SampleFunctions, SimilarIndex\n"
        "v = np.eye(3, 8, dtype=np.float32)\n"
        "s = SampleFunctions.of(v, [Function('c', hex(i), '', 6) for i in range(3)], 'w')\n"
        "index = SimilarIndex()\n"
        "index.add([(1, 'a', s), (2, 'b', s)])\n"
        "found = index.search('a', s, np.arange(3), 5, 0.9)\n"
        "assert [f.sha256 for f in found] == ['b'] and len(found[0].shared) == 3, found\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
