"""DatabaseManager: one sync and one async engine per process, schema brought to head at start."""

from __future__ import annotations

import datetime as dt
from functools import cached_property
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from winiswin_pipelines import settings
from winiswin_pipelines.db.embedded import EmbeddedPostgres
from winiswin_pipelines.db.models import DAILY_PARTITIONED_TABLES, Base
from winiswin_pipelines.db.partitions import ensure_daily_partitions
from winiswin_pipelines.db.url import DATABASE_URL_VAR, DatabaseConfigError, mask_url, normalize_database_url
from winiswin_pipelines.errors import describe

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DAGSTER_DATABASE = "dagster"
_MIGRATION_LOCK_ID = 0x77696E69  # pg_advisory_lock key: one schema upgrade at a time per server
_PARTITION_DAYS_AHEAD = 7
_CONNECT_ARGS = {"connect_timeout": 10, "options": "-c timezone=UTC"}


def resolve_database_url(url: str | None = None) -> URL:
    """The application URL: `url`, else DATABASE_URL, else the embedded server (started if needed)."""
    raw = url if url is not None else settings.database_url()
    if raw is None:
        return EmbeddedPostgres(settings.state_dir()).ensure_running().url()
    return normalize_database_url(raw)


def alembic_config(url: URL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


class DatabaseManager:
    """Owns the process's engines for one database; `migrate=True` brings the schema to head."""

    def __init__(self, url: str | None = None, *, migrate: bool = True, pool_size: int = 5):
        self.url = resolve_database_url(url)
        self.engine: Engine = create_engine(
            self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, connect_args=_CONNECT_ARGS
        )
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self._check_reachable()
        if migrate:
            self.upgrade()

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @cached_property
    def async_engine(self) -> AsyncEngine:
        # psycopg 3 serves the async engine too: same URL, same driver.
        return create_async_engine(self.url, pool_pre_ping=True, connect_args=_CONNECT_ARGS)

    @cached_property
    def async_session(self) -> async_sessionmaker:
        return async_sessionmaker(self.async_engine, expire_on_commit=False)

    def _check_reachable(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            reason = describe(exc, secret=self.url.password)
            raise DatabaseConfigError(
                f"cannot connect to the database in {DATABASE_URL_VAR} ({self.masked_url}): {reason}"
            ) from None

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to `revision` (one process at a time), then create upcoming partitions."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_ID})
            try:
                config = alembic_config(self.url)
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_ID})
        if revision == "head":
            self.create_upcoming_partitions()

    def downgrade(self, revision: str = "base") -> None:
        with self.engine.begin() as conn:
            config = alembic_config(self.url)
            config.attributes["connection"] = conn
            command.downgrade(config, revision)

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

    def row_counts(self) -> dict[str, int]:
        """Rows in every table of the schema, by table name."""
        with self.engine.connect() as conn:
            return {name: conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
                    for name in sorted(Base.metadata.tables)}

    def create_upcoming_partitions(self, days_ahead: int = _PARTITION_DAYS_AHEAD) -> None:
        """Daily partitions from yesterday to `days_ahead` days out, so live writes never miss one."""
        today = dt.datetime.now(dt.UTC).date()
        days = [today + dt.timedelta(days=offset) for offset in range(-1, days_ahead + 1)]
        with self.engine.begin() as conn:
            for table in DAILY_PARTITIONED_TABLES:
                ensure_daily_partitions(conn, table, days)

    def dispose(self) -> None:
        self.engine.dispose()
        if "async_engine" in self.__dict__:
            self.async_engine.sync_engine.dispose()


def dagster_storage_url(app_url: URL) -> str:
    """URL of Dagster's own database on the application's server, for dagster-postgres (psycopg2)."""
    return app_url.set(drivername="postgresql+psycopg2", database=DAGSTER_DATABASE).render_as_string(hide_password=False)
