"""The seed's contract: every operation, its summary, tag, parameters and shapes."""

from __future__ import annotations

import hashlib
import os
import uuid

import httpx

from common.contracts import MODEL_NAME
from store.models import SCHEMA_VERSION

SEED_OPERATIONS = {
    # summary: (tag, parameter names)
    "Ping": ("Health Check", set()),
    "Submit Sample": ("Sample", set()),
    "Get Status": ("Prediction", {"sha256_hash"}),
    "Get Results": ("Prediction", {"model_name", "sha256_hash"}),
    "Revoke Prediction Task": ("Revoke", {"model_name", "sha256_hash"}),
    "Revoke Task": ("Revoke", {"sha256_hash"}),
    "Queue Status Retrieval": ("Queue", {"sha256_hash"}),
    "Queue FESTIVE Task": ("Queue", {"sha256_hash"}),
    "Create Prediction": ("CRUD", {"sha256_hash", "model_name"}),
    "Read Predictions": ("CRUD", {"sha256_hash"}),
    "Read Prediction Info": ("CRUD", {"sha256_hash"}),
    "Read Prediction": ("CRUD", {"model_name", "sha256_hash"}),
    "Update Celery Task ID": ("CRUD", {"sha256_hash", "model", "celery_task_id"}),
    "Update Predictions": ("CRUD", {"sha256_hash", "model", "error_details"}),
    "Update Explanations": ("CRUD", {"sha256_hash", "model", "error_details"}),
    "Delete prediction": ("CRUD", {"sha256_hash", "model"}),
    "Get Versions": ("Meta", set()),
    "Get Version of Crystal Ball": ("Meta", set()),
    "Get Version of Prediction Store": ("Meta", set()),
}

# Not in the seed: reference samples users add.
REFERENCE_OPERATIONS = {
    "Add Reference": ("post", "/internal/references"),
    "List References": ("get", "/internal/references"),
    "Get Reference": ("get", "/internal/references/{sha256_hash}"),
    "Relabel Reference": ("patch", "/internal/references/{sha256_hash}"),
    "Remove Reference": ("delete", "/internal/references/{sha256_hash}"),
}

# Not in the seed: batch reanalysis, started, watched, retried and cancelled.
BATCH_OPERATIONS = {
    "Queue Reanalysis": ("post", "/internal/queue/reanalysis"),
    "Get Reanalysis Progress": ("get", "/internal/queue/reanalysis/{batch_id}"),
    "Retry Failed Reanalyses": ("post", "/internal/queue/reanalysis/{batch_id}/retry-failed"),
    "Cancel Reanalysis": ("post", "/internal/queue/reanalysis/{batch_id}/cancel"),
}

# Not in the seed: finding samples (api/samples.py).
SAMPLE_OPERATIONS = {
    "List Samples": ("get", "/samples"),
    "Similar Samples": ("get", "/samples/{sha256_hash}/similar"),
}


# Not in the seed: an analysis as an HTML page (api/report.py).
REPORT_OPERATIONS = {"Get Report": ("get", "/predictions/{sha256_hash}/{model_name}/report")}


def random_sha() -> str:
    return hashlib.sha256(os.urandom(16)).hexdigest()


async def test_openapi_lists_every_seed_operation(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert spec["info"]["title"] == "Attribution Engine v2"
    assert spec["info"]["version"] == "2.4.8"
    assert spec["info"]["license"]["name"] == "AGPLv3"
    found = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = {p["name"] for p in op.get("parameters", [])}
            found[op["summary"]] = (op["tags"][0], params, path, method)
    # The seed's operations, plus batch reanalysis and references for operators.
    assert set(found) == (set(SEED_OPERATIONS) | set(BATCH_OPERATIONS)
                          | set(REFERENCE_OPERATIONS) | set(REPORT_OPERATIONS)
                          | set(SAMPLE_OPERATIONS))
    for summary, (method, path) in REPORT_OPERATIONS.items():
        assert found[summary][0] == "Prediction" and found[summary][2:] == (path, method)
        assert found[summary][1] == {"sha256_hash", "model_name", "match"}
        assert "text/html" in spec["paths"][path][method]["responses"]["200"]["content"]
    for summary, (method, path) in SAMPLE_OPERATIONS.items():
        assert found[summary][0] == "Sample" and found[summary][2:] == (path, method)
    for summary, (method, path) in BATCH_OPERATIONS.items():
        assert found[summary][0] == "Queue" and found[summary][2:] == (path, method)
    for summary, (method, path) in REFERENCE_OPERATIONS.items():
        assert found[summary][0] == "References" and found[summary][2:] == (path, method)
    for summary, (tag, params) in SEED_OPERATIONS.items():
        assert found[summary][0] == tag, summary
        assert found[summary][1] == params, (summary, found[summary][1])
    submit = spec["paths"]["/samples"]["post"]["requestBody"]["content"]
    schema_ref = submit["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "sample" in spec["components"]["schemas"][schema_ref]["properties"]


async def test_ping_and_versions(api: httpx.AsyncClient) -> None:
    assert (await api.get("/ping")).json() == {"check": True}
    versions = (await api.get("/versions")).json()
    assert versions["attribution-api"] == "2.4.8"
    assert "temporalio" in versions["crystal-ball"]
    assert f"schema {SCHEMA_VERSION}" in versions["prediction-store"]
    model = versions[MODEL_NAME]
    assert model["version"] and len(model["weights_sha256"]) == 64
    cb = (await api.get("/internal/versions/crystal-ball")).json()
    assert cb == {"crystal-ball": versions["crystal-ball"]}
    ps = (await api.get("/internal/versions/prediction-store")).json()
    assert ps == {"prediction-store": versions["prediction-store"]}


async def test_crud_round_trip(api: httpx.AsyncClient) -> None:
    sha = random_sha()
    base = f"/internal/predictions/{sha}"
    assert (await api.get(base)).status_code == 404
    created = await api.post(f"{base}/{MODEL_NAME}")
    assert created.status_code == 200 and created.json() is None
    assert (await api.post(f"{base}/{MODEL_NAME}")).status_code == 409

    row = (await api.get(f"{base}/{MODEL_NAME}")).json()
    assert row == {
        "model": MODEL_NAME, "error_details": None, "sha256_hash": sha, "predicted_at": None,
        "celery_task_id": None, "prediction_results": None, "explanation_results": None,
    }
    task_id = str(uuid.uuid4())
    assert (await api.put(f"{base}/{MODEL_NAME}/task/{task_id}")).status_code == 200
    results = {"verdict": "zlib", "families": {"zlib": {"functions_matched": "3"}}}
    updated = await api.put(f"{base}/{MODEL_NAME}/results", json={"prediction_results": results})
    assert updated.status_code == 200, updated.text
    explained = await api.put(
        f"{base}/{MODEL_NAME}/explanation", json={"explanation_results": "# zlib"}
    )
    assert explained.status_code == 200

    row = (await api.get(f"{base}/{MODEL_NAME}")).json()
    assert row["celery_task_id"] == task_id
    assert row["prediction_results"] == results
    assert row["explanation_results"] == "# zlib"
    assert row["predicted_at"] and row["error_details"] is None
    assert (await api.get(base)).json() == [row]
    info = (await api.get(f"{base}/info")).json()
    assert info == [{k: row[k] for k in
                     ("model", "error_details", "sha256_hash", "predicted_at", "celery_task_id")}]
    # Get Results reads the same row.
    assert (await api.get(f"/predictions/{sha}/{MODEL_NAME}/results")).json() == row

    failed = await api.put(
        f"{base}/{MODEL_NAME}/results", params={"error_details": "lift crashed"},
        json={"prediction_results": None},
    )
    assert failed.status_code == 200
    row = (await api.get(f"{base}/{MODEL_NAME}")).json()
    assert row["error_details"] == "lift crashed" and row["prediction_results"] is None

    assert (await api.delete(f"{base}/{MODEL_NAME}")).status_code == 200
    assert (await api.get(f"{base}/{MODEL_NAME}")).status_code == 404
    assert (await api.delete(f"{base}/{MODEL_NAME}")).status_code == 404
    assert (await api.put(f"{base}/{MODEL_NAME}/task/{task_id}")).status_code == 404


async def test_bad_input_gets_clear_4xx(api: httpx.AsyncClient) -> None:
    bad_hashes = ["abc", "g" * 64, "a" * 63, "a" * 65]
    for bad in bad_hashes:
        for path in (f"/predictions/{bad}/status", f"/predictions/{bad}/{MODEL_NAME}/results",
                     f"/internal/predictions/{bad}", f"/internal/queue/{bad}"):
            response = await api.get(path)
            assert response.status_code == 422, (path, response.status_code)
    sha = random_sha()
    assert (await api.get(f"/predictions/{sha}/Other Model/results")).status_code == 422
    assert (await api.put(
        f"/internal/predictions/{sha}/{MODEL_NAME}/task/not-a-uuid"
    )).status_code == 422
    unknown = await api.get(f"/predictions/{sha}/status")
    assert unknown.status_code == 404 and sha in unknown.json()["detail"]
    assert (await api.get(f"/predictions/{sha}/{MODEL_NAME}/results")).status_code == 404
    assert (await api.post(f"/predictions/{sha}/{MODEL_NAME}/revoke")).status_code == 404
    assert (await api.get(f"/internal/queue/{sha}")).status_code == 404
    assert (await api.post(f"/internal/queue/{sha}/festive")).status_code == 404

    empty = await api.post("/samples", files={"sample": ("empty", b"")})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    missing = await api.post("/samples", data={"other": "x"})
    assert missing.status_code == 422


async def test_queue_operations(api: httpx.AsyncClient, workers: None) -> None:
    program = b"\x7fELF" + os.urandom(64)  # a truncated ELF: fails fast, but is a real run
    response = await api.post("/samples", files={"sample": ("trunc", program)})
    sha = response.json()["sample_id"]
    queued = (await api.get(f"/internal/queue/{sha}")).json()
    assert uuid.UUID(queued["id"])
    from tests.conftest import wait_for_final

    await wait_for_final(api, sha, timeout_s=120)
    again = await api.post(f"/internal/queue/{sha}/festive")
    assert again.status_code == 200 and again.json() == {"sample_id": sha}
    rerun = (await api.get(f"/internal/queue/{sha}")).json()
    assert rerun["id"] != queued["id"]  # a failed sample runs again
    await wait_for_final(api, sha, timeout_s=120)
