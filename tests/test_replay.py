"""Replay: recorded AnalyzeSample and AddReference histories must replay against the
current workflow code.

A change that alters the commands a past run issued (order, activity names, options)
fails here; guard such changes with workflow.patched().
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from common.contracts import MODEL_NAME, workflow_id
from tests.conftest import submit, wait_for_final
from workflows.analyze import AnalyzeSample
from workflows.batch import ReanalysisBatch
from workflows.reference import AddReference

HISTORIES = Path(__file__).parent / "histories"


def committed_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def test_there_are_committed_histories() -> None:
    names = {p.stem for p in committed_histories()}
    assert {"analyze_success", "analyze_bad_sample", "analyze_success_references",
            "reference_success", "batch_continue_as_new_0", "batch_continue_as_new_1",
            "batch_cancelled_0", "analyze_local_steps", "analyze_local_steps_cached"} <= names


@pytest.mark.parametrize("path", committed_histories(), ids=lambda p: p.stem)
async def test_committed_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json("recorded", path.read_text())
    replayer = Replayer(workflows=[AnalyzeSample, AddReference, ReanalysisBatch])
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None


@pytest.mark.usefixtures("workers")
async def test_fresh_run_replays(api, client: Client) -> None:  # noqa: ANN001
    sha256 = await submit(api, Path("/bin/true"), "true")
    await wait_for_final(api, sha256)
    handle = client.get_workflow_handle(workflow_id(MODEL_NAME, sha256))
    history = await handle.fetch_history()
    result = await Replayer(workflows=[AnalyzeSample]).replay_workflow(history)
    assert result.replay_failure is None
