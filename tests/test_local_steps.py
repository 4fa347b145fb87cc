"""The light steps run as local activities in the orchestration worker, and a reanalysis
whose unpack and lifts are cached never goes to the cpu queue (workflows/analyze.py,
LOCAL_STEPS; activities/stage_cache.py). A light step that fails there is queued as an
ordinary activity: tests/test_faults.py::test_locked_database_during_persist_is_retried.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from activities.deps import Deps
from activities.stage_cache import cached_unpack, store_unpack
from activities.unpack import Unpack
from common.config import Settings
from common.contracts import (
    MODEL_NAME,
    AnalyzeRequest,
    BinaryChild,
    UnpackResult,
    workflow_id,
)
from store.blobs import open_blobs
from tests import container_samples
from tests.conftest import submit, wait_for_final
from unpacking.cache import unpack_key
from unpacking.extract import UnpackLimits
from workflows.analyze import AnalyzeSample

LIGHT = ["record_status", "reference_set", "explain_results", "persist_results"]
CACHES = ["cached_unpack", "cached_lifts"]


def scheduled(events: list[Any]) -> list[str]:
    """Activities the run put on a task queue, in order."""
    return [e.activity_task_scheduled_event_attributes.activity_type.name for e in events
            if e.HasField("activity_task_scheduled_event_attributes")]


def local(events: list[Any]) -> list[str]:
    """Local activities the run recorded (their markers), in order."""
    names = []
    for e in events:
        if not e.HasField("marker_recorded_event_attributes"):
            continue
        marker = e.marker_recorded_event_attributes
        if marker.marker_name != "core_local_activity":
            continue
        payload = marker.details["data"].payloads[0]
        names.append(json.loads(payload.data)["activity_type"])
    return names


async def finished_run(api: httpx.AsyncClient, client: Client, sha256: str
                       ) -> tuple[list[Any], dict[str, Any], Any]:
    status = await wait_for_final(api, sha256)
    assert status["status"][MODEL_NAME] == "SUCCESS", status
    handle = client.get_workflow_handle(workflow_id(MODEL_NAME, sha256))
    history = await handle.fetch_history()
    replayed = await Replayer(workflows=[AnalyzeSample]).replay_workflow(history)
    assert replayed.replay_failure is None, replayed.replay_failure
    results = await api.get(f"/predictions/{sha256}/{quote(MODEL_NAME)}/results")
    assert results.status_code == 200, results.text
    return history.events, results.json(), history


async def test_cached_reanalysis_goes_to_the_queues_only_to_embed(
    api: httpx.AsyncClient, client: Client, workers: None
) -> None:
    sample = Path("/bin/true").read_bytes() + uuid.uuid4().bytes
    sha256 = await submit(api, sample, "true")
    first, first_results, first_history = await finished_run(api, client, sha256)
    assert scheduled(first) == ["unpack_sample", "lift_binary", "embed_compare"]
    assert local(first) == ["record_status", *CACHES, *LIGHT[1:]]

    model = quote(MODEL_NAME)
    deleted = await api.delete(f"/internal/predictions/{sha256}/{model}")
    assert deleted.status_code in (200, 204), deleted.text
    queued = await api.post(f"/internal/queue/{sha256}/festive")
    assert queued.status_code == 200, queued.text
    again, again_results, again_history = await finished_run(api, client, sha256)
    assert scheduled(again) == ["embed_compare"]
    assert local(again) == ["record_status", *CACHES, *LIGHT[1:]]
    summary = await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).result()
    assert summary["lifts_reused"] == 1 and summary["unpack_reused"], summary
    assert summary["functions"] > 0, summary
    assert again_results["prediction_results"] == first_results["prediction_results"]

    target = os.environ.get("AE_RECORD_HISTORIES")  # for tests/test_replay.py
    if target:
        Path(target, "analyze_local_steps.json").write_text(first_history.to_json())
        Path(target, "analyze_local_steps_cached.json").write_text(again_history.to_json())


def test_unpack_key_is_the_sample_its_name_and_the_limits() -> None:
    sha256 = "ab" * 32
    key = unpack_key(sha256, "a.zip", UnpackLimits())
    assert key == unpack_key(sha256, "a.zip", UnpackLimits())
    assert len({key, unpack_key(sha256, "b.zip", UnpackLimits()),
                unpack_key(sha256, "a.zip", UnpackLimits(max_depth=2)),
                unpack_key("cd" * 32, "a.zip", UnpackLimits())}) == 4


def test_a_cached_unpack_is_used_only_with_its_report_and_children(tmp_path: Path) -> None:
    blobs = open_blobs(str(tmp_path / "blobs"), tmp_path / "scratch")
    sample = blobs.put_bytes(b"an archive, say")
    child = blobs.put_bytes(b"\x7fELF a member")
    result = UnpackResult(
        children=[BinaryChild(child, "a.zip/bin/x", "ELF", 1, 13, sample)],
        report_sha256=blobs.put_json({"children": [], "skipped": [], "archives": []}),
    )
    request = AnalyzeRequest(sample, MODEL_NAME, "1", "cpu", "gpu", filename="a.zip")
    limits = UnpackLimits()
    assert cached_unpack(blobs, request, limits) is None  # never unpacked
    store_unpack(blobs, request, limits, result)
    assert cached_unpack(blobs, request, limits) == result
    assert cached_unpack(blobs, dataclasses.replace(request, filename="b.zip"), limits) is None
    assert cached_unpack(blobs, request, UnpackLimits(max_children=1)) is None
    blobs.path(child).unlink()  # the member is gone: unpacked again, never a missing child
    assert cached_unpack(blobs, request, limits) is None


async def test_an_unpack_that_ran_out_of_time_is_not_kept(tmp_path: Path) -> None:
    """An unpack that abandoned an archive for want of time (an encrypted RAR past
    UnpackLimits.archive_seconds; the flag comes out of the sandboxed child's report) is
    not stored: on a less busy machine the same sample may unpack to more, so the next
    analysis unpacks it again. The same sample with time enough is stored."""
    settings = Settings(data_dir=tmp_path / "data", warm_children=0)
    blobs = open_blobs(settings.blob_url, settings.scratch_dir)
    deps = Deps(settings=settings, blobs=blobs)
    work = tmp_path / "work"
    work.mkdir()
    sample = blobs.put_bytes(container_samples.zip_with_encrypted_rars(work))
    request = AnalyzeRequest(sample, MODEL_NAME, "1", "cpu", "gpu", filename="mixed.zip")

    short = UnpackLimits(archive_seconds=0)
    late = await ActivityEnvironment().run(Unpack(deps, short).unpack_sample, request)
    assert [c.name for c in late.children] == ["mixed.zip/true"]
    skipped = blobs.read_json(late.report_sha256)["skipped"]
    assert [s["name"] for s in skipped] == ["mixed.zip/four.rar", "mixed.zip/five.rar"]
    assert cached_unpack(blobs, request, short) is None

    limits = UnpackLimits()
    timely = await ActivityEnvironment().run(Unpack(deps, limits).unpack_sample, request)
    assert len(timely.children) == 3
    assert cached_unpack(blobs, request, limits) == timely
