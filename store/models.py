"""SQLAlchemy tables: samples seen, one prediction per (sample, model), and the reference
samples users add."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The schema number Alembic's newest migration writes into store_info (store/migrations:
# 0001 = schema 1; 0002 = schema 2, the `references` and `revocations` tables; 0003 =
# schema 3, `batches` and `batch_items`; 0004 = schema 4, `upload_usage`; 0005 = schema
# 5, `family_evidence`, `sample_functions` and the predictions' `verdict` and
# `confidence`). A change to these tables is a new migration that also raises this number.
SCHEMA_VERSION = "5"


class Base(DeclarativeBase):
    pass


class Sample(Base):
    __tablename__ = "samples"
    # List Samples pages in (first_seen, sha256) order
    __table_args__ = (Index("ix_samples_first_seen", "first_seen", "sha256"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255), default="")
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_submitted: Mapped[datetime] = mapped_column(DateTime)
    submissions: Mapped[int] = mapped_column(Integer, default=1)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_model_status", "model", "status"),
        Index("ix_predictions_model_verdict", "model", "verdict"),
        Index("ix_predictions_model_version", "model", "model_version"),
    )

    sha256_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    celery_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    prediction_results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    explanation_results: Mapped[str | None] = mapped_column(Text, nullable=True)
    # copies of prediction_results' "verdict" and "confidence", kept with it, for queries
    verdict: Mapped[str | None] = mapped_column(String(64), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    predicted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class FamilyEvidence(Base):
    """One family judged present or weak in a prediction's results (prediction_results
    "families"), written with them in the same transaction, replaced when they are, and
    deleted with the prediction: what List Samples' family filter searches."""

    __tablename__ = "family_evidence"
    __table_args__ = (
        Index("ix_family_evidence_family", "family", "model", "state", "sha256"),
    )

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    analysis_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    family: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # present | weak
    probability: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    functions_matched: Mapped[int] = mapped_column(Integer)


class SampleFunctions(Base):
    """The function vectors of one analysed sample (int8 codes, a scale per row, names
    and addresses: festive/attribution/similar.py's npz), written with its results. The
    id only grows: an API process loads the rows newer than those it holds."""

    __tablename__ = "sample_functions"
    __table_args__ = (
        Index("ix_sample_functions_sample", "sha256", "model", unique=True),
        Index("ix_sample_functions_weights", "model", "weights_sha256", "id"),
        # SQLite: ids are never reused, even the newest one's after it is deleted
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    analysis_version: Mapped[str] = mapped_column(String(128))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    functions: Mapped[int] = mapped_column(Integer)
    vectors: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Reference(Base):
    """A labelled reference sample a user added: lifted and embedded by its own workflow
    (AddReference), searched beside the shipped index once SUCCESS."""

    __tablename__ = "references"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    filename: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    error_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    functions: Mapped[int | None] = mapped_column(Integer, nullable=True)
    vectors_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the model weights that made the vectors: only references of the current weights
    # are searched (a new model needs them added again)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Revocation(Base):
    """One row per workflow run a revoke was accepted for: the insert is the claim that
    only one revoke request (across every API process) wins."""

    __tablename__ = "revocations"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(DateTime)


class Batch(Base):
    """A batch reanalysis (workflow ReanalysisBatch): its filter and what it chose."""

    __tablename__ = "batches"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # first run id
    workflow_id: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    filter: Mapped[dict[str, Any]] = mapped_column(JSON)
    total: Mapped[int] = mapped_column(Integer, default=0)
    cached: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BatchItem(Base):
    """One sample of a batch, chosen when the batch opened, and its outcome there."""

    __tablename__ = "batch_items"
    __table_args__ = (Index("ix_batch_items_status", "batch_id", "status"),)

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class UploadUsage(Base):
    """Bytes uploaded with one API key in one quota window (api/quotas.py). The key is
    named by a digest of it, never by the key itself."""

    __tablename__ = "upload_usage"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class StoreInfo(Base):
    """One row naming the schema version, so Get Versions can report the store's."""

    __tablename__ = "store_info"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
