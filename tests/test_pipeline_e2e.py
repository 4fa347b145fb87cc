"""End to end: real binaries through the API, the Temporal workflow, angr and FESTIVE."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from common.contracts import MODEL_NAME, workflow_id
from tests.conftest import ZLIB_STATIC, compile_c, lift_children, submit, wait_for_final

pytestmark = pytest.mark.usefixtures("workers")

ZLIB_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include <zlib.h>
int main(int argc, char **argv) {
    unsigned char packed[4096], plain[4096];
    uLongf packed_len = sizeof packed, plain_len = sizeof plain;
    const char *text = argc > 1 ? argv[1] : "attribution engine attribution engine";
    if (compress2(packed, &packed_len, (const unsigned char *)text, strlen(text), 9) != Z_OK)
        return 1;
    if (uncompress(plain, &plain_len, packed, packed_len) != Z_OK) return 2;
    printf("%lu -> %lu (crc %lx)\n", (unsigned long)strlen(text), (unsigned long)packed_len,
           crc32(0, plain, plain_len));
    return 0;
}
"""


@pytest.fixture(scope="module")
def zlib_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("zlib")
    return compile_c(tmp, ZLIB_PROGRAM, "-O2", str(ZLIB_STATIC), name="zpack")


async def test_compiled_zlib_program_is_attributed_to_zlib(
    api: httpx.AsyncClient, client: Client, zlib_binary: Path
) -> None:
    sha256 = await submit(api, zlib_binary, "zpack")
    assert sha256 == hashlib.sha256(zlib_binary.read_bytes()).hexdigest()
    status = await wait_for_final(api, sha256)
    assert status["status"][MODEL_NAME] == "SUCCESS", status
    detail = status["detailed_status"][MODEL_NAME]
    assert detail["execution_status"] == "COMPLETED" and detail["stage"] == "done"
    assert set(detail["stages_ms"]) == {"unpack", "lift", "embed", "explain", "persist"}
    assert all(ms >= 0 for ms in detail["stages_ms"].values())

    response = await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "model", "error_details", "sha256_hash", "predicted_at", "celery_task_id",
        "prediction_results", "explanation_results",
    }
    assert body["model"] == MODEL_NAME and body["sha256_hash"] == sha256
    assert body["error_details"] is None and body["predicted_at"]
    # celery_task_id is the workflow run id, a UUID
    run = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).describe()
    assert body["celery_task_id"] == run.run_id and uuid.UUID(body["celery_task_id"])

    results = body["prediction_results"]
    assert results["verdict"] == "zlib", results.get("families")
    assert int(results["families"]["zlib"]["functions_matched"]) >= 5
    assert any(m["family"] == "zlib" for m in results["matches"].values())
    for value in results.values():  # the seed's type: str | dict[str, dict[str, str]]
        assert isinstance(value, str) or all(
            isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
            for v in value.values()
        )
    explanation = body["explanation_results"]
    assert "zlib" in explanation and sha256 in explanation
    assert re.search(r"\| zlib \| present \| [01]\.\d{4} \| \d+ \|", explanation)


async def test_resubmission_answers_with_the_same_analysis(
    api: httpx.AsyncClient, client: Client, zlib_binary: Path
) -> None:
    sha256 = await submit(api, zlib_binary, "zpack-again")
    first = await wait_for_final(api, sha256)
    run_before = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
    assert await submit(api, zlib_binary, "zpack-third-time") == sha256
    again = await api.get(f"/predictions/{sha256}/status")
    assert again.json()["status"][MODEL_NAME] == "SUCCESS"
    run_after = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
    assert run_after["celery_task_id"] == run_before["celery_task_id"]
    assert run_after["predicted_at"] == run_before["predicted_at"]
    described = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).describe()
    assert described.run_id == first["detailed_status"][MODEL_NAME]["run_id"]


async def test_system_binary_ls_reaches_success(api: httpx.AsyncClient) -> None:
    sha256 = await submit(api, Path("/usr/bin/ls"), "ls")
    status = await wait_for_final(api, sha256)
    assert status["status"][MODEL_NAME] == "SUCCESS", status
    body = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
    results = body["prediction_results"]
    assert int(results["functions_total"]) > 100
    child = results["children"][sha256]
    assert child["format"] == "ELF" and child["arch"] == "AMD64"
    assert body["explanation_results"].startswith(f"# Attribution of `{sha256}`")


async def test_junk_bytes_fail_once_with_error_details(
    api: httpx.AsyncClient, client: Client
) -> None:
    junk = b"this is not a program\n" + os.urandom(4096)
    sha256 = await submit(api, junk, "junk.bin")
    status = await wait_for_final(api, sha256, timeout_s=120)
    assert status["status"][MODEL_NAME] == "FAILURE"
    body = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
    assert "no supported executable" in body["error_details"]
    assert body["prediction_results"] is None
    # Bad input is not retried: the unpack activity ran exactly once.
    history = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert attempts and max(attempts) == 1
    # A failed sample may run again on resubmission.
    assert await submit(api, junk, "junk.bin") == sha256
    described = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).describe()
    assert described.run_id != body["celery_task_id"]
    await wait_for_final(api, sha256, timeout_s=120)


async def test_revoke_stops_a_running_lift_and_allows_resubmission(
    api: httpx.AsyncClient, client: Client
) -> None:
    big = Path("/usr/bin/perl")  # several MB of code: angr needs minutes, we revoke in the lift
    sha256 = await submit(api, big, "perl")
    await wait_for_final(api, sha256, timeout_s=120, want={"STARTED"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        detail = (await api.get(f"/predictions/{sha256}/status")).json()["detailed_status"]
        activities = detail[MODEL_NAME]["pending_activities"]
        if detail[MODEL_NAME]["stage"] == "lift" and any(
            a["activity"] == "lift_binary" and a["progress"] for a in activities
        ):
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(f"the lift never started: {detail}")
    # The activity heartbeats from the moment it hands the job over; a child started for
    # it may still be importing angr, and counts as a lift child once it reads the job.
    for _ in range(240):
        if lift_children(os.getpid()):
            break
        await asyncio.sleep(0.25)
    assert len(lift_children(os.getpid())) >= 1

    revoked_at = time.monotonic()
    response = await api.post(f"/predictions/{sha256}/{MODEL_NAME}/revoke")
    assert response.status_code == 200, response.text
    run_id = response.json()["detail"].split("[")[1].split("]")[0]
    assert response.json() == {"detail": f"Prediction Task [{run_id}] revoked"}
    status = await wait_for_final(api, sha256, timeout_s=60)
    assert status["status"][MODEL_NAME] == "REVOKED"
    assert time.monotonic() - revoked_at < 30
    body = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()
    assert "revoked" in body["error_details"] and "lift" in body["error_details"]
    assert body["celery_task_id"] == run_id
    described = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).describe()
    assert described.status == WorkflowExecutionStatus.CANCELED
    assert len(lift_children(os.getpid())) == 0, "the angr child process outlived the revoke"

    # Revoking again is a clear 409, and the revoked sample may be submitted again.
    again = await api.post(f"/predictions/{sha256}/{MODEL_NAME}/revoke")
    assert again.status_code == 409
    assert await submit(api, big, "perl") == sha256
    rerun = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).describe()
    assert rerun.run_id != run_id and rerun.status == WorkflowExecutionStatus.RUNNING
    internal = await api.post(f"/internal/queue/{sha256}/revoke")
    assert internal.status_code == 200 and internal.json() == {"sample_id": sha256}
    assert (await wait_for_final(api, sha256, timeout_s=60))["status"][MODEL_NAME] == "REVOKED"


async def test_concurrent_submissions_of_one_new_file_start_one_run(
    api: httpx.AsyncClient, client: Client, tmp_path: Path
) -> None:
    binary = compile_c(tmp_path, "int main(void) { return 7; }\n", "-O1", name="seven")
    data = binary.read_bytes() + uuid.uuid4().bytes  # a file no other test submits
    responses = await asyncio.gather(
        *(api.post("/samples", files={"sample": (f"copy{i}", data)}) for i in range(8))
    )
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    (sha256,) = {r.json()["sample_id"] for r in responses}
    await wait_for_final(api, sha256)
    rows = (await api.get(f"/internal/predictions/{sha256}")).json()
    assert len(rows) == 1 and rows[0]["celery_task_id"]
    runs = [
        w async for w in client.list_workflows(f"WorkflowId = '{workflow_id(MODEL_NAME, sha256)}'")
    ]
    assert [w.run_id for w in runs] == [rows[0]["celery_task_id"]]


async def test_every_executable_in_an_archive_is_analysed_and_listed(
    api: httpx.AsyncClient, zlib_binary: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.write(zlib_binary, "bin/zpack")
        bundle.write("/bin/true", "bin/true")
        bundle.writestr("README.txt", "not a program\n")
        bundle.writestr("../../etc/evil", b"\x7fELF" + b"\0" * 8)
    sha256 = await submit(api, archive, "bundle.zip")
    status = await wait_for_final(api, sha256)
    assert status["status"][MODEL_NAME] == "SUCCESS", status
    results = (await api.get(f"/predictions/{sha256}/{MODEL_NAME}/results")).json()[
        "prediction_results"]
    names = {child["name"] for child in results["children"].values()}
    assert names == {"bundle.zip/bin/zpack", "bundle.zip/bin/true"}
    assert hashlib.sha256(zlib_binary.read_bytes()).hexdigest() in results["children"]
    assert results["verdict"] == "zlib"  # the zlib code in one child decides the sample
    reasons = {name: info["reason"] for name, info in results["skipped"].items()}
    assert any("README.txt" in name and "not an executable" in reason
               for name, reason in reasons.items()), reasons
    assert any("traversal" in reason for reason in reasons.values()), reasons
