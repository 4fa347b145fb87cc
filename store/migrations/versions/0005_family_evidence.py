"""schema 5: finding samples. `family_evidence` (one row per family present or weak in
a prediction's results), the predictions' `verdict` and `confidence` copied out of
them, `sample_functions` (each analysed sample's function vectors, for Similar Samples),
and the indexes List Samples uses. Existing results are backfilled here; function
vectors exist only for analyses made from now on (Queue Reanalysis with force=true
makes them for older samples).

A database made by create_all of these models before Alembic already has the new
predictions columns and indexes: each is added only when missing.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.db import evidence_of

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PAGE = 500  # predictions read per backfill query


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    columns = {c["name"] for c in inspector.get_columns("predictions")}
    if "verdict" not in columns:
        op.add_column("predictions", sa.Column("verdict", sa.String(64), nullable=True))
    if "confidence" not in columns:
        op.add_column("predictions", sa.Column("confidence", sa.Float, nullable=True))
    indexes = {i["name"] for t in ("predictions", "samples")
               for i in inspector.get_indexes(t)}
    for name, table, cols in (
        ("ix_predictions_model_status", "predictions", ["model", "status"]),
        ("ix_predictions_model_verdict", "predictions", ["model", "verdict"]),
        ("ix_predictions_model_version", "predictions", ["model", "model_version"]),
        ("ix_samples_first_seen", "samples", ["first_seen", "sha256"]),
    ):
        if name not in indexes:
            op.create_index(name, table, cols)
    op.create_table(
        "family_evidence",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("analysis_version", sa.String(128), primary_key=True),
        sa.Column("family", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("functions_matched", sa.Integer, nullable=False),
    )
    op.create_index("ix_family_evidence_family", "family_evidence",
                    ["family", "model", "state", "sha256"])
    op.create_table(
        "sample_functions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("analysis_version", sa.String(128), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("functions", sa.Integer, nullable=False),
        sa.Column("vectors", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sample_functions_sample", "sample_functions", ["sha256", "model"],
                    unique=True)
    op.create_index("ix_sample_functions_weights", "sample_functions",
                    ["model", "weights_sha256", "id"])
    _backfill(bind)
    info = sa.table("store_info", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(info.update().where(info.c.key == "schema_version").values(value="5"))


def _backfill(bind: sa.Connection) -> None:
    """family_evidence, verdict and confidence of every stored result, a page at a time."""
    predictions = sa.table(
        "predictions", sa.column("sha256_hash", sa.String), sa.column("model", sa.String),
        sa.column("model_version", sa.String), sa.column("prediction_results", sa.JSON),
        sa.column("verdict", sa.String), sa.column("confidence", sa.Float))
    evidence = sa.table(
        "family_evidence", *(sa.column(name) for name in (
            "sha256", "model", "analysis_version", "family", "state", "probability", "score",
            "functions_matched")))
    after = ("", "")
    while True:
        page = bind.execute(
            sa.select(predictions.c.sha256_hash, predictions.c.model,
                      predictions.c.model_version, predictions.c.prediction_results)
            .where(sa.tuple_(predictions.c.sha256_hash, predictions.c.model) > after)
            .order_by(predictions.c.sha256_hash, predictions.c.model).limit(PAGE)
        ).all()
        if not page:
            return
        for sha256, model, model_version, results in page:
            rows, verdict, confidence = evidence_of(sha256, model, model_version, results)
            if rows:
                bind.execute(evidence.insert(), rows)
            if verdict is not None or confidence is not None:
                bind.execute(predictions.update()
                             .where(predictions.c.sha256_hash == sha256)
                             .where(predictions.c.model == model)
                             .values(verdict=verdict, confidence=confidence))
        after = (page[-1][0], page[-1][1])


def downgrade() -> None:
    op.drop_table("sample_functions")
    op.drop_table("family_evidence")
    for name, table in (("ix_samples_first_seen", "samples"),
                        ("ix_predictions_model_version", "predictions"),
                        ("ix_predictions_model_verdict", "predictions"),
                        ("ix_predictions_model_status", "predictions")):
        op.drop_index(name, table_name=table)
    op.drop_column("predictions", "confidence")
    op.drop_column("predictions", "verdict")
    info = sa.table("store_info", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(info.update().where(info.c.key == "schema_version").values(value="4"))
