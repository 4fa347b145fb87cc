"""Alembic environment: migrations run on the connection store.migrate hands over
(config.attributes["connection"]), for SQLite and PostgreSQL alike."""

from __future__ import annotations

from alembic import context

from store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m store.migrate` (it passes a connection)")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
