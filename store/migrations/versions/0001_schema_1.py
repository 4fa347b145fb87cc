"""schema 1: samples, predictions, store_info.

Databases made before Alembic (by create_all) already hold some or all of these tables:
each is created only when missing, so such a database is adopted as it is.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "samples" not in existing:
        op.create_table(
            "samples",
            sa.Column("sha256", sa.String(64), primary_key=True),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("filename", sa.String(255), nullable=False),
            sa.Column("first_seen", sa.DateTime, nullable=False),
            sa.Column("last_submitted", sa.DateTime, nullable=False),
            sa.Column("submissions", sa.Integer, nullable=False),
        )
    if "predictions" not in existing:
        op.create_table(
            "predictions",
            sa.Column("sha256_hash", sa.String(64), primary_key=True),
            sa.Column("model", sa.String(64), primary_key=True),
            sa.Column("model_version", sa.String(64), nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("celery_task_id", sa.String(64), nullable=True),
            sa.Column("error_details", sa.Text, nullable=True),
            sa.Column("prediction_results", sa.JSON, nullable=True),
            sa.Column("explanation_results", sa.Text, nullable=True),
            sa.Column("predicted_at", sa.DateTime, nullable=True),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("updated_at", sa.DateTime, nullable=False),
        )
    if "store_info" not in existing:
        op.create_table(
            "store_info",
            sa.Column("key", sa.String(32), primary_key=True),
            sa.Column("value", sa.String(128), nullable=False),
        )
    _set_schema_version("1")


def downgrade() -> None:
    op.drop_table("store_info")
    op.drop_table("predictions")
    op.drop_table("samples")


def _set_schema_version(value: str) -> None:
    info = sa.table("store_info", sa.column("key", sa.String), sa.column("value", sa.String))
    bind = op.get_bind()
    if bind.execute(sa.select(info.c.key).where(info.c.key == "schema_version")).first():
        op.execute(info.update().where(info.c.key == "schema_version").values(value=value))
    else:
        op.execute(info.insert().values(key="schema_version", value=value))
