"""Get Report: one analysis as a self-contained HTML page (api/report_render.py draws it).

Reads the stored row, the cached lifts of the binaries whose matches are shown side by
side, and, for matches against references users added, that reference's lift. Lifts
are a cache in the blob store: one that is gone is said so on the page, never invented.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query
from fastapi.responses import HTMLResponse

from api.report_render import (
    CONTENT_SECURITY_POLICY,
    ReferenceCode,
    detailed_ranks,
    find_function,
    ranked_matches,
    render_report,
)
from api.schemas import ModelNameParam, Sha256Hash
from api.state import ApiState, get_state
from api.text import serialisable
from common.contracts import FAILURE, REVOKED, SUCCESS
from lifting.angr_lift import LIFT_CACHE_KIND
from store.blobs import BlobMissing, BlobStore, is_sha256

State = Annotated[ApiState, Depends(get_state)]

# A user reference's build label ends with "user:<its sha256's first 12 hex digits>"
# (festive/engine.py); shipped builds never do.
_USER_BUILD = re.compile(r"\buser:([0-9a-f]{12})$")
SHIPPED_NOTE = ("The shipped reference index holds one vector and these labels per "
                "reference function, not its code: the reference code is not shipped, so "
                "only the sample side can be shown.")


def _read_lift(blobs: BlobStore, sha256: str) -> dict[str, Any] | None:
    """The cached lift of a binary, or None when the cache no longer has it."""
    if not is_sha256(sha256):
        return None
    lift_sha = blobs.get_derived(LIFT_CACHE_KIND, sha256)
    if lift_sha is None:
        return None
    try:
        lift = blobs.read_json(lift_sha)
    except (BlobMissing, ValueError, OSError):
        return None
    return lift if isinstance(lift, dict) else None


async def _reference_code(state: ApiState, match: dict[str, str],
                          lifts: dict[str, dict[str, Any] | None]) -> ReferenceCode:
    found = _USER_BUILD.search(match.get("reference_build", ""))
    if found is None:
        return ReferenceCode(None, [("source", "shipped reference index")], SHIPPED_NOTE)
    candidates = await state.store.references_with_prefix(found.group(1))
    if len(candidates) != 1:
        return ReferenceCode(None, [("source", "a reference a user added")],
                             "That reference has been removed since (or its sha256 prefix "
                             "is no longer unique), so its code cannot be shown.")
    ref = candidates[0]
    labels = [("source", "a reference a user added"), ("reference sha256", ref.sha256),
              ("file", ref.filename or "")]
    if ref.sha256 not in lifts:
        lifts[ref.sha256] = await asyncio.to_thread(_read_lift, state.blobs, ref.sha256)
    func = find_function(lifts[ref.sha256], name=match.get("reference_function", ""))
    if func is None:
        return ReferenceCode(None, labels,
                             "Its lift is not in the blob store (the reference is an archive, "
                             "or the cached lift is gone), so its code cannot be shown.")
    return ReferenceCode(func, labels, "")


async def get_report(
    state: State, model_name: ModelNameParam, sha256_hash: Sha256Hash,
    match: Annotated[int | None, Query(
        ge=1, le=100_000, title="Match",
        description="rank in the matched-function table of the match to show side by side "
                    "(default: the best; the 10 best are always included)")] = None,
) -> HTMLResponse:
    sha256 = sha256_hash.lower()
    row = await state.store.get_prediction(sha256, model_name.value)
    if row is None:
        raise HTTPException(404, f"no prediction for {sha256} with model {model_name.value}")
    if row.status != SUCCESS or not isinstance(row.prediction_results, dict):
        if row.status in (FAILURE, REVOKED):
            raise HTTPException(409, f"the analysis of {sha256} ended {row.status}: "
                                f"{serialisable(row.error_details) or 'no details'}; "
                                "there is no report")
        if row.status == SUCCESS:
            raise HTTPException(409, f"the prediction of {sha256} has no stored results: "
                                "there is no report")
        raise HTTPException(409, f"the analysis of {sha256} is not finished (status "
                            f"{row.status}): the report is ready when it succeeds")
    results: dict[str, Any] = serialisable(row.prediction_results)
    ranked = ranked_matches(results)
    if match is not None and match > len(ranked):
        raise HTTPException(404, f"no match {match}: the analysis of {sha256} has "
                            f"{len(ranked)} matched functions")
    shown = [ranked[rank - 1] for rank in detailed_ranks(len(ranked), match)]
    lifts: dict[str, dict[str, Any] | None] = {}
    for child in sorted({m.get("child_sha256", "") for _k, m in shown}):
        lifts[child] = await asyncio.to_thread(_read_lift, state.blobs, child)
    references = {key: await _reference_code(state, m, lifts) for key, m in shown}
    page = render_report(
        sha256=sha256, model=model_name.value,
        row={"predicted_at": row.predicted_at, "run_id": row.celery_task_id},
        results=results, explanation=serialisable(row.explanation_results), chosen=match,
        lifts=lifts, references=references,
    )
    return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
