"""Dagster resources: PostgreSQL and cold storage, configured from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.archive.store import ColdStore, LocalColdStore, S3ColdStore
from winiswin_pipelines.db.manager import DatabaseManager, get_database_manager


class PostgresResource(dg.ConfigurableResource):
    """The platform's PostgreSQL; an empty URL means the embedded server."""

    database_url: str = Field(default="", description="DATABASE_URL; empty: the embedded server")

    @property
    def manager(self) -> DatabaseManager:
        return get_database_manager(self.database_url or None)


class ColdStorageResource(dg.ConfigurableResource):
    """Cold storage: S3 / R2 through dagster-aws's S3Resource when a bucket is set, else a local folder."""

    bucket_name: str = Field(default="", description="BUCKET_NAME; empty: the local folder")
    prefix: str = Field(default="winiswin", description="S3_PREFIX: key prefix inside the bucket")
    local_dir: str = Field(default="", description="local cold-storage folder when no bucket is set")
    s3: S3Resource = Field(default_factory=S3Resource)

    def store(self) -> ColdStore:
        if not self.bucket_name:
            return LocalColdStore(Path(self.local_dir or settings.cold_storage_dir()))
        # R2 rejects boto3's default CRC checksums; botocore reads these when the client is built,
        # and S3ColdStore sends its own SHA-256 instead.
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
        return S3ColdStore(self.s3.get_client(), self.bucket_name, self.prefix)


def _env_or_default(name: str, default: str = "") -> dg.EnvVar | str:
    return dg.EnvVar(name) if settings.env(name) else default


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment (EnvVar, so the UI shows where each value came from)."""
    access_key_var = "AWS_ACCESS_KEY" if settings.env("AWS_ACCESS_KEY") else "AWS_ACCESS_KEY_ID"
    s3 = S3Resource(
        endpoint_url=_env_or_default("S3_ENDPOINT_URL") or None,
        aws_access_key_id=_env_or_default(access_key_var) or None,
        aws_secret_access_key=_env_or_default("AWS_SECRET_ACCESS_KEY") or None,
        region_name=settings.env("AWS_REGION", "auto" if settings.env("S3_ENDPOINT_URL") else "us-east-1"),
    )
    return {
        "postgres": PostgresResource(database_url=_env_or_default("DATABASE_URL")),
        "cold_storage": ColdStorageResource(
            bucket_name=_env_or_default("BUCKET_NAME"),
            prefix=_env_or_default("S3_PREFIX", "winiswin"),
            s3=s3,
        ),
    }
