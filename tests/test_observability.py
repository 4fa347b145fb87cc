"""Metrics, logs and traces of the real processes: a dev server, one worker per role and
the API (`python -m api.server`) as subprocesses, each with its own Prometheus endpoint,
JSON logs and console tracing. The endpoints answer during an analysis and their counters
move; a failed activity's log line carries its sha256 and run id; no API key appears in
any log; one trace runs from the API request into the activities.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.config import PROJECT_ROOT, Settings
from common.contracts import MODEL_NAME
from tests.conftest import compile_c
from tests.test_faults import ROLES, Services, free_port, many_functions_source, wait_for_port

EXTERNAL = f"ext-{uuid.uuid4().hex}"
INTERNAL = f"int-{uuid.uuid4().hex}"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    services = Services(root=tmp_path_factory.mktemp("observability"))
    services.start_temporal()
    prefix = f"obs-{uuid.uuid4().hex[:6]}"
    keys = {"AE_API_KEYS": EXTERNAL, "AE_INTERNAL_API_KEYS": INTERNAL, "AE_LOG_FORMAT": "json",
            "AE_TRACING": "console"}
    ports = {role: free_port() for role in (*ROLES, "api")}
    api = None
    try:
        for role in ROLES:
            services.start_worker(role, prefix, AE_METRICS_PORT=str(ports[role]), **keys)
        api_port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AE_BLOB_DIR")}
        env.update(TEMPORAL_ADDRESS=services.address, AE_DATA_DIR=str(services.data_dir),
                   AE_QUEUE_PREFIX=prefix, API_PORT=str(api_port),
                   AE_METRICS_PORT=str(ports["api"]), PYTHONUNBUFFERED="1", **keys)
        with open(services.log("api"), "wb") as log:
            api = subprocess.Popen([sys.executable, "-m", "api.server"], cwd=PROJECT_ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(api_port)
        yield {"services": services, "ports": ports, "url": f"http://127.0.0.1:{api_port}"}
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        services.stop_workers()
        services.stop_temporal()


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric over the series whose labels include `labels`."""
    return sum(value for (metric, series), value in samples.items()
               if metric == name and set(labels.items()) <= set(series))


def _named(samples: Samples, prefix: str) -> set[str]:
    """The SDK's series of a metric (with or without the _total suffix)."""
    return {name for name, _ in samples if name in (prefix, f"{prefix}_total")}


def scrape_all(ports: dict[str, int]) -> dict[str, Samples]:
    return {role: scrape(port) for role, port in ports.items()}


def wait_final(http: httpx.Client, sha256: str, want: set[str] | None = None) -> dict[str, Any]:
    want = want or {"SUCCESS", "FAILURE", "REVOKED"}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        body = http.get(f"/predictions/{sha256}/status").json()
        if body["status"].get(MODEL_NAME) in want:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{sha256} did not reach {want}")


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def test_metrics_move_and_logs_carry_context(deployment: dict[str, Any], tmp_path: Path) -> None:
    ports, services = deployment["ports"], deployment["services"]
    before = scrape_all(ports)
    program = compile_c(tmp_path, many_functions_source(12), "-O0", name="obs").read_bytes()
    with httpx.Client(base_url=deployment["url"], timeout=60,
                      headers={"Authorization": f"Bearer {INTERNAL}"}) as http:
        good = http.post("/samples", files={"sample": ("obs", program + uuid.uuid4().bytes)})
        bad = http.post("/samples", files={"sample": ("notes.txt", b"plain text, no binary\n")})
        assert good.status_code == bad.status_code == 200, (good.text, bad.text)
        good_sha, bad_sha = good.json()["sample_id"], bad.json()["sample_id"]
        wait_final(http, good_sha, want={"STARTED", "SUCCESS"})
        during = scrape_all(ports)  # every endpoint answers while the analysis runs
        assert all(during.values())
        assert wait_final(http, good_sha)["status"][MODEL_NAME] == "SUCCESS"
        failed = wait_final(http, bad_sha)
        assert failed["status"][MODEL_NAME] == "FAILURE"
        bad_run = failed["detailed_status"][MODEL_NAME]["run_id"]
        # a key in a path is refused (422) and must not reach the log in clear
        assert http.get(f"/predictions/{INTERNAL}/status").status_code == 422
        assert httpx.get(f"{deployment['url']}/ping",
                         headers={"Authorization": f"Bearer {EXTERNAL}"}).status_code == 200
    after = scrape_all(ports)

    def moved(role: str, name: str, **labels: str) -> float:
        return total(after[role], name, **labels) - total(before[role], name, **labels)

    # API: requests by operation and status code, and their latency
    assert moved("api", "ae_api_requests_total", operation="Submit Sample", status="200") == 2
    assert moved("api", "ae_api_request_duration_seconds_count", operation="Get Status") > 0
    # orchestration: stage durations, outcomes, failures by type; the SDK's own metrics
    assert moved("orchestration", "ae_stage_duration_seconds_count", stage="lift") >= 1
    assert moved("orchestration", "ae_analyses_total", outcome="success") == 1
    assert moved("orchestration", "ae_analyses_total", outcome="failure") == 1
    assert moved("orchestration", "ae_analysis_failures_total", stage="unpack",
                 type="BadSample") == 1
    completed = _named(after["orchestration"], "temporal_workflow_completed")
    assert completed and sum(moved("orchestration", n) for n in completed) >= 1, \
        sorted({n for n, _ in after["orchestration"] if n.startswith("temporal_")})
    assert ("ae_samples_in_flight", (("ae_role", "orchestration"),)) in {
        (name, tuple((k, v) for k, v in labels if k == "ae_role"))
        for name, labels in after["orchestration"]}
    # cpu: lifts, functions lifted, the angr child's peak memory; the SDK's task slots
    assert moved("cpu", "ae_lifts_total", cached="false") == 1
    assert moved("cpu", "ae_functions_lifted_total") >= 12
    assert moved("cpu", "ae_lift_child_peak_rss_bytes_count") == 1
    assert total(after["cpu"], "ae_lift_child_peak_rss_bytes_sum") > 10 << 20
    failed_activities = _named(after["cpu"], "temporal_activity_execution_failed")
    assert failed_activities and sum(moved("cpu", n) for n in failed_activities) >= 1, \
        sorted({n for n, _ in after["cpu"] if n.startswith("temporal_")})
    assert any(name.startswith("temporal_worker_task_slots") for name, _ in after["cpu"])
    # gpu: functions judged, verdicts by family
    assert moved("gpu", "ae_functions_judged_total") >= 12
    assert moved("gpu", "ae_verdicts_total") == 1

    logs = {path.name: path for path in (services.root / "logs").glob("*.log")}
    worker_lines = {name: json_lines(path) for name, path in logs.items() if "-cpu-" in name
                    or "-orchestration-" in name or "-gpu-" in name}
    cpu_lines = next(lines for name, lines in worker_lines.items() if "-cpu-" in name)
    failure = [line for line in cpu_lines
               if line.get("activity") == "unpack_sample" and line.get("sha256") == bad_sha
               and line["level"] in ("warning", "error")]
    assert failure, "no log line of the failed unpack"
    assert failure[0]["run_id"] == bad_run and failure[0]["attempt"] == 1
    assert "BadSample" in failure[0].get("exception", "") + failure[0]["message"]
    orchestration = next(v for k, v in worker_lines.items() if "-orchestration-" in k)
    stages = [line["message"] for line in orchestration if line.get("sha256") == good_sha]
    assert "stage lift" in stages and "stage done" in stages
    for lines in worker_lines.values():
        for line in lines:
            if str(line.get("workflow_id", "")).startswith("analyze/"):
                assert line.get("sha256") and line.get("run_id"), line
    api_lines = json_lines(logs["api.log"])
    assert any(line.get("operation") == "Get Status" and line.get("sha256") == good_sha
               for line in api_lines)
    for name, path in logs.items():
        text = path.read_text(errors="replace")
        assert EXTERNAL not in text and INTERNAL not in text, f"a key in {name}"
    assert any("***" in line.get("message", "") for line in api_lines)

    # Tracing (AE_TRACING=console): the submission's trace runs from the API request
    # through the workflow it started into the activities on the workers.
    spans = [line for lines in (api_lines, *worker_lines.values()) for line in lines
             if "context" in line and "name" in line]
    submit_span = next(s for s in spans if s["name"] == "POST Submit Sample"
                       and s["attributes"].get("http.response.status_code") == 200)
    trace_id = submit_span["context"]["trace_id"]
    names = {s["name"] for s in spans if s["context"]["trace_id"] == trace_id}
    assert {"StartWorkflow:AnalyzeSample", "RunWorkflow:AnalyzeSample",
            "RunActivity:unpack_sample"} <= names, names


def test_settings_repr_holds_no_secret() -> None:
    settings = Settings(api_keys=(EXTERNAL,), internal_api_keys=(INTERNAL,),
                        database_url_override="postgresql+asyncpg://ae:hunter2secret@db/ae")
    text = repr(settings)
    assert EXTERNAL not in text and INTERNAL not in text and "hunter2secret" not in text
