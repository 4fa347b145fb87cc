"""The route table: every operation of the seed, with its summary, tag and parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.datastructures import Default
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from temporalio.service import RPCError

from api import batches as b
from api import handlers as h
from api import references as refs
from api import report
from api import samples as smp
from api.auth import check_settings, guard_for
from api.docs import add_docs
from api.metrics import RequestMetrics
from api.quotas import RateLimiter, enforce_rate
from api.schemas import (
    BatchProgressOut,
    BatchQueued,
    Check,
    CrystalBallVersion,
    Detail,
    PredictionInfoOut,
    PredictionOut,
    PredictionStoreVersion,
    QueueId,
    ReferenceOut,
    ReferencePage,
    SampleId,
    SamplePage,
    SimilarPage,
    StatusResponse,
)
from api.state import ApiState
from api.text import validation_errors
from api.upload import (
    STORAGE_RETRY_AFTER_S,
    UPLOAD_REQUEST_BODY,
    UPLOAD_SCHEMA,
    UPLOAD_SCHEMA_NAME,
)
from common.config import API_VERSION, Settings, load_settings
from common.failures import is_storage_full
from festive.served import ServedCard
from store.blobs import open_blobs
from store.db import PredictionStore

EXTERNAL, INTERNAL = "External", "Internal"

# (method, path, handler, summary, tag, description prefix, response model)
ROUTES: list[tuple[str, str, Callable[..., Any], str, str, str, Any]] = [
    ("GET", "/ping", h.ping, "Ping", "Health Check",
     f"{EXTERNAL} Ping to check health of attribution-api service", Check),
    ("POST", "/samples", h.submit_sample, "Submit Sample", "Sample",
     f"{EXTERNAL} Submit Sample for prediction", SampleId),
    ("GET", "/samples", smp.list_samples, "List Samples", "Sample",
     f"{EXTERNAL} List stored samples, filtered by family present, verdict, status, model, "
     "analysis version, submission time and file name, oldest submission first, a page at "
     "a time (cursor `after` = the previous page's `next`) (not in the seed)", SamplePage),
    ("GET", "/samples/{sha256_hash}/similar", smp.similar_samples, "Similar Samples", "Sample",
     f"{EXTERNAL} The stored samples that share functions with this one (or with one of its "
     "functions), ranked by the shared functions weighted by similarity, each with the "
     "function pairs listed (not in the seed)", SimilarPage),
    ("GET", "/predictions/{sha256_hash}/status", h.get_status, "Get Status", "Prediction",
     f"{EXTERNAL} Get prediction status of sample", StatusResponse),
    ("GET", "/predictions/{sha256_hash}/{model_name}/results", h.get_results, "Get Results",
     "Prediction", f"{EXTERNAL} Get prediction results of sample", PredictionOut),
    ("GET", "/predictions/{sha256_hash}/{model_name}/report", report.get_report, "Get Report",
     "Prediction", f"{EXTERNAL} Get an analysis as a self-contained HTML page: verdict, "
     "family evidence chart, matched functions, the best matches side by side with the "
     "blocks that drove their similarity, explanation, skipped archive members; 409 while "
     "the analysis is not finished (not in the seed)", None),
    ("POST", "/predictions/{sha256_hash}/{model_name}/revoke", h.revoke_prediction_task,
     "Revoke Prediction Task", "Revoke",
     f"{EXTERNAL} Revoke prediction task that's currently running", Detail),
    ("POST", "/internal/queue/{sha256_hash}/revoke", h.revoke_task, "Revoke Task", "Revoke",
     f"{INTERNAL} Interfaces directly with AMQP to revoke task", SampleId),
    ("GET", "/internal/queue/{sha256_hash}", h.queue_status, "Queue Status Retrieval", "Queue",
     f"{INTERNAL} Interfaces directly with AMQP to get status", QueueId),
    ("POST", "/internal/queue/{sha256_hash}/festive", h.queue_festive_task, "Queue FESTIVE Task",
     "Queue", f"{INTERNAL} Queue prediction task to FESTIVE", SampleId),
    ("POST", "/internal/queue/reanalysis", b.queue_reanalysis, "Queue Reanalysis", "Queue",
     f"{INTERNAL} Reanalyse the stored samples a filter chooses (by default those lacking a "
     "result of the current analysis version) as one durable batch; asking again with the "
     "same filter joins the running batch (not in the seed)", BatchQueued),
    ("GET", "/internal/queue/reanalysis/{batch_id}", b.batch_progress,
     "Get Reanalysis Progress", "Queue",
     f"{INTERNAL} Progress of a batch reanalysis: done, failed, running, remaining, rate, "
     "time left, and the failures with their error_details (not in the seed)",
     BatchProgressOut),
    ("POST", "/internal/queue/reanalysis/{batch_id}/retry-failed", b.retry_failed,
     "Retry Failed Reanalyses", "Queue",
     f"{INTERNAL} Start a batch of exactly the samples that failed in this batch (not in the "
     "seed)", BatchQueued),
    ("POST", "/internal/queue/reanalysis/{batch_id}/cancel", b.cancel_batch,
     "Cancel Reanalysis", "Queue",
     f"{INTERNAL} Cancel a batch: the analyses it started are cancelled, no new one starts; "
     "answers the progress so far (not in the seed)", BatchProgressOut),
    ("POST", "/internal/predictions/{sha256_hash}/{model_name}", h.create_prediction,
     "Create Prediction", "CRUD", f"{INTERNAL} Create prediction row in db", None),
    ("GET", "/internal/predictions/{sha256_hash}", h.read_predictions, "Read Predictions",
     "CRUD", f"{INTERNAL} Read all model predictions of one hash", list[PredictionOut]),
    ("GET", "/internal/predictions/{sha256_hash}/info", h.read_prediction_info,
     "Read Prediction Info", "CRUD",
     f"{INTERNAL} Read all model predictions of one hash but without results",
     list[PredictionInfoOut]),
    ("GET", "/internal/predictions/{sha256_hash}/{model_name}", h.read_prediction,
     "Read Prediction", "CRUD", f"{INTERNAL} Read one model prediction of one hash",
     PredictionOut),
    ("PUT", "/internal/predictions/{sha256_hash}/{model}/task/{celery_task_id}",
     h.update_celery_task_id, "Update Celery Task ID", "CRUD",
     f"{INTERNAL} Update Prediction row with celery task id", None),
    ("PUT", "/internal/predictions/{sha256_hash}/{model}/results", h.update_predictions,
     "Update Predictions", "CRUD", f"{INTERNAL} Update empty prediction row with results", None),
    ("PUT", "/internal/predictions/{sha256_hash}/{model}/explanation", h.update_explanations,
     "Update Explanations", "CRUD", f"{INTERNAL} Update empty prediction row with explanation",
     None),
    ("DELETE", "/internal/predictions/{sha256_hash}/{model}", h.delete_prediction,
     "Delete prediction", "CRUD", f"{INTERNAL} Delete prediction row", None),
    ("GET", "/versions", h.get_versions, "Get Versions", "Meta",
     f"{EXTERNAL} Get all container image versions", None),
    ("GET", "/internal/versions/crystal-ball", h.get_crystal_ball_version,
     "Get Version of Crystal Ball", "Meta",
     f"{INTERNAL} Get container image version of crystal-ball", CrystalBallVersion),
    ("GET", "/internal/versions/prediction-store", h.get_prediction_store_version,
     "Get Version of Prediction Store", "Meta",
     f"{INTERNAL} Get container image version of prediction-store", PredictionStoreVersion),
    # Not in the seed: reference samples users add (api/references.py).
    ("POST", "/internal/references", refs.add_reference, "Add Reference", "References",
     f"{INTERNAL} Add a labelled reference sample (multipart `sample`, `family`, `version`, "
     "optional comma-separated `tags`): lifted and embedded by its own workflow, then "
     "searched by every analysis. 201 when new, 200 with the existing reference for a "
     "sha256 already added", ReferenceOut),
    ("GET", "/internal/references", refs.list_references, "List References", "References",
     f"{INTERNAL} List reference samples, a page at a time (cursor `after`)", ReferencePage),
    ("GET", "/internal/references/{sha256_hash}", refs.get_reference, "Get Reference",
     "References", f"{INTERNAL} Read one reference sample", ReferenceOut),
    ("PATCH", "/internal/references/{sha256_hash}", refs.relabel_reference, "Relabel Reference",
     "References", f"{INTERNAL} Change a reference's family, version and/or tags (a new "
     "index version)", ReferenceOut),
    ("DELETE", "/internal/references/{sha256_hash}", refs.remove_reference, "Remove Reference",
     "References", f"{INTERNAL} Remove a reference sample (a new index version)", Detail),
]

# Operations that answer something else than JSON.
RESPONSE_CLASSES: dict[Callable[..., Any], type[Response]] = {report.get_report: HTMLResponse}

# Operations whose multipart body is read as a stream: (request body, schema name, schema).
STREAMED_UPLOADS: dict[Callable[..., Any], tuple[dict[str, Any], str, dict[str, Any]]] = {
    h.submit_sample: (UPLOAD_REQUEST_BODY, UPLOAD_SCHEMA_NAME, UPLOAD_SCHEMA),
    refs.add_reference: (refs.UPLOAD_REQUEST_BODY, refs.UPLOAD_SCHEMA_NAME, refs.UPLOAD_SCHEMA),
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    check_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = PredictionStore(settings.database_url, read_cache=True)
        await store.init_schema()
        blobs = open_blobs(settings.blob_url, settings.scratch_dir, settings.s3_endpoint_url,
                           settings.s3_region)
        limiter = (RateLimiter(settings.rate_limit, settings.rate_burst)
                   if settings.rate_limit > 0 else None)
        app.state.ae = ApiState(settings=settings, blobs=blobs, store=store, limiter=limiter,
                                served=ServedCard(blobs, settings.gpu_queue))
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="Attribution Engine v2",
        version=API_VERSION,
        description="REST API to interact with Function Similarity Models",
        license_info={"name": "AGPLv3", "identifier": "AGPL-3.0-only"},
        lifespan=lifespan,
        # No redirect for a trailing slash (Starlette would build it from the Host
        # header): an unknown path is a 404. /docs is served offline (api/docs.py).
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
    # The JSON operations read at most this many body bytes (413 above; the declared
    # Content-Length is checked before reading). Submit Sample streams (api/upload.py).
    body_limits = {
        h.update_predictions: settings.max_predictions_body_bytes,
        h.update_explanations: settings.max_explanation_body_bytes,
        refs.relabel_reference: refs.RELABEL_BODY_MAX,
    }
    for method, path, handler, summary, tag, description, model in ROUTES:
        # Keys (api/auth.py): Ping is open, /internal/ needs the internal key, the rest
        # an external (or internal) key. Behind the key, the key's request rate
        # (api/quotas.py); Ping is limited by neither.
        guard = guard_for(path)
        app.add_api_route(
            path, handler, methods=[method], summary=summary, tags=[tag],
            description=description, response_model=model,
            response_model_by_alias=True,
            operation_id=summary.lower().replace(" ", "_"),
            dependencies=[Depends(guard), Depends(enforce_rate)] if guard else None,
            # Submit Sample and Add Reference read their multipart body as a stream
            # (api/upload.py).
            openapi_extra={"requestBody": STREAMED_UPLOADS[handler][0]}
            if handler in STREAMED_UPLOADS else None,
            max_body_size=body_limits.get(handler),
            response_class=RESPONSE_CLASSES.get(handler, Default(JSONResponse)),
        )
    _document_upload_schema(app)
    add_docs(app)
    app.add_middleware(RequestMetrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """422, with pydantic's errors made safe to serialise (api/text.py): the default
        handler echoes the input, and a NaN or lone surrogate there made it a 500."""
        return JSONResponse(status_code=422, content={"detail": validation_errors(exc.errors())})

    @app.exception_handler(RPCError)
    async def temporal_unavailable(_request: Request, exc: RPCError) -> JSONResponse:
        return JSONResponse(
            status_code=503, content={"detail": f"the Temporal server answered: {exc.message}"}
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(_request: Request, exc: DBAPIError) -> JSONResponse:
        """A locked or unreachable database (or a pooled connection that died with it) is a
        temporary condition, not a server bug; a full disk under it is a 507."""
        if is_storage_full(exc):
            return JSONResponse(
                status_code=507, headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
                content={"detail": "insufficient storage: the database's disk is full, "
                                   "retry later"},
            )
        return _unavailable(f"the database is unavailable, retry later: {exc.orig}")

    @app.exception_handler(ConnectionError)
    async def connection_failed(_request: Request, exc: ConnectionError) -> JSONResponse:
        """Raised bare (not wrapped by SQLAlchemy) when a new database connection is
        refused or reset, e.g. PostgreSQL stopped under a running API."""
        return _unavailable(f"the database (or another backing service) is unreachable, "
                            f"retry later: {exc}")

    return app


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                        content={"detail": detail})


def _document_upload_schema(app: FastAPI) -> None:
    """Add the multipart schemas of the streamed uploads, which no parameter declares, to
    the document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for _body, name, upload_schema in STREAMED_UPLOADS.values():
                schemas[name] = upload_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
