"""Get Status of an open run (api/running.py): each API process asks Temporal at most once
per AE_STATUS_REFRESH_S per run, requests arriving together share one describe(), a
changed row is seen at once, and a refresh of 0 asks every time. Real Temporal dev
server and SQLite; the run waits on an orchestration queue that no worker polls, so it
stays open for the whole test."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from temporalio.client import Client

from common.config import Settings
from common.contracts import MODEL_NAME, workflow_id
from tests.conftest import api_app, submit


async def test_open_run_is_described_once_per_refresh(settings: Settings, client: Client
                                                      ) -> None:
    async with api_app(dataclasses.replace(
            settings, status_refresh_s=300,
            orchestration_queue_override=f"nobody-polls-{uuid.uuid4().hex[:8]}"), client
    ) as (state, http):
        sha256 = await submit(http, b"\x7fELF open run " + uuid.uuid4().bytes, "open-run")
        url = f"/predictions/{sha256}/status"
        try:
            answers = await asyncio.gather(*(http.get(url) for _ in range(20)))
            assert {a.status_code for a in answers} == {200}, answers[0].text
            body = answers[0].json()
            assert all(a.json() == body for a in answers)
            assert body["status"][MODEL_NAME] == "PENDING", body
            detail = body["detailed_status"][MODEL_NAME]
            assert detail["execution_status"] == "RUNNING", detail
            assert state.running.described == 1  # twenty requests, one describe()

            state.client = None  # from now on, any Temporal call fails with 503
            again = await http.get(url)
            assert again.status_code == 200, again.text
            assert again.json() == body

            # The row changes: Temporal is asked at once.
            moved = await http.put(
                f"/internal/predictions/{sha256}/{MODEL_NAME}/task/{uuid.uuid4()}")
            assert moved.status_code in (200, 204), moved.text
            changed = await http.get(url)
            assert changed.status_code == 503, changed.text
            assert "not reachable" in changed.json()["detail"]

            # Refresh 0: every request asks.
            state.client = client
            state.running.max_age_s = 0
            for _ in range(2):
                assert (await http.get(url)).status_code == 200
            assert state.running.described == 4
        finally:
            await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).terminate(
                reason="test over")
