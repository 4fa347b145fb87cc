"""Request and response models: the seed's shapes, field for field."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.text import Text
from common.contracts import MODEL_NAME

SHA256_EXAMPLE = "b8af48fc5dc8371d6b00b16029e9ab9027e2da86fa6d8dbda181df464226a3a8"
TASK_ID_EXAMPLE = "550e8400-e29b-41d4-a716-446655440000"


class ModelName(StrEnum):
    FESTIVE = MODEL_NAME


Sha256Hash = Annotated[
    str,
    Path(
        title="Hash", min_length=64, max_length=64, pattern=r"^[0-9a-fA-F]{64}$",
        description="sha256 of the sample, 64 hex characters", examples=[SHA256_EXAMPLE],
    ),
]
ModelNameParam = Annotated[ModelName, Path(title="Name", examples=[MODEL_NAME])]
TaskId = Annotated[UUID, Path(title="Task ID", examples=[TASK_ID_EXAMPLE])]

# dict[str, str | dict[str, dict[str, str]]]: the seed's type; keys in the README.
PredictionResults = dict[str, str | dict[str, dict[str, str]]]
# The same shape in a request: every key and leaf is storable text (api/text.py).
PredictionResultsIn = dict[Text, Text | dict[Text, dict[Text, Text]]]


class Check(BaseModel):
    check: bool


class SampleId(BaseModel):
    sample_id: str = Field(examples=[SHA256_EXAMPLE])


class Detail(BaseModel):
    detail: str


class QueueId(BaseModel):
    id: str = Field(examples=[TASK_ID_EXAMPLE])


class BatchQueued(BaseModel):
    """A batch reanalysis started (or joined)."""

    id: str = Field(examples=[TASK_ID_EXAMPLE], description="the batch id: its first run id")
    batch_id: str = Field(examples=[TASK_ID_EXAMPLE])
    workflow_id: str = Field(examples=[f"reanalyze/{MODEL_NAME}/1.2.0+idx.e7b72ec8255c3368"])


class BatchFailureOut(BaseModel):
    sha256: str
    run_id: str | None
    error_details: str | None


class BatchProgressOut(BaseModel):
    """done + failed + revoked + skipped = finished; finished + running + remaining = total."""

    batch_id: str
    workflow_id: str
    state: str = Field(description="opening, running, cancelling, done or cancelled")
    source: str = Field(description="workflow (its progress query) or database (no worker "
                        "answered, or the batch has ended)")
    analysis_version: str
    filter: dict[str, Any]
    total: int
    done: int
    failed: int
    revoked: int
    skipped: int
    finished: int
    running: int | None
    remaining: int
    joined: int | None = None
    cached: int = Field(description="matched the filter but already had a current result: "
                        "left out (force=true redoes them)")
    left_running: int | None = None
    lifts_new: int | None = None
    lifts_reused: int | None = None
    elapsed_s: float | None
    rate_per_min: float | None
    eta_s: float | None
    failures: list[BatchFailureOut]
    failures_total: int


class StatusResponse(BaseModel):
    status: dict[str, str] = Field(
        description="Celery-style word per model: PENDING, STARTED, RETRY, SUCCESS, FAILURE, "
        "REVOKED"
    )
    detailed_status: dict[str, dict[str, Any]] = Field(
        description="Temporal's view per model: execution status, stage, attempt, last "
        "failure, timings, pending activities; `source` (temporal, or database: the row "
        "alone) and `as_of` (when the view was made)"
    )


class PredictionOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(examples=[MODEL_NAME])
    error_details: str | None = None
    sha256_hash: str = Field(examples=[SHA256_EXAMPLE])
    predicted_at: datetime | None = None
    celery_task_id: str | None = Field(default=None, examples=[TASK_ID_EXAMPLE])
    prediction_results: PredictionResults | None = None
    explanation_results: str | None = None


class PredictionInfoOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    error_details: str | None = None
    sha256_hash: str
    predicted_at: datetime | None = None
    celery_task_id: str | None = None


class PredictionUpdate(BaseModel):
    prediction_results: PredictionResultsIn | None = Field(default=None, title="Prediction")


class ExplanationUpdate(BaseModel):
    explanation_results: Text | None = Field(default=None, title="Explanation")


class CrystalBallVersion(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    crystal_ball: str = Field(alias="crystal-ball")


class PredictionStoreVersion(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    prediction_store: str = Field(alias="prediction-store")


# --- references users add -----------------------------------------------------------------
def _not_unknown(value: str) -> str:
    if value.lower() == "unknown":
        raise ValueError("'unknown' is the verdict for no family: choose another name")
    return value


# Families and versions are single words: results list them separated by spaces.
Family = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
          description="code family the reference belongs to (a new one or a known one)",
          examples=["acme-parser"]),
    AfterValidator(_not_unknown),
]
FamilyVersion = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+~:-]*$",
          description="version of the family's code", examples=["1.4.2"]),
]
Tag = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")]
Tags = Annotated[list[Tag], Field(max_length=16, examples=[["vendor:acme", "gcc"]])]


class ReferenceLabels(BaseModel):
    """Add Reference's form fields (tags comma-separated there)."""

    model_config = ConfigDict(extra="forbid")

    family: Family
    version: FamilyVersion
    tags: Tags = Field(default_factory=list)


class ReferenceRelabel(BaseModel):
    """Relabel Reference: the labels to change (at least one)."""

    model_config = ConfigDict(extra="forbid")

    family: Family | None = None
    version: FamilyVersion | None = None
    tags: Tags | None = None


class ReferenceOut(BaseModel):
    sha256: str = Field(examples=[SHA256_EXAMPLE])
    family: str
    version: str
    tags: list[str]
    filename: str
    status: str = Field(description="PENDING, STARTED, SUCCESS or FAILURE")
    error_details: str | None = None
    functions: int | None = Field(default=None, description="functions embedded as rows")
    searched: bool = Field(description="whether analyses search it now (SUCCESS, and embedded "
                                       "by the installed model's weights)")
    created_at: datetime
    updated_at: datetime


class ReferencePage(BaseModel):
    references: list[ReferenceOut]
    next_cursor: str | None = Field(
        default=None, description="pass as `after` for the next page; null on the last page")
    index_version: str = Field(description="the index version analyses use now")


# --- finding samples (not in the seed) ------------------------------------------------------
class SampleItem(BaseModel):
    sha256: str = Field(examples=[SHA256_EXAMPLE])
    filename: str = Field(description="the name it was first submitted under")
    status: str | None = Field(description="the model's status word; null: no prediction")
    verdict: str | None = Field(description="the strongest family present, or unknown; null "
                                            "until a result is stored")
    confidence: float | None = Field(description="the verdict's calibrated probability")
    model: str = Field(examples=[MODEL_NAME])
    analysis_version: str | None = Field(description="model and index version of the result")
    submitted_at: datetime = Field(description="first submission (UTC): the list's order")
    families: list[str] = Field(description="the families judged present, most probable first")


class SamplePage(BaseModel):
    items: list[SampleItem]
    next: str | None = Field(description="pass as `after` for the next page; null on the last")


class SharedFunctionOut(BaseModel):
    address: str = Field(description="this sample's function (as in its results' matches)")
    name: str
    child_sha256: str = Field(description="the binary it is in (the sample, or an archive "
                                          "member)")
    other_address: str
    other_name: str
    other_child_sha256: str
    similarity: float


class SimilarSampleOut(BaseModel):
    sha256: str = Field(examples=[SHA256_EXAMPLE])
    filename: str
    verdict: str | None
    score: float = Field(description="sum of the shared functions' similarities")
    shared_count: int = Field(description="functions shared (one-to-one)")
    shared_functions: list[SharedFunctionOut] = Field(
        description="most similar first; at most 500 listed")


class SimilarPage(BaseModel):
    sha256: str = Field(examples=[SHA256_EXAMPLE])
    model: str = Field(examples=[MODEL_NAME])
    function: str | None = Field(description="the one function searched for, if asked")
    functions_searched: int = Field(description="this sample's functions looked up")
    samples_indexed: int = Field(description="analysed samples the index holds (this one "
                                             "included)")
    min_similarity: float
    items: list[SimilarSampleOut]
