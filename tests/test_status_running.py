"""Get Status of an open run (api/running.py): each API process asks Temporal at most once
per AE_STATUS_REFRESH_S per run, requests arriving together share one describe(), a
changed row is seen at once, a refresh of 0 asks every time (real Temporal dev server
and SQLite; the run waits on an orchestration queue that no worker polls, so it stays
open for the whole test); a view that is due is answered while the next is asked."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable
from typing import Any

from temporalio.client import Client

from api.running import STALE_FACTOR, RecentViews
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


async def test_a_due_view_is_answered_at_once_and_refreshed_behind_it() -> None:
    """A describe() can take long on a busy Temporal server: for a run polled often, a
    request that finds the kept view due gets it at once, and the next ones get the new
    view when it is in. A run polled now and then, or a view too old, is waited for."""
    now = [0.0]
    views = RecentViews(max_age_s=1.0, clock=lambda: now[0], jitter=0)
    slow = asyncio.Event()

    async def describe() -> tuple[str, dict[str, int]]:
        number = views.described
        if number in (2, 4):
            await slow.wait()
        return "STARTED", {"describe": number}

    def asked() -> Awaitable[tuple[str, dict[str, Any]] | None]:
        return views.view("s" * 64, MODEL_NAME, None, describe)

    assert await asked() == ("STARTED", {"describe": 1})
    now[0] = 0.5
    assert await asked() == ("STARTED", {"describe": 1}) and views.described == 1  # fresh
    now[0] = 1.2  # due, and polled 0.7 s ago: the kept view at once, a describe() behind it
    assert await asyncio.wait_for(asked(), timeout=5) == ("STARTED", {"describe": 1})
    await asyncio.sleep(0)  # the describe() behind it starts (held up here)
    assert views.described == 2
    now[0] = 1.3
    assert await asked() == ("STARTED", {"describe": 1})  # still on its way: not asked again
    await asyncio.sleep(0)
    assert views.described == 2
    slow.set()
    for _ in range(100):
        if await asked() == ("STARTED", {"describe": 2}):
            break
        await asyncio.sleep(0.01)
    assert await asked() == ("STARTED", {"describe": 2}) and views.described == 2

    now[0] = 1.3 + 3  # due, but last polled 3 s ago: a fresh view is waited for
    assert await asked() == ("STARTED", {"describe": 3})

    # Polled often while its describe() is held up: the view is answered until it is
    # STALE_FACTOR refreshes old, then waited for.
    slow.clear()
    while now[0] < 4.3 + STALE_FACTOR - 0.5:
        now[0] += 0.5
        assert await asked() == ("STARTED", {"describe": 3})
    now[0] = 4.3 + STALE_FACTOR
    waiting = asyncio.ensure_future(asked())
    await asyncio.sleep(0.05)
    assert not waiting.done() and views.described == 4  # the held one, not a fifth
    slow.set()
    assert await asyncio.wait_for(waiting, timeout=5) == ("STARTED", {"describe": 4})
