"""The model registry as a Dagster resource: MLflow's tracking store in the `mlflow` database of the
platform's PostgreSQL server (DATABASE_URL's, or the embedded one), artifacts in the cold store (the
S3 / R2 bucket under <prefix>/mlflow when BUCKET_NAME is set, else <cold storage folder>/mlflow).

The database is created when first used. The resource holds the configuration the UI shows; the
work is `winiswin_pipelines.ml.registry`'s.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.db.embedded import ensure_database_exists
from winiswin_pipelines.db.manager import resolve_database_url
from winiswin_pipelines.ml import registry
from winiswin_pipelines.ml.model import SignalModel

MLFLOW_DATABASE = "mlflow"
ARTIFACT_FOLDER = "mlflow"


class ModelRegistryResource(dg.ConfigurableResource):
    """MLflow on the platform's PostgreSQL (database `database`) and cold store."""

    database_url: str = Field(default="", description="DATABASE_URL (its server); empty: the embedded server")
    database: str = Field(default=MLFLOW_DATABASE, description="MLflow's database on that server")
    artifact_root: str = Field(default="", description="file:// or s3:// URI; empty: <cold store>/mlflow")
    bucket_name: str = Field(default="", description="BUCKET_NAME; empty: the local cold-storage folder")
    prefix: str = Field(default="winiswin", description="S3_PREFIX: key prefix inside the bucket")
    local_dir: str = Field(default="", description="local cold-storage folder when no bucket is set")
    endpoint_url: str = Field(default="", description="S3_ENDPOINT_URL (R2); empty: AWS")
    aws_access_key_id: str = Field(default="", description="AWS_ACCESS_KEY or AWS_ACCESS_KEY_ID")
    aws_secret_access_key: str = Field(default="", description="AWS_SECRET_ACCESS_KEY")
    region_name: str = Field(default="", description="AWS_REGION; empty: auto for a custom endpoint, else us-east-1")

    def location(self) -> registry.RegistryLocation:
        """Where the registry is; creates its database on the server if it is missing."""
        server = resolve_database_url(self.database_url or None)
        ensure_database_exists(server, self.database)
        tracking_uri = server.set(drivername="postgresql+psycopg", database=self.database)
        return registry.RegistryLocation(tracking_uri.render_as_string(hide_password=False), self._artifact_root(),
                                         self._s3())

    def _artifact_root(self) -> str:
        if self.artifact_root:
            return self.artifact_root
        if self.bucket_name:
            return "/".join(part.strip("/") for part in (f"s3://{self.bucket_name}", self.prefix, ARTIFACT_FOLDER)
                            if part.strip("/"))
        folder = Path(self.local_dir).resolve() if self.local_dir else settings.cold_storage_dir()
        return (folder / ARTIFACT_FOLDER).as_uri()

    def _s3(self) -> registry.S3Access | None:
        if not self.bucket_name:
            return None
        endpoint = self.endpoint_url or settings.s3_endpoint_url()
        return registry.S3Access(
            endpoint_url=endpoint, access_key_id=self.aws_access_key_id or settings.aws_access_key(),
            secret_access_key=self.aws_secret_access_key or settings.aws_secret_access_key(),
            region=self.region_name or settings.aws_region(endpoint),
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


def _env_or_default(name: str, default: str = "") -> dg.EnvVar | str:
    return dg.EnvVar(name) if settings.env(name) else default


def build_model_registry() -> ModelRegistryResource:
    """The registry resource from the environment (the variables the other resources read)."""
    access_key_var = "AWS_ACCESS_KEY" if settings.env("AWS_ACCESS_KEY") else "AWS_ACCESS_KEY_ID"
    return ModelRegistryResource(
        database_url=_env_or_default("DATABASE_URL"),
        bucket_name=_env_or_default("BUCKET_NAME"),
        prefix=_env_or_default("S3_PREFIX", "winiswin"),
        local_dir=_env_or_default("COLD_STORAGE_DIR"),
        endpoint_url=_env_or_default("S3_ENDPOINT_URL"),
        aws_access_key_id=_env_or_default(access_key_var),
        aws_secret_access_key=_env_or_default("AWS_SECRET_ACCESS_KEY"),
        region_name=_env_or_default("AWS_REGION"),
    )
