"""SQLAlchemy tables: samples seen, one prediction per (sample, model), and the reference
samples users add."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The schema number Alembic's newest migration writes into store_info (store/migrations:
# 0001 = schema 1; 0002 = schema 2, the `references` and `revocations` tables; 0003 =
# schema 3, `batches` and `batch_items`; 0004 = schema 4, `upload_usage`). A change to
# these tables is a new migration that also raises this number.
SCHEMA_VERSION = "4"


class Base(DeclarativeBase):
    pass


class Sample(Base):
    __tablename__ = "samples"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255), default="")
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_submitted: Mapped[datetime] = mapped_column(DateTime)
    submissions: Mapped[int] = mapped_column(Integer, default=1)


class Prediction(Base):
    __tablename__ = "predictions"

    sha256_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    celery_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    prediction_results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    explanation_results: Mapped[str | None] = mapped_column(Text, nullable=True)
    predicted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


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
