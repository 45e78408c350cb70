"""The model registry: MLflow, its tracking store in PostgreSQL, its artifacts in the cold store.

MLflow's client talks to the database itself (a `postgresql+psycopg://` tracking URI: no MLflow
server to run) and writes artifacts under `artifact_root` (`file://...` or `s3://bucket/prefix/...`).
A model is LightGBM's booster in its own text format (MLflow's `lightgbm` flavour; no pickle), so
loading a registered model is one call: `load_model(uri, "signal_model", alias="champion")` or
`version=3`.

MLflow's telemetry is switched off before MLflow is first imported (it reads the switch at import):
the registry reaches the database and the cold store, nothing else. Messages never carry the
password of the tracking URI.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from winiswin_pipelines.db.url import mask_url
from winiswin_pipelines.errors import describe
from winiswin_pipelines.ml.model import SignalModel

# Read by MLflow when it is imported, and again by `set_telemetry_client`.
_NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# MLflow's S3 artifact store reads its endpoint and keys from the environment only: they are set for
# the duration of a call, one call at a time.
_ENVIRONMENT_LOCK = threading.RLock()
# Tracking stores this process has reached once (MLflow retries an unreachable one for ~100 s).
_REACHED: set[str] = set()


class RegistryError(RuntimeError):
    """The registry could not be reached, or has no such model, version or alias."""


@dataclass(frozen=True)
class S3Access:
    """Where the S3 / R2 artifacts are and the keys to them; left out: boto3's own chain."""

    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    region: str | None = None

    def environment(self) -> dict[str, str]:
        values = {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key, "AWS_DEFAULT_REGION": self.region,
            # R2 rejects boto3's default CRC checksums (as factories.s3_client sets it).
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
        return {name: value for name, value in values.items() if value}


@dataclass(frozen=True)
class RegistryLocation:
    """The tracking store (a database URI, password included: never shown) and the artifact root."""

    tracking_uri: str = field(repr=False)
    artifact_root: str
    s3: S3Access | None = None


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    run_id: str
    source: str
    aliases: tuple[str, ...]
    tags: dict[str, str]


def register_model(
    location: RegistryLocation, name: str, model: SignalModel, *, params: Mapping[str, object] | None = None,
    metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None,
    documents: Mapping[str, str] | None = None, experiment: str | None = None,
) -> ModelVersion:
    """Log `model` as a run of `experiment` (default: `name`) with its params, metrics and documents
    (file name -> text, e.g. the Markdown report), and register it as the next version of `name`."""
    with _registry(location.tracking_uri, location.s3, doing=f"registering {name!r}") as mlflow:
        client = mlflow.MlflowClient(tracking_uri=location.tracking_uri, registry_uri=location.tracking_uri)
        experiment_id = _experiment_id(client, experiment or name, location.artifact_root)
        run = client.create_run(experiment_id, tags=dict(tags or {}), run_name=name)
        run_id = run.info.run_id
        for key, value in (params or {}).items():
            client.log_param(run_id, key, str(value))
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, float(value))
        with tempfile.TemporaryDirectory() as folder:
            _save_model(mlflow, model, Path(folder) / "model")
            client.log_artifacts(run_id, folder)
        for file_name, text in (documents or {}).items():
            client.log_text(run_id, text, file_name)
        client.set_terminated(run_id)
        _ensure_registered_model(mlflow, client, name)
        created = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                              tags=dict(tags or {}))
        return _version(client.get_model_version(name, created.version))


def set_alias(tracking_uri: str, name: str, alias: str, version: int) -> None:
    """Point `alias` (e.g. "champion") of model `name` at `version`."""
    with _registry(tracking_uri, doing=f"setting alias {alias!r} of {name!r} to version {version}") as mlflow:
        mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
            name, alias, str(version))


def set_version_tag(tracking_uri: str, name: str, version: int, key: str, value: str) -> None:
    with _registry(tracking_uri, doing=f"tagging {name!r} version {version}") as mlflow:
        mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_model_version_tag(
            name, str(version), key, value)


def get_version(tracking_uri: str, name: str, *, version: int | None = None, alias: str | None = None) -> ModelVersion:
    """The registered version of `name`: by number, by alias, or (neither given) the newest."""
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    wanted = f"alias {alias!r}" if alias is not None else f"version {version}" if version is not None else "newest"
    with _registry(tracking_uri, doing=f"looking up {name!r}, {wanted}") as mlflow:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if alias is not None:
            return _version(client.get_model_version_by_alias(name, alias))
        if version is not None:
            return _version(client.get_model_version(name, str(version)))
        versions = client.search_model_versions(f"name = '{_quoted(name)}'", order_by=["version_number DESC"],
                                                max_results=1)
        if not versions:
            raise RegistryError(f"no version of model {name!r} is registered")
        return _version(versions[0])


def load_model(
    tracking_uri: str, name: str, *, version: int | None = None, alias: str | None = None,
    s3: S3Access | None = None,
) -> SignalModel:
    """The model `name` at `version` or `alias` (neither: the newest version), ready to predict."""
    found = get_version(tracking_uri, name, version=version, alias=alias)
    with _registry(tracking_uri, s3, doing=f"loading {name!r} version {found.version} from {found.source}") as mlflow:
        booster = mlflow.lightgbm.load_model(found.source)
    return SignalModel(booster, tuple(booster.feature_name()))


def _save_model(mlflow: ModuleType, model: SignalModel, path: Path) -> None:
    import lightgbm

    mlflow.lightgbm.save_model(
        model.booster, str(path), pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
        metadata={"features": list(model.features), "classes": list(model.classes)},
    )


def _experiment_id(client, name: str, artifact_root: str) -> str:
    """The experiment `name`, created with its artifacts under `artifact_root`/`name` if it is new."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=f"{artifact_root.rstrip('/')}/{name}")
    except Exception:  # created by another process meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _ensure_registered_model(mlflow: ModuleType, client, name: str) -> None:
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _version(found) -> ModelVersion:
    return ModelVersion(name=found.name, version=int(found.version), run_id=found.run_id, source=found.source,
                        aliases=tuple(found.aliases), tags=dict(found.tags))


def _quoted(name: str) -> str:
    return name.replace("'", "''")


@contextmanager
def _registry(tracking_uri: str, s3: S3Access | None = None, *, doing: str = "") -> Iterator[ModuleType]:
    """MLflow, offline, with the S3 settings in the environment; its errors say what was being done,
    without the password."""
    with _ENVIRONMENT_LOCK, _environment(s3.environment() if s3 else {}):
        try:
            _check_reachable(tracking_uri)
            yield _offline_mlflow()
        except (ValueError, RegistryError):
            raise
        except Exception as exc:  # MLflow's, SQLAlchemy's, boto3's: all may quote the URI
            password = _password(tracking_uri)
            action = f" ({doing})" if doing else ""
            raise RegistryError(f"model registry at {mask_url(tracking_uri)}{action}: "
                                f"{describe(exc, secret=password)}") from None


def _check_reachable(tracking_uri: str) -> None:
    """One connection, failing within seconds, the first time a process uses a database tracking store."""
    if tracking_uri in _REACHED or not tracking_uri.startswith(("postgresql", "mysql", "mssql")):
        return
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(tracking_uri, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        engine.connect().close()
    finally:
        engine.dispose()
    _REACHED.add(tracking_uri)


def _offline_mlflow() -> ModuleType:
    os.environ.update(_NO_TELEMETRY)
    import mlflow
    import mlflow.lightgbm
    from mlflow.telemetry.client import set_telemetry_client

    set_telemetry_client()  # no client, in case MLflow was imported before the switch was set
    return mlflow


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _password(uri: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).password
    except Exception:
        return None
