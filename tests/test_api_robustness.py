"""A hostile client against the API as it runs (`python -m api.server`, real HTTP, the
test Temporal dev server, one SQLite file shared by two API processes).

Property-based (hypothesis): JSON bodies with lone surrogates (escaped, and raw in
the UTF-8), NUL, NaN and infinities, deep nesting and large strings, sent to every
operation; each answer is 2xx or 4xx, and every value accepted reads back unchanged
from Read Prediction, Read Predictions and Get Results (a rejected one changes nothing).
Also: a body over its cap is 413, a trailing slash is a 404 and never a redirect, a
revoke storm on one running sample gives exactly one 200, and a value stored by
something other than the API (a worker, an older version) never breaks a read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.testing import WorkflowEnvironment

from api.app import ROUTES
from common.contracts import MODEL_NAME
from tests.live_api import live_api

INTERNAL_KEY = "robust-internal-key"
AUTH = {"Authorization": f"Bearer {INTERNAL_KEY}"}
BODY_CAP = 1024 * 1024  # both JSON operations, lowered so that "large" is cheap to reach
MODEL = quote(MODEL_NAME, safe="")
MAX_EXAMPLES = 60
# Hypothesis warns when it prints a 1 MiB example; that size is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# --- the servers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("robust")


@pytest.fixture(scope="module")
def ports(temporal_env: WorkflowEnvironment, data: Path) -> Iterator[tuple[int, int]]:
    """Two API processes on one database and the test Temporal (a queue no worker serves,
    so submitted samples stay running)."""
    env = {
        "AE_AUTH": "enabled", "AE_API_KEYS": "robust-external-key",
        "AE_INTERNAL_API_KEYS": INTERNAL_KEY,
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "AE_QUEUE_PREFIX": "robust-no-workers", "AE_MAX_UPLOAD_BYTES": str(64 * 1024),
        "AE_MAX_PREDICTIONS_BODY_BYTES": str(BODY_CAP),
        "AE_MAX_EXPLANATION_BODY_BYTES": str(BODY_CAP),
    }
    with live_api(data, **env) as first, live_api(data, **env) as second:
        yield first, second


@pytest.fixture(scope="module")
def http(ports: tuple[int, int]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", headers=AUTH,
                      timeout=60) as client:
        yield client


def _new_row(http: httpx.Client) -> str:
    sha = hashlib.sha256(os.urandom(16)).hexdigest()
    assert http.post(f"/internal/predictions/{sha}/{MODEL}").status_code == 200
    return sha


# --- strategies -----------------------------------------------------------------------

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.one_of(
    st.text(max_size=12),
    st.tuples(st.text(max_size=4), SURROGATE, st.text(max_size=4)).map("".join),
    st.sampled_from(["", "\x00", "a\x00b", "\ud83d\ude00", "\ud83d", "\ude00x", "NaN",
                     "Infinity", "\u202e", "\ufeff", "\\", '"']),
    # Large: one size under the cap, one over it (413).
    st.sampled_from([100_000, BODY_CAP + 10]).map(lambda n: "x" * n),
)
LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
JSON = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
# The seed's shape for results, with hostile text everywhere (and sometimes other JSON).
RESULTS = st.dictionaries(
    TEXT,
    st.one_of(TEXT, st.dictionaries(TEXT, st.dictionaries(TEXT, TEXT, max_size=2), max_size=2),
              JSON),
    max_size=4,
)


def _encode(value: Any, raw_utf8: bool) -> bytes:
    """JSON text as a client may send it: NaN/Infinity written out, a lone surrogate as
    a \\u escape or (raw_utf8) as its three UTF-8-style bytes."""
    if raw_utf8:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


def _deep(n: int, key: str) -> bytes:
    return (f'{{"{key}": {{"a": '.encode() + b"[" * n + b"]" * n + b"}}")


def _bodies(key: str, shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    documents = st.one_of(
        shaped.map(lambda v: {key: v}),
        JSON.map(lambda v: {key: v}),
        JSON,
        st.tuples(shaped, JSON).map(lambda t: {key: t[0], "extra": t[1]}),
    )
    return st.one_of(
        st.tuples(documents, st.booleans()).map(lambda t: _encode(*t)),
        st.sampled_from([10, 1_000, 100_000]).map(lambda n: _deep(n, key)),
    )


PREDICTION_BODIES = _bodies("prediction_results", RESULTS)
EXPLANATION_BODIES = _bodies("explanation_results", TEXT)

# --- accepted values read back, rejected ones change nothing -----------------------------


def _read_back(http: httpx.Client, sha: str) -> dict[str, Any]:
    """The row through all three reads, which must agree."""
    one = http.get(f"/internal/predictions/{sha}/{MODEL}")
    every = http.get(f"/internal/predictions/{sha}")
    external = http.get(f"/predictions/{sha}/{MODEL}/results")
    for response in (one, every, external):
        assert response.status_code == 200, response.text[:500]
    row = one.json()
    assert every.json() == [row]
    assert external.json() == row
    return row


@pytest.mark.parametrize(("operation", "field", "bodies"), [
    ("results", "prediction_results", PREDICTION_BODIES),
    ("explanation", "explanation_results", EXPLANATION_BODIES),
])
def test_hostile_bodies_are_refused_or_read_back(
    http: httpx.Client, operation: str, field: str, bodies: st.SearchStrategy[bytes]
) -> None:
    @given(body=bodies)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(body: bytes) -> None:
        sha = _new_row(http)
        response = http.put(f"/internal/predictions/{sha}/{MODEL}/{operation}", content=body,
                            headers={"Content-Type": "application/json"})
        assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500, (
            f"{response.status_code}: {response.text[:300]} for {body[:200]!r}"
        )
        # Accepted: the value sent (a field left out is null); refused: nothing changed.
        expected = json.loads(body).get(field) if response.status_code == 200 else None
        assert _read_back(http, sha)[field] == expected

    check()


# Unicode text the API must accept: encodable as UTF-8 (no lone surrogates), no NUL.
VALID_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")


@given(
    results=st.dictionaries(
        st.text(VALID_CHARS, max_size=10),
        st.one_of(
            st.text(VALID_CHARS, max_size=50),
            st.dictionaries(st.text(VALID_CHARS, max_size=5),
                            st.dictionaries(st.sampled_from(["a", "é", "😀"]),
                                            st.sampled_from(["", "1.0", "x" * 5000]),
                                            max_size=2),
                            max_size=2),
        ),
        max_size=5,
    ),
    error=st.none() | st.text(VALID_CHARS, max_size=30),
    raw_utf8=st.booleans(),
)
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_valid_values_are_accepted_and_read_back(
    http: httpx.Client, results: dict[str, Any], error: str | None, raw_utf8: bool
) -> None:
    sha = _new_row(http)
    query = "" if error is None else f"?error_details={quote(error, safe='')}"
    response = http.put(f"/internal/predictions/{sha}/{MODEL}/results{query}",
                        content=_encode({"prediction_results": results}, raw_utf8),
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:500]
    row = _read_back(http, sha)
    assert row["prediction_results"] == results
    assert row["error_details"] == error


# --- every operation -------------------------------------------------------------------

HOSTILE_SEGMENT = st.one_of(
    st.text(max_size=70).map(lambda s: quote(s, safe="")),
    st.sampled_from(["%ED%A0%80", "%FF", "%00", "%F0%9F%98%80", "%2F", "a" * 64, "A" * 64,
                     "0" * 64 + "%00", MODEL, "FESTIVE Func Sim", "%25", "NaN"]),
)


@pytest.mark.parametrize(("method", "path"), [(r[0], r[1]) for r in ROUTES])
def test_every_operation_answers_2xx_or_4xx(http: httpx.Client, method: str, path: str) -> None:
    known = _new_row(http)
    names = ("sha256_hash", "model_name", "model", "celery_task_id", "batch_id")

    @given(
        segments=st.fixed_dictionaries({
            name: st.one_of(HOSTILE_SEGMENT, st.sampled_from([known, MODEL, str(uuid.uuid4())]))
            for name in names
        }),
        query=st.dictionaries(
            st.sampled_from(["error_details", "include_failed", "concurrency"]),
            HOSTILE_SEGMENT, max_size=3,
        ),
        body=st.one_of(PREDICTION_BODIES, EXPLANATION_BODIES),
    )
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(segments: dict[str, str], query: dict[str, str], body: bytes) -> None:
        url = path.format(**segments)
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        if path == "/samples":
            filename = body[:40].replace(b'"', b"").replace(b"\r", b"").replace(b"\n", b"")
            body = (b'--b\r\nContent-Disposition: form-data; name="sample"; filename="'
                    + filename + b'"\r\n\r\n' + body[:1000] + b"\r\n--b--\r\n")
            headers = {"Content-Type": "multipart/form-data; boundary=b"}
        else:
            headers = {"Content-Type": "application/json"}
        response = http.request(method, url, content=body, headers=headers)
        assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500, (
            f"{method} {url} -> {response.status_code}: {response.text[:300]}"
        )
        # Whatever happened, the known row still reads (or was deleted: 404).
        assert http.get(f"/internal/predictions/{known}").status_code in (200, 404)

    check()


# --- sizes, paths, revoke, stored values --------------------------------------------------


@pytest.mark.parametrize("operation", ["results", "explanation"])
def test_a_body_over_the_cap_is_413(http: httpx.Client, operation: str) -> None:
    sha = _new_row(http)
    url = f"/internal/predictions/{sha}/{MODEL}/{operation}"
    big = b'{"explanation_results": "' + b"x" * BODY_CAP + b'"}'
    # Declared up front, and streamed without a length (chunked): both refused.
    assert http.put(url, content=big, headers={"Content-Type": "application/json"}
                    ).status_code == 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start:start + 64 * 1024]

    response = http.put(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert _read_back(http, sha)["explanation_results"] is None


@pytest.mark.parametrize("path", ["/ping/", "/versions/", "/docs/", "/nowhere",
                                  f"/internal/predictions/{'a' * 64}/"])
def test_no_redirect_for_a_trailing_slash_or_unknown_path(http: httpx.Client, path: str) -> None:
    response = http.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


def test_a_revoke_storm_gives_exactly_one_200(http: httpx.Client, ports: tuple[int, int]) -> None:
    """Fifty revokes of one running sample, split across two API processes."""
    sample = b"not a binary, never analysed: no worker serves this queue " + os.urandom(16)
    submitted = http.post("/samples", files={"sample": ("storm", sample)})
    assert submitted.status_code == 200, submitted.text
    sha = submitted.json()["sample_id"]
    assert http.get(f"/internal/queue/{sha}").status_code == 200  # the run exists

    async def storm() -> list[int]:
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            answers = await asyncio.gather(*(
                client.post(f"http://127.0.0.1:{ports[i % 2]}/predictions/{sha}/{MODEL}/revoke")
                for i in range(50)
            ))
        return [a.status_code for a in answers]

    statuses = asyncio.run(storm())
    assert statuses.count(200) == 1, statuses
    assert statuses.count(409) == 49, statuses
    # And later: still 409, the run is already being revoked.
    assert http.post(f"/predictions/{sha}/{MODEL}/revoke").status_code == 409


def test_values_stored_by_others_never_break_a_read(http: httpx.Client, data: Path) -> None:
    """A worker (an archive member name decoded with surrogateescape) or an older API
    version may have stored results no response could carry; reads answer U+FFFD there."""
    sha = _new_row(http)
    with sqlite3.connect(data / "attribution.db") as db:
        db.execute(
            "UPDATE predictions SET prediction_results = ? WHERE sha256_hash = ?",
            ('{"verdict": "\\udcff", "children": {"\\ud800": {"name": "a\\udfffb"}}}', sha),
        )
    row = _read_back(http, sha)
    assert row["prediction_results"] == {"verdict": "\ufffd",
                                         "children": {"\ufffd": {"name": "a\ufffdb"}}}
