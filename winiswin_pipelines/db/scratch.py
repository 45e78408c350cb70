"""A throwaway database for benchmarks and experiments, never the project's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from winiswin_pipelines.db.embedded import EmbeddedPostgres, drop_database, ensure_database_exists
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.url import normalize_database_url


@contextmanager
def scratch_database(folder: Path, database_url: str | None = None) -> Iterator[DatabaseManager]:
    """A fresh database at the newest schema, gone afterwards: a new database on `database_url`'s
    server when given (dropped at the end), else an embedded server under `folder` (destroyed)."""
    server = None
    if database_url:
        base = normalize_database_url(database_url)
    else:
        server = EmbeddedPostgres(Path(folder) / "pg")
        base = server.ensure_running().url()
    name = f"winiswin_scratch_{uuid.uuid4().hex[:8]}"
    ensure_database_exists(base, name)
    manager = DatabaseManager(base.set(database=name).render_as_string(hide_password=False))
    try:
        yield manager
    finally:
        manager.dispose()
        if server:
            server.destroy()
        else:
            drop_database(base, name)
