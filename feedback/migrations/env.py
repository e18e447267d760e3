"""Alembic environment: runs on the connection :func:`feedback.database.migrate` hands over."""

from __future__ import annotations

from alembic import context

from feedback.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - Greenroom always passes its own connection
    raise RuntimeError("run migrations through feedback.database.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
