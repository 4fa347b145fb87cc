"""Get Status of an open run (api/running.py): each API process asks Temporal at most once
per AE_STATUS_REFRESH_S per run, requests arriving together share one describe(), a
changed row is seen at once, a refresh of 0 asks every time (real Temporal dev server
and SQLite; the run waits on an orchestration queue that no worker polls, so it stays
open for the whole test); a view that is due is answered while the next is asked; no
request waits for Temporal longer than AE_STATUS_WAIT_S (a dev server of the test's own,
stopped with SIGSTOP)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import uuid
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from api.running import STALE_FACTOR, RecentViews
from common.config import Settings
from common.contracts import MODEL_NAME, PENDING, STARTED, workflow_id
from store.models import Prediction
from tests.conftest import api_app, submit
from tests.test_faults import Services


async def test_open_run_is_described_once_per_refresh(settings: Settings, client: Client
                                                      ) -> None:
    async with api_app(dataclasses.replace(
            settings, status_refresh_s=300, status_wait_s=60, status_describes=2,
            orchestration_queue_override=f"nobody-polls-{uuid.uuid4().hex[:8]}"), client
    ) as (state, http):
        assert state.running.concurrent == 2  # AE_STATUS_DESCRIBES
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

            state.client = None  # from now on, no client for Temporal can be made
            again = await http.get(url)
            assert again.status_code == 200, again.text
            assert again.json() == body

            # The row changes: Temporal is asked at once. It cannot be reached, so the
            # answer is the new row's own (never the view kept for the old row).
            task = str(uuid.uuid4())
            moved = await http.put(f"/internal/predictions/{sha256}/{MODEL_NAME}/task/{task}")
            assert moved.status_code in (200, 204), moved.text
            changed = await http.get(url)
            assert changed.status_code == 200, changed.text
            detail = changed.json()["detailed_status"][MODEL_NAME]
            assert detail["source"] == "database" and detail["run_id"] == task, detail
            assert state.running.described == 2

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
    views = RecentViews(max_age_s=1.0, wait_s=60, concurrent=8, clock=lambda: now[0], jitter=0)
    slow = asyncio.Event()

    async def describe() -> tuple[str, dict[str, int]]:
        number = views.described
        if number in (2, 4):
            await slow.wait()
        return "STARTED", {"describe": number}

    def asked() -> Awaitable[tuple[str, dict[str, Any]] | None]:
        return views.view("s" * 64, MODEL_NAME, None, describe, lambda: None)

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


def _row(status: str, updated_at: datetime) -> Prediction:
    return Prediction(sha256_hash="w" * 64, model=MODEL_NAME, status=status,
                      celery_task_id="run-1", updated_at=updated_at)


async def test_no_request_waits_for_temporal_longer_than_the_wait() -> None:
    """A describe() that does not come within wait_s: the request gets the view kept for
    the same row, else the row's own; the describe() goes on, is shared, and is kept for
    the requests after it. A run without a row has nothing else to answer: it waits."""
    now = [0.0]
    views = RecentViews(max_age_s=1.0, wait_s=0.05, concurrent=8, clock=lambda: now[0],
                        jitter=0)
    release = asyncio.Event()

    async def describe() -> tuple[str, dict[str, int]]:
        number = views.described
        await release.wait()
        return STARTED, {"describe": number}

    def asked(row: Prediction | None) -> Awaitable[tuple[str, dict[str, Any]] | None]:
        return views.view("w" * 64, MODEL_NAME, row, describe,
                          lambda: (row.status if row else PENDING, {"from": "row"}))

    row = _row(STARTED, datetime(2026, 1, 1))
    # Never described: the row's view, for both requests, from one describe() held up.
    first, second = await asyncio.wait_for(asyncio.gather(asked(row), asked(row)), 5)
    assert first == second == (STARTED, {"from": "row"}) and views.described == 1
    release.set()
    for _ in range(100):
        if (answer := await asked(row)) != (STARTED, {"from": "row"}):
            break
        await asyncio.sleep(0.01)
    assert answer == (STARTED, {"describe": 1}) and views.described == 1  # kept, fresh

    # Due and polled now and then, Temporal slow: the older view, with a describe() behind.
    release.clear()
    now[0] = 5.0
    assert await asyncio.wait_for(asked(row), 5) == (STARTED, {"describe": 1})
    assert views.described == 2
    # The row changed meanwhile: never the view kept for the old row.
    moved = _row(STARTED, datetime(2026, 1, 1, 0, 1))
    assert await asyncio.wait_for(asked(moved), 5) == (STARTED, {"from": "row"})
    assert views.described == 3
    release.set()
    await asyncio.sleep(0.01)
    assert await asked(moved) == (STARTED, {"describe": 3})

    # No row: nothing but Temporal's view will do, however long it takes.
    release.clear()
    waiting = asyncio.ensure_future(asked(None))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    release.set()
    assert await asyncio.wait_for(waiting, 5) == (STARTED, {"describe": 4})


async def test_temporal_away_is_answered_from_the_row_and_other_errors_are_not() -> None:
    """A describe() that fails with one of the `unavailable` errors (Temporal away) is
    answered like a late one; any other error is the request's, and so is Temporal's
    error for a run without a row."""
    views = RecentViews(max_age_s=1.0, wait_s=5, concurrent=8, unavailable=(ConnectionError,),
                        jitter=0)
    failure: list[Exception] = [ConnectionError("Temporal is away")]

    async def describe() -> tuple[str, dict[str, int]]:
        raise failure[0]

    def asked(row: Prediction | None) -> Awaitable[tuple[str, dict[str, Any]] | None]:
        return views.view("x" * 64, MODEL_NAME, row, describe,
                          lambda: (STARTED, {"from": "row"}))

    row = _row(STARTED, datetime(2026, 1, 1))
    assert await asked(row) == (STARTED, {"from": "row"})
    with pytest.raises(ConnectionError):
        await asked(None)
    failure[0] = ValueError("a bug")
    with pytest.raises(ValueError):
        await asked(row)


@pytest.fixture
def own_temporal(tmp_path: Path) -> Iterator[Services]:
    services = Services(root=tmp_path)
    services.start_temporal()
    try:
        yield services
    finally:
        if services.temporal is not None:
            services.temporal.send_signal(signal.SIGCONT)
        services.stop_temporal()


async def test_a_stopped_temporal_server_holds_no_status_request(
        settings: Settings, own_temporal: Services) -> None:
    """With the Temporal server stopped (SIGSTOP), Get Status of open runs answers within
    about AE_STATUS_WAIT_S: a run described before, with that view (its `as_of`); a run
    never described, with its row (`source` database); once the server goes on, a new
    view from Temporal."""
    client = await Client.connect(own_temporal.address)
    async with api_app(dataclasses.replace(
            settings, status_refresh_s=0.2, status_wait_s=0.2,
            orchestration_queue_override=f"nobody-polls-{uuid.uuid4().hex[:8]}"), client
    ) as (_, http):
        seen = await submit(http, b"\x7fELF seen " + uuid.uuid4().bytes, "seen")
        unseen = await submit(http, b"\x7fELF unseen " + uuid.uuid4().bytes, "unseen")
        before = (await http.get(f"/predictions/{seen}/status")).json()
        detail = before["detailed_status"][MODEL_NAME]
        assert detail["source"] == "temporal" and detail["execution_status"] == "RUNNING", detail
        await asyncio.sleep(0.5)  # the view is due; the run has not been asked for since

        assert own_temporal.temporal is not None
        own_temporal.temporal.send_signal(signal.SIGSTOP)
        try:
            # (a request waiting for the server would wait for its 10 s RPC timeout)
            late = await asyncio.wait_for(http.get(f"/predictions/{seen}/status"), 5)
            from_row = await asyncio.wait_for(http.get(f"/predictions/{unseen}/status"), 5)
        finally:
            own_temporal.temporal.send_signal(signal.SIGCONT)
        assert late.status_code == 200 and late.json() == before, late.text
        assert from_row.status_code == 200, from_row.text
        row_view = from_row.json()
        assert row_view["status"][MODEL_NAME] == PENDING, row_view
        detail = row_view["detailed_status"][MODEL_NAME]
        assert detail["source"] == "database" and detail["execution_status"] is None, detail
        assert detail["run_id"] and detail["as_of"], detail

        for _ in range(100):  # the server goes on: its describe() calls come in
            after = (await http.get(f"/predictions/{unseen}/status")).json()
            if after["detailed_status"][MODEL_NAME]["source"] == "temporal":
                break
            await asyncio.sleep(0.1)
        detail = after["detailed_status"][MODEL_NAME]
        assert detail["source"] == "temporal" and detail["execution_status"] == "RUNNING", after
        assert datetime.fromisoformat(detail["as_of"]) <= datetime.now(UTC)
        for sha256 in (seen, unseen):
            await client.get_workflow_handle(workflow_id(MODEL_NAME, sha256)).terminate(
                reason="test over")


async def test_describes_are_sent_a_few_at_a_time() -> None:
    """Forty runs asked about at once: at most `concurrent` describe() calls are on their
    way together; the requests beyond them get their rows' views after wait_s, and every
    run's view comes in."""
    views = RecentViews(max_age_s=60, wait_s=0.05, concurrent=3, jitter=0)
    release = asyncio.Event()

    async def describe(run: int) -> tuple[str, dict[str, int]]:
        await release.wait()
        return STARTED, {"run": run}

    def asked(run: int) -> Awaitable[tuple[str, dict[str, Any]] | None]:
        return views.view(f"{run:064x}", MODEL_NAME, _row(STARTED, datetime(2026, 1, 1)),
                          partial(describe, run), lambda: (STARTED, {"from": "row"}))

    first = await asyncio.wait_for(asyncio.gather(*(asked(run) for run in range(40))), 5)
    assert first == [(STARTED, {"from": "row"})] * 40
    assert views.described == 3 and views.most_at_once == 3
    release.set()
    for _ in range(200):
        if views.described == 40 and views.most_at_once == 3:
            break
        await asyncio.sleep(0.01)
    assert [await asked(run) for run in range(40)] == [(STARTED, {"run": r}) for r in range(40)]
    assert views.described == 40 and views.most_at_once == 3
