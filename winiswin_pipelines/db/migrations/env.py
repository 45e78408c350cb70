"""Alembic environment: runs on the connection DatabaseManager passes in (or on the URL given)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from winiswin_pipelines.db.models import Base
from winiswin_pipelines.db.partitions import include_name

config = context.config


def run_migrations(connection) -> None:
    context.configure(
        connection=connection, target_metadata=Base.metadata, include_name=include_name,
        compare_type=True, compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    with create_engine(config.attributes["url"]).begin() as conn:
        run_migrations(conn)
