"""SQLAlchemy tables: samples seen, and one prediction per (sample, model)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = "1"


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


class Revocation(Base):
    """One row per workflow run a revoke was accepted for: the insert is the claim that
    only one revoke request (across every API process) wins."""

    __tablename__ = "revocations"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(DateTime)


class StoreInfo(Base):
    """One row naming the schema version, so Get Versions can report the store's."""

    __tablename__ = "store_info"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
