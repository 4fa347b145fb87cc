"""Finding samples (not in the seed): List Samples, filtered and paged by an opaque
cursor, and Similar Samples, the stored samples that share functions with one.

List Samples reads the queryable columns the persist stage keeps beside each result
(`family_evidence`, the predictions' `verdict` and `confidence`); its order is
(first submission time, sha256), which never changes for a sample, so paging with the
cursor returns every sample once even while new ones arrive (they come after it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import HTTPException, Query

from api.batches import _utc
from api.handlers import State
from api.schemas import (
    ModelName,
    SampleItem,
    SamplePage,
    Sha256Hash,
    SharedFunctionOut,
    SimilarPage,
    SimilarSampleOut,
)
from common.contracts import SUCCESS
from festive.attribution.similar import Function, SampleFunctions, decode
from store.db import SampleFilter

PAGE_MAX = 500
SHARED_LISTED = 500
WORD = r"^[A-Za-z0-9._+-]{1,64}$"
ModelQuery = Annotated[ModelName, Query(description="the model whose results are read")]


async def list_samples(
    state: State,
    family: Annotated[str | None, Query(pattern=WORD, description="a family judged present")]
    = None,
    verdict: Annotated[str | None, Query(pattern=WORD, description="the result's verdict "
                                         "(`unknown`: none present)")] = None,
    status: Annotated[
        Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"] | None,
        Query(description="the model's status word")] = None,
    model: ModelQuery = ModelName.FESTIVE,
    analysis_version: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9._+~:-]{1,128}$",
                          description="the result's model and index version, e.g. "
                          "1.2.0+idx.e7b72ec8255c3368")] = None,
    submitted_after: Annotated[
        datetime | None, Query(description="first submitted at or after (ISO 8601; UTC if no "
                               "zone)")] = None,
    submitted_before: Annotated[datetime | None, Query(description="... and before")] = None,
    filename: Annotated[
        str | None, Query(min_length=1, max_length=255,
                          description="case-insensitive: a substring of the file name, or a "
                          "glob over the whole name when it holds * or ?")] = None,
    after: Annotated[str | None, Query(max_length=200, description="cursor: the previous "
                                       "page's `next`")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="samples per page")] = 50,
) -> SamplePage:
    if filename is not None and "\x00" in filename:
        raise HTTPException(422, "filename must not contain a NUL character")
    moment_after, moment_before = _utc(submitted_after), _utc(submitted_before)
    if moment_after and moment_before and moment_after >= moment_before:
        raise HTTPException(422, "submitted_after must be before submitted_before")
    sample_filter = SampleFilter(
        family=family, verdict=verdict, status=status, analysis_version=analysis_version,
        submitted_after=moment_after, submitted_before=moment_before,
        filename_like=_like(filename) if filename else None,
    )
    cursor = _decode_cursor(after) if after else None
    rows = await state.store.list_samples(model.value, sample_filter, cursor, limit + 1)
    more, rows = len(rows) > limit, rows[:limit]
    present = await state.store.families_present(model.value, [s.sha256 for s, _p in rows])
    items = [
        SampleItem(
            sha256=s.sha256, filename=s.filename, status=p.status if p else None,
            verdict=p.verdict if p else None, confidence=p.confidence if p else None,
            model=model.value, analysis_version=p.model_version if p else None,
            submitted_at=s.first_seen, families=present.get(s.sha256, []),
        )
        for s, p in rows
    ]
    last = rows[-1][0] if rows else None
    return SamplePage(items=items,
                      next=_encode_cursor(last.first_seen, last.sha256) if more and last else None)


async def similar_samples(
    state: State,
    sha256_hash: Sha256Hash,
    function: Annotated[
        str | None, Query(min_length=1, max_length=255,
                          description="only this function's neighbours: its address as in the "
                          "results (0x401136) or its name")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="samples answered")] = 10,
    min_similarity: Annotated[
        float, Query(ge=0.0, le=1.0, description="least similarity of a shared function")
    ] = 0.8,
    model: ModelQuery = ModelName.FESTIVE,
) -> SimilarPage:
    sha256 = sha256_hash.lower()
    sample = await _sample_functions(state, sha256, model.value)
    rows = list(range(len(sample.functions)))
    if function is not None:
        rows = [i for i in rows if _is_function(sample.functions[i], function)]
        if not rows:
            raise HTTPException(404, f"no function {function!r} among the "
                                     f"{len(sample.functions)} functions of {sha256} that "
                                     "were embedded (those of 5 or more basic blocks)")
    found, indexed = await state.similar.search(state.store, model.value, sha256, sample, rows,
                                                limit, min_similarity)
    info = await state.store.samples_with_predictions(model.value, [s.sha256 for s in found])
    items = []
    for s in found:
        stored, prediction = info.get(s.sha256, (None, None))
        items.append(SimilarSampleOut(
            sha256=s.sha256, filename=stored.filename if stored else "",
            verdict=prediction.verdict if prediction else None, score=round(s.score, 4),
            shared_count=len(s.shared),
            shared_functions=[
                SharedFunctionOut(
                    address=p.function.address, name=p.function.name,
                    child_sha256=p.function.child_sha256, other_address=p.other.address,
                    other_name=p.other.name, other_child_sha256=p.other.child_sha256,
                    similarity=round(p.similarity, 4))
                for p in s.shared[:SHARED_LISTED]
            ],
        ))
    return SimilarPage(sha256=sha256, model=model.value, function=function,
                       functions_searched=len(rows), samples_indexed=indexed,
                       min_similarity=min_similarity, items=items)


# --- helpers --------------------------------------------------------------------------
async def _sample_functions(state: State, sha256: str, model: str) -> SampleFunctions:
    row = await state.store.sample_functions(sha256, model)
    if row is not None:
        return await asyncio.to_thread(decode, row.vectors)
    prediction = await state.store.get_prediction(sha256, model)
    if prediction is None:
        raise HTTPException(404, f"no prediction for {sha256} with model {model}")
    if prediction.status != SUCCESS:
        raise HTTPException(409, f"{sha256} is not analysed yet ({prediction.status})")
    raise HTTPException(409, f"{sha256} was analysed before function vectors were kept: "
                             "reanalyse it (Queue Reanalysis with force=true)")


def _is_function(function: Function, wanted: str) -> bool:
    """`wanted` is the function's name or its address (hex, 0x optional)."""
    if function.name == wanted:
        return True
    try:
        return int(function.address, 16) == int(wanted, 16)
    except ValueError:
        return False


def _like(pattern: str) -> str:
    """A LIKE pattern (escape: backslash), lower case: a glob when the text holds * or ?,
    else a substring."""
    text = pattern.lower()
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if "*" in text or "?" in text:
        return escaped.replace("*", "%").replace("?", "_")
    return f"%{escaped}%"


def _encode_cursor(moment: datetime, sha256: str) -> str:
    raw = json.dumps([moment.isoformat(), sha256], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """400 for anything List Samples did not answer as `next`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, sha256 = json.loads(raw)
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is not None or not isinstance(sha256, str) or len(sha256) != 64 \
                or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a cursor")
        return parsed, sha256
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as err:
        raise HTTPException(400, f"after={cursor!r} is not a cursor List Samples answered "
                                 "(pass its `next` unchanged)") from err
