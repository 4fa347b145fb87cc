"""schema 2: the references users add, and the revocations claimed per workflow run.

Before Alembic, create_all added these tables at start (revocations without a schema
number of its own): each is created only when missing.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "references" not in existing:
        op.create_table(
            "references",
            sa.Column("sha256", sa.String(64), primary_key=True),
            sa.Column("family", sa.String(64), nullable=False),
            sa.Column("version", sa.String(64), nullable=False),
            sa.Column("tags", sa.JSON, nullable=False),
            sa.Column("filename", sa.String(255), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error_details", sa.Text, nullable=True),
            sa.Column("run_id", sa.String(64), nullable=True),
            sa.Column("functions", sa.Integer, nullable=True),
            sa.Column("vectors_sha256", sa.String(64), nullable=True),
            sa.Column("weights_sha256", sa.String(64), nullable=True),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("updated_at", sa.DateTime, nullable=False),
        )
    if "revocations" not in existing:
        op.create_table(
            "revocations",
            sa.Column("run_id", sa.String(64), primary_key=True),
            sa.Column("sha256_hash", sa.String(64), nullable=False),
            sa.Column("model", sa.String(64), nullable=False),
            sa.Column("requested_at", sa.DateTime, nullable=False),
        )
    info = sa.table("store_info", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(info.update().where(info.c.key == "schema_version").values(value="2"))


def downgrade() -> None:
    op.drop_table("revocations")
    op.drop_table("references")
    info = sa.table("store_info", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(info.update().where(info.c.key == "schema_version").values(value="1"))
