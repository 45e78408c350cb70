"""Dagster resources: PostgreSQL and cold storage, configured from the environment.

Thin wrappers over `factories`: the resource holds the configuration the UI shows (as `EnvVar`,
so it says where each value came from), the factory builds the object.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from winiswin_pipelines import factories, settings
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.manager import DatabaseManager


class PostgresResource(dg.ConfigurableResource):
    """The platform's PostgreSQL; an empty URL means the embedded server."""

    database_url: str = Field(default="", description="DATABASE_URL; empty: the embedded server")

    @property
    def manager(self) -> DatabaseManager:
        return factories.database_manager(self.database_url or None)


class ColdStorageResource(dg.ConfigurableResource):
    """Cold storage: an S3 / R2 bucket when one is named, else a local folder."""

    bucket_name: str = Field(default="", description="BUCKET_NAME; empty: the local folder")
    prefix: str = Field(default="winiswin", description="S3_PREFIX: key prefix inside the bucket")
    local_dir: str = Field(default="", description="local cold-storage folder when no bucket is set")
    endpoint_url: str = Field(default="", description="S3_ENDPOINT_URL (R2); empty: AWS")
    aws_access_key_id: str = Field(default="", description="AWS_ACCESS_KEY or AWS_ACCESS_KEY_ID")
    aws_secret_access_key: str = Field(default="", description="AWS_SECRET_ACCESS_KEY")
    region_name: str = Field(default="", description="AWS_REGION; empty: auto for a custom endpoint, else us-east-1")
    max_attempts: int = Field(default=factories.S3_MAX_ATTEMPTS, description="attempts per S3 request (retries)")

    def store(self) -> ColdStore:
        if not self.bucket_name:
            return factories.cold_store(local_dir=self.local_dir or None)
        access = (self.endpoint_url or None, self.aws_access_key_id or None, self.aws_secret_access_key or None,
                  self.region_name or None)
        return factories.cold_store(
            self.bucket_name, self.prefix, client=factories.s3_client(*access, max_attempts=self.max_attempts),
            filesystem=factories.s3_filesystem(*access, max_attempts=self.max_attempts),
        )


class LegacyFolderResource(dg.ConfigurableResource):
    """The legacy bot's folder whose trade stores are migrated; read only when a run or a sensor tick
    needs it, never when the definitions load."""

    legacy_dir: str = Field(default="", description="WINISWIN_LEGACY_DIR; empty: data/ in the working directory")

    @property
    def path(self) -> Path:
        return Path(self.legacy_dir).resolve() if self.legacy_dir else settings.legacy_dir()


def _env_or_default(name: str, default: str = "") -> dg.EnvVar | str:
    return dg.EnvVar(name) if settings.env(name) else default


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment; nothing is connected until a run uses them."""
    access_key_var = "AWS_ACCESS_KEY" if settings.env("AWS_ACCESS_KEY") else "AWS_ACCESS_KEY_ID"
    return {
        "postgres": PostgresResource(database_url=_env_or_default("DATABASE_URL")),
        "legacy_folder": LegacyFolderResource(legacy_dir=_env_or_default("WINISWIN_LEGACY_DIR")),
        "cold_storage": ColdStorageResource(
            bucket_name=_env_or_default("BUCKET_NAME"),
            prefix=_env_or_default("S3_PREFIX", "winiswin"),
            local_dir=_env_or_default("COLD_STORAGE_DIR"),
            endpoint_url=_env_or_default("S3_ENDPOINT_URL"),
            aws_access_key_id=_env_or_default(access_key_var),
            aws_secret_access_key=_env_or_default("AWS_SECRET_ACCESS_KEY"),
            region_name=_env_or_default("AWS_REGION"),
        ),
    }
