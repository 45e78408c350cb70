"""Dagster's instance storage on the platform's own PostgreSQL server, in its own database.

Named in config/dagster.yaml as custom storage, so `dagster dev`, `dagster asset materialize` and
the daemon all find the server the same way the application does: DATABASE_URL, or the embedded
server (started if it is not running). dagster-postgres speaks psycopg2, so the URL spells that
driver explicitly (SQLAlchemy 2.1 would otherwise pick psycopg 3, which breaks its NOTIFY).
"""

from __future__ import annotations

from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage

from winiswin_pipelines.db.embedded import ensure_database_exists
from winiswin_pipelines.db.manager import DAGSTER_DATABASE, dagster_storage_url, resolve_database_url


class WiniswinDagsterStorage(DagsterPostgresStorage):
    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: dict) -> WiniswinDagsterStorage:
        app_url = resolve_database_url()
        ensure_database_exists(app_url, DAGSTER_DATABASE)
        return cls(postgres_url=dagster_storage_url(app_url), inst_data=inst_data)
