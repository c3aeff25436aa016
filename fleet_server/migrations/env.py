"""Alembic environment: runs on the connection ``fleet_server.schema`` hands over.

There is no alembic.ini and no URL here: ``fleet-server db upgrade`` (and ``serve`` on an
empty database) open the database and pass their connection in ``config.attributes``."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `fleet-server db upgrade`, not the alembic command")
context.configure(connection=connection, target_metadata=None,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
