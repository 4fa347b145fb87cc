"""Where a cached reanalysis spends its time, from its workflow history (issue 14).

    nice -n 5 python bench/reanalysis_timeline.py /usr/bin/gzip [--repeat 6]
        [--sqlite-pragma journal_mode=delete ...]

One stack (bench/service.py's, started children on): a warm-up analysis, the sample's
first analysis, then --repeat reanalyses (prediction deleted, queued again, 5 s apart).
For each reanalysis it prints the run's duration, its stages, and the time of each
history event from the run's start: workflow tasks (WTs scheduled, WTst started, WTc
completed), local activities (LA, one marker each), the embed activity (ATs, ATst, ATc)
and the end. The dev server keeps its state as `make up`'s does (deploy/temporal_dev.py)
unless --sqlite-pragma is given (its own default journal: --sqlite-pragma none). Nothing
is written; BENCHMARKS.md quotes its output.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import (  # noqa: E402
    MODEL_URL,
    add_pragma_option,
    chosen_pragmas,
    free_port,
    run_duration,
    small_binaries,
    stack,
    submit,
    wait_final,
)

from common.contracts import MODEL_NAME, workflow_id  # noqa: E402

SHORT = {"workflow_execution_started": "START", "workflow_task_scheduled": "WTs",
         "workflow_task_started": "WTst", "workflow_task_completed": "WTc",
         "marker_recorded": "LA", "activity_task_scheduled": "ATs",
         "activity_task_started": "ATst", "activity_task_completed": "ATc",
         "workflow_execution_completed": "END"}


async def timeline(sample: Path, repeat: int, pragmas: Sequence[str]) -> None:
    import httpx
    from temporalio.client import Client

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-timeline-") as tmp, \
            stack(Path(tmp), env={"AE_WARM_CHILDREN": "1", "AE_CPU_SLOTS": "1"},
                  temporal_port=port, sqlite_pragmas=pragmas) as urls:
        client = await Client.connect(f"127.0.0.1:{port}")
        async with httpx.AsyncClient(base_url=urls[0], timeout=120) as http:
            (warm,) = small_binaries(1, Path(tmp) / "warm")
            await wait_final(http, await submit(http, warm, "warm-up"), poll_s=0.2)
            await asyncio.sleep(5)
            sha = await submit(http, sample)
            started = time.perf_counter()
            first = await wait_final(http, sha)
            print(f"first: {time.perf_counter() - started:.2f} s {first['stages_ms']}")
            for i in range(repeat):
                await asyncio.sleep(5)
                (await http.delete(f"/internal/predictions/{sha}/{MODEL_URL}")).raise_for_status()
                (await http.post(f"/internal/queue/{sha}/festive")).raise_for_status()
                detail = await wait_final(http, sha, poll_s=0.02)
                handle = client.get_workflow_handle(workflow_id(MODEL_NAME, sha))
                events = (await handle.fetch_history()).events
                origin = events[0].event_time.ToDatetime()
                marks = []
                for event in events:
                    name = SHORT.get(event.WhichOneof("attributes")
                                     .removesuffix("_event_attributes"))
                    if name is not None:
                        at = (event.event_time.ToDatetime() - origin).total_seconds() * 1000
                        marks.append(f"{name}@{at:.0f}")
                print(f"again {i}: {run_duration(detail):.3f} s {detail['stages_ms']} "
                      + " ".join(marks), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sample", type=Path)
    parser.add_argument("--repeat", type=int, default=6)
    add_pragma_option(parser)
    args = parser.parse_args()
    pragmas = chosen_pragmas(args)
    print(f"dev server SQLite pragmas: {' '.join(pragmas) or 'none (its default)'}")
    asyncio.run(timeline(args.sample, args.repeat, pragmas))


if __name__ == "__main__":
    main()
