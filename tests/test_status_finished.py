"""Get Status of an ended run is answered from the database row and the describe() view
kept for it (api/finished.py), without Temporal; a new run of the sample is seen again.
Real Temporal dev server, workers, SQLite and gcc-built binaries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common.contracts import MODEL_NAME
from tests.conftest import api_app, compile_c, submit, wait_for_final

pytestmark = pytest.mark.usefixtures("workers")

SOURCE = r"""
#include <stdio.h>
static int step(int x) { return x % 2 ? 3 * x + 1 : x / 2; }
int main(int argc, char **argv) {
    int n = argc * 27, k = 0;
    while (n != 1 && k < 1000) { n = step(n); k++; }
    printf("%d %s\n", k, argv[0]);
    return 0;
}
"""


async def test_finished_run_status_needs_no_temporal(settings, client, api, tmp_path: Path
                                                     ) -> None:  # type: ignore[no-untyped-def]
    sha256 = await submit(api, compile_c(tmp_path, SOURCE, "-O1", name="collatz"), "collatz")
    final = await wait_for_final(api, sha256)
    assert final["status"][MODEL_NAME] == "SUCCESS", final

    # An API process whose Temporal is unreachable (nothing listens on port 9): it learns
    # the ended run's view once while it still has the real client, then loses it.
    async with api_app(dataclasses.replace(settings, temporal_address="127.0.0.1:9"),
                       client) as (state, http):
        first = await http.get(f"/predictions/{sha256}/status")
        assert first.status_code == 200, first.text
        assert first.json() == final  # the same answer as from Temporal
        assert len(state.finished) == 1

        state.client = None  # from now on, any Temporal call fails with 503
        again = await http.get(f"/predictions/{sha256}/status")
        assert again.status_code == 200, again.text
        assert again.json() == final
        detail = again.json()["detailed_status"][MODEL_NAME]
        assert detail["execution_status"] == "COMPLETED" and detail["stage"] == "done"

        # The row changes when the sample is queued again: Temporal must be asked. It
        # cannot be reached: the answer is the new row's own, not the ended run's view.
        deleted = await api.delete(f"/internal/predictions/{sha256}/{MODEL_NAME}")
        assert deleted.status_code in (200, 204), deleted.text
        queued = await api.post(f"/internal/queue/{sha256}/festive")
        assert queued.status_code == 200, queued.text
        stale = await http.get(f"/predictions/{sha256}/status")
        assert stale.status_code == 200, stale.text
        detail = stale.json()["detailed_status"][MODEL_NAME]
        assert detail["source"] == "database" and detail["stage"] is None, detail
        assert stale.json()["status"][MODEL_NAME] in ("PENDING", "STARTED"), stale.text
    assert (await wait_for_final(api, sha256))["status"][MODEL_NAME] == "SUCCESS"
