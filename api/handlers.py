"""Thin handlers: validate, call the store or the pipeline, shape the seed's response."""

from __future__ import annotations

import asyncio
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from temporalio.service import RPCError, RPCStatusCode

from api import pipeline, quotas
from api.schemas import (
    ExplanationUpdate,
    ModelName,
    ModelNameParam,
    PredictionInfoOut,
    PredictionOut,
    PredictionUpdate,
    Sha256Hash,
    TaskId,
)
from api.state import ApiState, get_state
from api.text import Text, serialisable
from api.upload import receive_sample
from api.versions import current_analysis_version, current_index_version, served_card
from common.config import API_VERSION
from common.contracts import FAILURE, SUCCESS
from festive.card import MODEL_NAME
from store.db import utcnow
from store.models import Prediction

State = Annotated[ApiState, Depends(get_state)]


# --- Health Check ---------------------------------------------------------------------
async def ping() -> dict[str, bool]:
    return {"check": True}


# --- Sample ---------------------------------------------------------------------------
async def submit_sample(request: Request, state: State) -> dict[str, str]:
    """The multipart body is parsed as it arrives: see api/upload.py (413 over the cap)."""
    allowance = await quotas.upload_allowance(request, state)  # 429 when used up
    upload = await receive_sample(request, state.blobs, state.settings.max_upload_bytes,
                                  allowance=allowance)
    await quotas.charge_upload(state, allowance, upload.size)
    await state.store.record_sample(upload.sha256, upload.size, upload.filename)
    for model in ModelName:
        await _start_if_needed(state, upload.sha256, model.value, upload.filename)
    return {"sample_id": upload.sha256}


async def _start_if_needed(state: ApiState, sha256: str, model: str, filename: str) -> str | None:
    """Dedupe: done for this model and index version, or running, means nothing new starts."""
    current = await current_analysis_version(state)
    row = await state.store.get_prediction(sha256, model)
    if row is not None and row.status == SUCCESS and row.model_version == current:
        return row.celery_task_id
    client = await state.temporal()
    run_id = await pipeline.start_analysis(
        client, state.settings, sha256, model, current, filename
    )
    await state.store.begin_run(sha256, model, current, run_id)
    return run_id


# --- Prediction -------------------------------------------------------------------------
async def get_status(state: State, sha256_hash: Sha256Hash) -> dict[str, Any]:
    """Rows from the database; Temporal's describe() for runs not known to have ended (an
    ended run's view is kept per process, api/finished.py; an open run's until it is due
    again, AE_STATUS_REFRESH_S, api/running.py)."""
    sha256 = sha256_hash.lower()
    rows = {row.model: row for row in await state.store.list_prediction_states(sha256)}
    if not rows and await state.store.get_sample(sha256) is None:
        raise HTTPException(404, f"sample {sha256} has not been submitted")
    status, detailed = {}, {}
    for model in ModelName:
        row = rows.get(model.value)
        known = state.finished.get(row) or await state.running.view(
            sha256, model.value, row, partial(_describe_status, state, sha256, model, row),
            partial(_row_status, row))
        if known is not None:
            status[model.value], detailed[model.value] = known
    return {"status": status, "detailed_status": detailed}


def _row_status(row: Prediction | None) -> tuple[str, dict[str, Any]]:
    """(Celery word, detailed status) of the database row alone: what the workflow last
    recorded, for a request that Temporal did not answer in time (api/running.py)."""
    return pipeline.celery_status(row, None), serialisable(pipeline.detailed_status(row))


async def _describe_status(state: ApiState, sha256: str, model: ModelName,
                           row: Prediction | None) -> tuple[str, dict[str, Any]] | None:
    """(Celery word, detailed status) from Temporal, None when no run is known at all."""
    client = await state.temporal()
    run = await pipeline.describe_run(client, model.value, sha256)
    if row is None and run is None:
        return None
    word = pipeline.celery_status(row, run)
    detail = serialisable(await pipeline.described_status(row, run))
    if run is not None:
        state.finished.put(row, run.run_id, run.running, word, detail)
    return word, detail


async def get_results(
    state: State, model_name: ModelNameParam, sha256_hash: Sha256Hash
) -> PredictionOut:
    return _prediction_out(await _require_row(state, sha256_hash, model_name))


# --- Revoke ---------------------------------------------------------------------------
async def revoke_prediction_task(
    state: State, model_name: ModelNameParam, sha256_hash: Sha256Hash
) -> dict[str, str]:
    run_id = await _cancel_running(state, sha256_hash.lower(), model_name.value)
    return {"detail": f"Prediction Task [{run_id}] revoked"}


async def revoke_task(state: State, sha256_hash: Sha256Hash) -> dict[str, str]:
    sha256 = sha256_hash.lower()
    for model in ModelName:
        await _cancel_running(state, sha256, model.value)
    return {"sample_id": sha256}


async def _cancel_running(state: ApiState, sha256: str, model: str) -> str:
    client = await state.temporal()
    run = await pipeline.describe_run(client, model, sha256)
    if run is None:
        raise HTTPException(404, f"no prediction task for {sha256} with model {model}")
    if not run.running:
        raise HTTPException(
            409, f"prediction task [{run.run_id}] is not running "
            f"({run.description.status.name if run.description.status else 'unknown'})"
        )
    # Many revokes of one run may race here (in several API processes): the database
    # lets exactly one claim it; the others answer 409 like any revoke of a run that is
    # no longer running.
    if not await state.store.claim_revocation(run.run_id, sha256, model):
        raise HTTPException(409, f"prediction task [{run.run_id}] is already being revoked")
    try:
        await pipeline.cancel_run(client, model, sha256, run.run_id)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # it ended since describe()
            raise HTTPException(
                409, f"prediction task [{run.run_id}] is not running (it has ended)"
            ) from err
        await state.store.release_revocation(run.run_id)
        raise
    return run.run_id


# --- Queue ----------------------------------------------------------------------------
async def queue_status(state: State, sha256_hash: Sha256Hash) -> dict[str, str]:
    sha256 = sha256_hash.lower()
    client = await state.temporal()
    run = await pipeline.describe_run(client, MODEL_NAME, sha256)
    if run is None:
        raise HTTPException(404, f"no prediction task for {sha256}")
    return {"id": run.run_id}


async def queue_festive_task(state: State, sha256_hash: Sha256Hash) -> dict[str, str]:
    sha256 = sha256_hash.lower()
    if not await asyncio.to_thread(state.blobs.exists, sha256):
        raise HTTPException(404, f"sample {sha256} is not stored; submit it first")
    sample = await state.store.get_sample(sha256)
    await _start_if_needed(state, sha256, MODEL_NAME, sample.filename if sample else "")
    return {"sample_id": sha256}


# --- CRUD -----------------------------------------------------------------------------
async def create_prediction(
    state: State, sha256_hash: Sha256Hash, model_name: ModelNameParam
) -> None:
    if not await state.store.create_prediction(sha256_hash.lower(), model_name.value):
        raise HTTPException(409, f"a prediction for {sha256_hash.lower()} with model "
                                 f"{model_name.value} already exists")


async def read_predictions(state: State, sha256_hash: Sha256Hash) -> list[PredictionOut]:
    rows = await state.store.list_predictions(sha256_hash.lower())
    if not rows:
        raise HTTPException(404, f"no predictions for {sha256_hash.lower()}")
    return [_prediction_out(r) for r in rows]


async def read_prediction_info(state: State, sha256_hash: Sha256Hash) -> list[PredictionInfoOut]:
    rows = await state.store.list_predictions(sha256_hash.lower())
    if not rows:
        raise HTTPException(404, f"no predictions for {sha256_hash.lower()}")
    return [
        PredictionInfoOut(
            model=r.model, error_details=serialisable(r.error_details), sha256_hash=r.sha256_hash,
            predicted_at=r.predicted_at, celery_task_id=r.celery_task_id,
        )
        for r in rows
    ]


async def read_prediction(
    state: State, model_name: ModelNameParam, sha256_hash: Sha256Hash
) -> PredictionOut:
    return _prediction_out(await _require_row(state, sha256_hash, model_name))


async def update_celery_task_id(
    state: State, sha256_hash: Sha256Hash, model: ModelNameParam, celery_task_id: TaskId
) -> None:
    await _update(state, sha256_hash, model, celery_task_id=str(celery_task_id))


async def update_predictions(
    state: State, sha256_hash: Sha256Hash, model: ModelNameParam, body: PredictionUpdate,
    error_details: Annotated[Text | None, Query(title="Error")] = None,
) -> None:
    await _update(
        state, sha256_hash, model, prediction_results=body.prediction_results,
        error_details=error_details, predicted_at=utcnow(),
        status=FAILURE if error_details else SUCCESS,
    )


async def update_explanations(
    state: State, sha256_hash: Sha256Hash, model: ModelNameParam, body: ExplanationUpdate,
    error_details: Annotated[Text | None, Query(title="Error")] = None,
) -> None:
    fields: dict[str, Any] = {"explanation_results": body.explanation_results}
    if error_details is not None:
        fields.update(error_details=error_details, status=FAILURE)
    await _update(state, sha256_hash, model, **fields)


async def delete_prediction(
    state: State, sha256_hash: Sha256Hash, model: ModelNameParam
) -> None:
    if not await state.store.delete_prediction(sha256_hash.lower(), model.value):
        raise _no_prediction(sha256_hash, model)


async def _update(state: ApiState, sha256_hash: str, model: ModelName, **fields: Any) -> None:
    if not await state.store.update_fields(sha256_hash.lower(), model.value, **fields):
        raise _no_prediction(sha256_hash, model)


# --- Meta -----------------------------------------------------------------------------
async def get_versions(state: State) -> dict[str, Any]:
    card = await served_card(state)
    references = await state.store.active_references(card["weights_sha256"])
    return {
        "description": "Attribution Engine v2: binary function similarity on a Temporal pipeline",
        "attribution-api": API_VERSION,
        "crystal-ball": _crystal_ball_version(),
        "prediction-store": await _store_version(state),
        MODEL_NAME: {
            "version": str(card.get("version", "")),
            "index_version": await current_index_version(state),
            "shipped_index_version": str(card.get("index_version", "")),
            "user_references": str(len(references)),
            "analysis_version": await current_analysis_version(state),
            # "workers": the card a GPU worker published (festive/served.py);
            # "installed": none published yet, this API's own copy
            "source": str(card.get("source", "")),
            "engine": str(card.get("default_engine", "")),
            "weights_sha256": str(card.get("weights_sha256", "")),
            "reference_functions": str(card.get("reference_functions", "")),
            "reference_families": " ".join(card.get("reference_families", [])),
        },
    }


async def get_crystal_ball_version() -> dict[str, str]:
    return {"crystal-ball": _crystal_ball_version()}


async def get_prediction_store_version(state: State) -> dict[str, str]:
    return {"prediction-store": await _store_version(state)}


def _crystal_ball_version() -> str:
    parts = []
    for package in ("temporalio", "angr", "torch"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} missing")
    return f"{API_VERSION} ({', '.join(parts)})"


async def _store_version(state: ApiState) -> str:
    dialect = state.store.engine.dialect.name
    return f"{API_VERSION} (schema {await state.store.schema_version()}, {dialect})"


# --- helpers --------------------------------------------------------------------------
async def _require_row(state: ApiState, sha256_hash: str, model: ModelName) -> Prediction:
    row = await state.store.get_prediction(sha256_hash.lower(), model.value)
    if row is None:
        raise _no_prediction(sha256_hash, model)
    return row


def _no_prediction(sha256_hash: str, model: ModelName) -> HTTPException:
    return HTTPException(404, f"no prediction for {sha256_hash.lower()} with model {model.value}")


def _prediction_out(row: Prediction) -> PredictionOut:
    """A stored row as answered; `serialisable` so that no stored value breaks a read."""
    return PredictionOut(
        model=row.model, error_details=serialisable(row.error_details),
        sha256_hash=row.sha256_hash, predicted_at=row.predicted_at,
        celery_task_id=row.celery_task_id,
        prediction_results=serialisable(row.prediction_results),
        explanation_results=serialisable(row.explanation_results),
    )
