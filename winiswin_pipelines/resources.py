"""Dagster resources: PostgreSQL, cold storage and the model registry, configured from the environment.

Thin wrappers over `factories`: the resource holds the configuration the UI shows (as `EnvVar`,
so it says where each value came from), the factory builds the object.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from winiswin_pipelines import factories, settings
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.embedded import ensure_database_exists
from winiswin_pipelines.db.manager import DatabaseManager, resolve_database_url
from winiswin_pipelines.ml import registry
from winiswin_pipelines.ml.model import SignalModel


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


class ModelRegistryResource(dg.ConfigurableResource):
    """The model registry: MLflow's tracking store in the `database` database of the platform's
    PostgreSQL server, artifacts in the cold store (<bucket>/<prefix>/mlflow, or <cold folder>/mlflow).
    The database is created when first used; the work is `winiswin_pipelines.ml.registry`'s."""

    postgres: PostgresResource
    cold_storage: ColdStorageResource
    database: str = Field(default="mlflow", description="MLflow's database on the platform's server")

    def location(self) -> registry.RegistryLocation:
        """Where the registry is; creates its database on the server if it is missing."""
        server = resolve_database_url(self.postgres.database_url or None)
        ensure_database_exists(server, self.database)
        tracking_uri = server.set(drivername="postgresql+psycopg", database=self.database)
        return registry.RegistryLocation(tracking_uri.render_as_string(hide_password=False), self._artifact_root(),
                                         self._s3())

    def _artifact_root(self) -> str:
        cold = self.cold_storage
        if cold.bucket_name:
            parts = (f"s3://{cold.bucket_name}", cold.prefix, _ARTIFACT_FOLDER)
            return "/".join(part.strip("/") for part in parts if part.strip("/"))
        folder = Path(cold.local_dir).resolve() if cold.local_dir else settings.cold_storage_dir()
        return (folder / _ARTIFACT_FOLDER).as_uri()

    def _s3(self) -> registry.S3Access | None:
        cold = self.cold_storage
        if not cold.bucket_name:
            return None
        endpoint = cold.endpoint_url or settings.s3_endpoint_url()
        return registry.S3Access(
            endpoint_url=endpoint, access_key_id=cold.aws_access_key_id or settings.aws_access_key(),
            secret_access_key=cold.aws_secret_access_key or settings.aws_secret_access_key(),
            region=cold.region_name or settings.aws_region(endpoint),
        )

    def register(self, name: str, model: SignalModel, **details) -> registry.ModelVersion:
        """`registry.register_model` at this location (params, metrics, tags, documents)."""
        return registry.register_model(self.location(), name, model, **details)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        registry.set_alias(self.location().tracking_uri, name, alias, version)

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        registry.set_version_tag(self.location().tracking_uri, name, version, key, value)

    def get_version(self, name: str, *, version: int | None = None, alias: str | None = None) -> registry.ModelVersion:
        return registry.get_version(self.location().tracking_uri, name, version=version, alias=alias)

    def load_model(self, name: str, *, version: int | None = None, alias: str | None = None) -> SignalModel:
        """The registered model by version or alias (neither: the newest), in one call."""
        location = self.location()
        return registry.load_model(location.tracking_uri, name, version=version, alias=alias, s3=location.s3)


_ARTIFACT_FOLDER = "mlflow"


def _env_or_default(name: str, default: str = "") -> dg.EnvVar | str:
    return dg.EnvVar(name) if settings.env(name) else default


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment; nothing is connected until a run uses them."""
    access_key_var = "AWS_ACCESS_KEY" if settings.env("AWS_ACCESS_KEY") else "AWS_ACCESS_KEY_ID"
    postgres = PostgresResource(database_url=_env_or_default("DATABASE_URL"))
    cold_storage = ColdStorageResource(
        bucket_name=_env_or_default("BUCKET_NAME"),
        prefix=_env_or_default("S3_PREFIX", "winiswin"),
        local_dir=_env_or_default("COLD_STORAGE_DIR"),
        endpoint_url=_env_or_default("S3_ENDPOINT_URL"),
        aws_access_key_id=_env_or_default(access_key_var),
        aws_secret_access_key=_env_or_default("AWS_SECRET_ACCESS_KEY"),
        region_name=_env_or_default("AWS_REGION"),
    )
    return {
        "postgres": postgres,
        "legacy_folder": LegacyFolderResource(legacy_dir=_env_or_default("WINISWIN_LEGACY_DIR")),
        "cold_storage": cold_storage,
        "model_registry": ModelRegistryResource(postgres=postgres, cold_storage=cold_storage),
    }
