"""Thin handlers of the reference operations: samples users add, labelled with a family
and version, searched beside the shipped index once their AddReference run is done.

Adding, relabelling or removing a searched reference changes the index version
(api/versions.py), so the next submission or Queue Reanalysis analyses samples again.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import pipeline, quotas
from api.handlers import State
from api.schemas import ReferenceLabels, ReferenceOut, ReferencePage, ReferenceRelabel, Sha256Hash
from api.text import serialisable
from api.upload import FIELD, receive_sample
from api.versions import current_index_version, served_card
from common.contracts import FAILURE, SUCCESS
from store.models import Reference

FORM_FIELDS = frozenset({"family", "version", "tags"})
PAGE_MAX = 500
RELABEL_BODY_MAX = 64 * 1024  # bytes of a Relabel Reference body (413 above)

# Add Reference's multipart body, as shown in the OpenAPI document (the handler streams it).
UPLOAD_SCHEMA_NAME = "Body_add_reference"
UPLOAD_SCHEMA = {
    "title": UPLOAD_SCHEMA_NAME,
    "type": "object",
    "required": [FIELD, "family", "version"],
    "properties": {
        FIELD: {"title": "Sample", "type": "string", "format": "binary",
                "description": "the reference binary (or an archive of binaries)"},
        "family": {"title": "Family", "type": "string", "maxLength": 64,
                   "description": "code family: a known one or a new one, one word"},
        "version": {"title": "Version", "type": "string", "maxLength": 64,
                    "description": "version of the family's code, one word"},
        "tags": {"title": "Tags", "type": "string",
                 "description": "comma-separated tags, e.g. vendor:acme,gcc"},
    },
}
UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{UPLOAD_SCHEMA_NAME}"}}
    },
}


async def add_reference(request: Request, response: Response, state: State) -> ReferenceOut:
    """201 and a new reference, or 200 and the existing one for a sha256 already added
    (a failed one, or one embedded by an older model, runs again with these labels)."""
    allowance = await quotas.upload_allowance(request, state)  # 429 when used up
    upload = await receive_sample(request, state.blobs, state.settings.max_upload_bytes,
                                  FORM_FIELDS, allowance)
    await quotas.charge_upload(state, allowance, upload.size)
    labels = _labels(upload.fields)
    row, created = await state.store.add_reference(
        upload.sha256, labels.family, labels.version, labels.tags, upload.filename)
    weights = (await served_card(state))["weights_sha256"]
    if created or _needs_run(row, weights):
        client = await state.temporal()
        run_id = await pipeline.start_reference(client, state.settings, upload.sha256,
                                                upload.filename)
        await state.store.begin_reference_run(upload.sha256, run_id, labels.family,
                                              labels.version, labels.tags)
        row = await _require(state, upload.sha256)
    response.status_code = 201 if created else 200
    return _out(row, weights)


async def list_references(
    state: State,
    after: Annotated[str, Query(pattern=r"^([0-9a-fA-F]{64})?$",
                                description="cursor: the last sha256 of the previous page")] = "",
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="references per page")] = 100,
) -> ReferencePage:
    rows = await state.store.list_references(after.lower(), limit)
    weights = (await served_card(state))["weights_sha256"]
    return ReferencePage(
        references=[_out(r, weights) for r in rows],
        next_cursor=rows[-1].sha256 if len(rows) == limit else None,
        index_version=await current_index_version(state),
    )


async def get_reference(state: State, sha256_hash: Sha256Hash) -> ReferenceOut:
    row = await _require(state, sha256_hash.lower())
    return _out(row, (await served_card(state))["weights_sha256"])


async def relabel_reference(
    state: State, sha256_hash: Sha256Hash, body: ReferenceRelabel
) -> ReferenceOut:
    labels = body.model_dump(exclude_none=True)
    if not labels:
        raise HTTPException(422, "nothing to change: give family, version and/or tags")
    row = await state.store.relabel_reference(sha256_hash.lower(), **labels)
    if row is None:
        raise _missing(sha256_hash)
    return _out(row, (await served_card(state))["weights_sha256"])


async def remove_reference(state: State, sha256_hash: Sha256Hash) -> dict[str, str]:
    """The reference is no longer searched; a run still going records nothing."""
    sha256 = sha256_hash.lower()
    if not await state.store.remove_reference(sha256):
        raise _missing(sha256)
    return {"detail": f"reference {sha256} removed"}


# --- helpers --------------------------------------------------------------------------
def _labels(fields: dict[str, str]) -> ReferenceLabels:
    """The form fields as labels; 422 with pydantic's errors when they do not fit."""
    raw: dict[str, object] = {k: v for k, v in fields.items() if k != "tags"}
    if "tags" in fields:
        raw["tags"] = [t.strip() for t in fields["tags"].split(",") if t.strip()]
    try:
        return ReferenceLabels.model_validate(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc


def _needs_run(row: Reference, weights_sha256: str) -> bool:
    """Not running and not usable: never started, failed, or made by other weights."""
    if row.run_id is None or row.status == FAILURE:
        return True
    return row.status == SUCCESS and row.weights_sha256 != weights_sha256


async def _require(state: State, sha256: str) -> Reference:
    row = await state.store.get_reference(sha256)
    if row is None:
        raise _missing(sha256)
    return row


def _missing(sha256: str) -> HTTPException:
    return HTTPException(404, f"no reference {sha256.lower()}")


def _out(row: Reference, weights_sha256: str) -> ReferenceOut:
    """`searched`: embedded by the weights the workers serve."""
    searched = row.status == SUCCESS and row.weights_sha256 == weights_sha256
    return ReferenceOut(
        sha256=row.sha256, family=row.family, version=row.version, tags=list(row.tags or []),
        filename=serialisable(row.filename), status=row.status,
        error_details=serialisable(row.error_details), functions=row.functions,
        searched=searched, created_at=row.created_at, updated_at=row.updated_at,
    )
