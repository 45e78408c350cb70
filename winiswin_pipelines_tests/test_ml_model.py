"""The signal model: purged CV against plain k-fold on planted leakage, training on the dataset's
Parquet layout, the `signal_model` asset and its blocking check, and the MLflow registry on a real
PostgreSQL (and a real S3 endpoint on loopback).
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold
from sqlalchemy.engine import make_url

from winiswin_pipelines.defs import models
from winiswin_pipelines.features.dataset import DATASET_COLUMNS, write_day_file
from winiswin_pipelines.features.microstructure import FEATURE_COLUMNS
from winiswin_pipelines.ml import PurgedKFold, registry, report, walk_forward_split
from winiswin_pipelines.ml.dataset import dataset_days, read_dataset, window_days
from winiswin_pipelines.ml.metrics import prior_log_loss
from winiswin_pipelines.ml.model import CLASSES
from winiswin_pipelines.ml.training import (
    ModelParams,
    TrainingConfig,
    out_of_fold_log_loss,
    train_signal_model,
    training_data,
)
from winiswin_pipelines.resources import ColdStorageResource, ModelRegistryResource, PostgresResource

# Small, regularised and single-threaded: the tests share two cores.
SMALL = ModelParams(num_boost_round=50, learning_rate=0.05, min_data_in_leaf=100, num_threads=1)
SMALL_CONFIG = {"num_boost_round": 50, "learning_rate": 0.05, "min_data_in_leaf": 50, "num_threads": 1}
DAYS = [dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)]


# --- planted leakage ---------------------------------------------------------------------------------


def planted_leak(seed: int, n: int = 4000, horizon: int = 60, phi: float = 0.995) -> pd.DataFrame:
    """Features that know nothing about the labels but drift slowly (AR(1), phi near 1), and labels that
    overlap (each is the sign of the next `horizon` bars of a random walk): neighbours in time share both."""
    rng = np.random.default_rng(seed)
    bars = pd.date_range("2024-01-01", periods=n + horizon, freq="1min", tz="UTC")
    price = np.cumsum(rng.normal(size=n + horizon))
    shocks = rng.normal(size=(n, 4))
    features = np.zeros_like(shocks)
    for t in range(1, n):
        features[t] = phi * features[t - 1] + shocks[t]
    frame = pd.DataFrame(features, columns=["x0", "x1", "x2", "x3"])
    frame["ts"], frame["label_t1"] = bars[:n], bars[horizon:]
    frame["label"] = np.sign(price[horizon:] - price[:n]).astype(int)
    return frame


def test_plain_kfold_inflates_the_score_while_purged_kfold_tracks_walk_forward():
    scores = {"kfold": [], "purged": [], "walk_forward": [], "prior": []}
    for seed in range(3):
        data = training_data(planted_leak(seed), ["x0", "x1", "x2", "x3"])
        development, test = walk_forward_split(data.t1, 0.2, 0.01)
        # The legacy bot's way: scikit-learn's KFold, shuffled, blind to the labels' spans.
        kfold = KFold(5, shuffle=True, random_state=0).split(data.features)
        scores["kfold"].append(out_of_fold_log_loss(data, kfold, SMALL))
        scores["purged"].append(out_of_fold_log_loss(data, PurgedKFold(5, data.t1, 0.01).split(data.features), SMALL))
        scores["walk_forward"].append(out_of_fold_log_loss(data, [(development, test)], SMALL))
        scores["prior"].append(prior_log_loss(data.labels.iloc[development], data.labels.iloc[test]))
    mean = {name: float(np.mean(values)) for name, values in scores.items()}
    # Plain k-fold finds skill that is not there: far below the class prior and the honest scores.
    assert mean["kfold"] < mean["prior"] - 0.1, mean
    assert mean["kfold"] < mean["purged"] - 0.15, mean
    # Purged k-fold says what the walk-forward test says: no skill (no better than the prior).
    assert abs(mean["purged"] - mean["walk_forward"]) < 0.1, mean
    assert mean["purged"] > mean["prior"] - 0.02, mean


# --- the dataset layout and training -----------------------------------------------------------------


def synthetic_day(day: dt.date, seed: int, *, signal: bool = True, rows: int = 400) -> pd.DataFrame:
    """A day of dataset rows for two symbols every 10 s; with `signal`, obi tells the label (noisily)."""
    rng = np.random.default_rng(seed)
    frames = []
    for symbol, price in (("BTCUSDT", 60_000.0), ("ETHUSDT", 3_000.0)):
        ts = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=rows, freq="10s")
        frame = pd.DataFrame({"symbol": symbol, "ts": ts})
        for column in FEATURE_COLUMNS:
            frame[column] = rng.normal(size=rows)
        frame["mid"], frame["microprice"] = price, price * 1.0001
        latent = (frame["obi"] if signal else rng.normal(size=rows)) + rng.normal(scale=0.7, size=rows)
        frame["label"] = np.select([latent > 0.5, latent < -0.5], [1, -1], 0)
        frame["label_ret"] = latent / 1000
        frame["label_t1"] = ts + pd.to_timedelta(rng.integers(10, 120, rows), unit="s")
        frame["label_barrier"] = np.select([frame["label"] == 1, frame["label"] == -1], ["upper", "lower"], "vertical")
        frames.append(frame)
    # Any other dataset column (e.g. a cost the labels record) is written empty: training reads none of them.
    return pd.concat(frames, ignore_index=True).reindex(columns=list(DATASET_COLUMNS))


def write_dataset(root: Path, *, signal: bool = True, seed: int = 0) -> Path:
    for offset, day in enumerate(DAYS):
        write_day_file(synthetic_day(day, seed + offset, signal=signal), root, dt.datetime.combine(day, dt.time()))
    return root


def test_training_on_the_dataset_layout_scores_the_model_against_the_prior(tmp_path):
    root = write_dataset(tmp_path)
    assert dataset_days(root) == DAYS
    assert window_days(DAYS, 2) == DAYS[1:] and window_days(DAYS, 0, DAYS[1]) == DAYS[:2]
    frame = read_dataset(root, DAYS)
    frame.loc[::7, "label"] = np.nan  # pending labels: dropped
    data = training_data(frame, models.MODEL_FEATURES)
    assert len(data) == len(frame) - len(frame.loc[::7]) and data.t1.index.is_monotonic_increasing
    assert data.weights.mean() == pytest.approx(1.0) and (data.weights > 0).all()

    result = train_signal_model(data, TrainingConfig(n_splits=4, params=SMALL))
    assert result.beats_baseline and result.oos.log_loss < result.baseline_log_loss
    assert result.cv.log_loss < result.baseline_log_loss and len(result.cv_fold_log_loss) == 4
    assert result.oos.confusion.sum() == result.out_of_sample.rows
    assert result.oos.auc[1] > 0.6 and set(result.oos.precision) == set(CLASSES)
    assert result.importance.iloc[0]["feature"] == "obi"  # the planted signal
    assert result.window.rows == len(data) and sum(result.label_balance.values()) == len(data)
    assert result.development.end < result.out_of_sample.start
    document = report.full_report(result)
    for title in ("Scores", "Confusion matrix", "Feature importance", "Label balance", "Windows"):
        assert f"## {title}" in document
    proba = result.model.predict_proba(frame.iloc[:3])
    assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1)
    assert np.allclose(result.model.predict_proba(frame[list(models.MODEL_FEATURES)].to_numpy()[0], num_threads=1),
                       proba[0])


def test_training_refuses_a_dataset_without_labels(tmp_path):
    frame = read_dataset(write_dataset(tmp_path), DAYS[:1]).assign(label=np.nan)
    with pytest.raises(ValueError, match="no labelled rows"):
        training_data(frame, models.MODEL_FEATURES)


# --- the registry -----------------------------------------------------------------------------------


@pytest.fixture
def registry_resource(database_url: str, tmp_path: Path) -> ModelRegistryResource:
    """The registry in a database of its own on the test server, artifacts in a local cold folder."""
    return ModelRegistryResource(postgres=PostgresResource(database_url=database_url),
                                 cold_storage=ColdStorageResource(local_dir=str(tmp_path / "cold")),
                                 database=f"mlflow_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def trained(tmp_path: Path):
    data = training_data(read_dataset(write_dataset(tmp_path / "data"), DAYS), models.MODEL_FEATURES)
    return data, train_signal_model(data, TrainingConfig(n_splits=3, params=SMALL))


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every Python socket connection made, refusing any that leaves the machine (telemetry would)."""
    seen: list[str] = []
    connect = socket.socket.connect

    def checked(sock, address):
        seen.append(str(address))
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"connection to {address} leaves the machine")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", checked)
    return seen


def test_register_then_load_by_version_and_by_alias_in_one_call(registry_resource, trained, loopback_only):
    data, result = trained
    first = registry_resource.register("signal_model", result.model, metrics=result.metrics(),
                                       documents={"report.md": report.full_report(result)}, tags={"purpose": "test"})
    second = registry_resource.register("signal_model", result.model, params={"n_splits": 3})
    assert (first.version, second.version) == (1, 2)
    assert first.source.startswith((Path(registry_resource.cold_storage.local_dir) / "mlflow").as_uri())
    registry_resource.set_alias("signal_model", "champion", 1)

    location = registry_resource.location()
    expected = result.model.predict_proba(data.features.iloc[:5])
    by_alias = registry.load_model(location.tracking_uri, "signal_model", alias="champion")
    by_version = registry.load_model(location.tracking_uri, "signal_model", version=2)
    newest = registry_resource.load_model("signal_model")
    for model in (by_alias, by_version, newest):
        assert model.features == models.MODEL_FEATURES
        assert np.allclose(model.predict_proba(data.features.iloc[:5]), expected)
    assert registry_resource.get_version("signal_model", alias="champion").version == 1
    assert registry_resource.get_version("signal_model").version == 2

    from mlflow.telemetry.client import get_telemetry_client

    assert get_telemetry_client() is None
    assert all(address.startswith(("('127.0.0.1'", "('::1'")) for address in loopback_only), loopback_only
    with pytest.raises(registry.RegistryError, match="signal_model"):
        registry.load_model(location.tracking_uri, "signal_model", alias="nobody")


def test_registry_errors_do_not_show_the_database_password():
    uri = "postgresql+psycopg://winiswin:hunter2secret@127.0.0.1:1/mlflow"
    with pytest.raises(registry.RegistryError) as raised:
        registry.load_model(uri, "signal_model", version=1)
    assert "hunter2secret" not in str(raised.value) and "***" in str(raised.value)
    assert "hunter2secret" not in repr(registry.RegistryLocation(uri, "file:///tmp"))


def test_artifacts_go_to_the_bucket_when_one_is_named(database_url, s3_endpoint, s3_bucket, trained):
    import boto3

    cold = ColdStorageResource(bucket_name=s3_bucket, prefix="winiswin", endpoint_url=s3_endpoint,
                               aws_access_key_id="testing", aws_secret_access_key="testing")
    resource = ModelRegistryResource(postgres=PostgresResource(database_url=database_url), cold_storage=cold,
                                     database=f"mlflow_{uuid.uuid4().hex[:10]}")
    data, result = trained
    version = resource.register("signal_model", result.model)
    assert version.source.startswith(f"s3://{s3_bucket}/winiswin/mlflow/signal_model/")
    keys = [item["Key"] for item in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
        Bucket=s3_bucket, Prefix="winiswin/mlflow/")["Contents"]]
    assert any(key.endswith("model/model.lgb") for key in keys)
    loaded = resource.load_model("signal_model", version=version.version)
    assert np.allclose(loaded.predict_proba(data.features.iloc[:3]), result.model.predict_proba(data.features.iloc[:3]))


# --- the asset and its check ------------------------------------------------------------------------


def materialize_model(root: Path, registry_resource, instance, **config) -> dg.ExecuteInProcessResult:
    run_config = dg.RunConfig(ops={"signal_model": models.SignalModelConfig(
        dataset_dir=str(root), days=0, n_splits=3, **{**SMALL_CONFIG, **config})})
    return dg.materialize([models.signal_model, models.signal_model_beats_class_prior],
                          resources={"model_registry": registry_resource}, instance=instance,
                          run_config=run_config, raise_on_error=False)


def test_signal_model_materializes_with_its_metrics_and_becomes_champion(
    registry_resource, dagster_instance, tmp_path, database_url
):
    result = materialize_model(write_dataset(tmp_path / "data"), registry_resource, dagster_instance)
    assert result.success
    metadata = {key: value.value for key, value in
                result.asset_materializations_for_node("signal_model")[0].metadata.items()}
    assert metadata["dagster/row_count"] == 2 * 400 * len(DAYS)
    assert metadata["oos_log_loss"] < metadata["baseline_log_loss"] and metadata["beats_baseline"]
    assert metadata["model_version"] == 1 and metadata["model_uri"] == "models:/signal_model/1"
    assert metadata["days"].startswith("2024-03-01..2024-03-03")
    assert metadata["code_version"].startswith(("git ", "winiswin_pipelines "))
    for table in ("scores", "per_class_out_of_sample", "confusion_matrix", "per_class_cv", "feature_importance",
                  "label_balance", "windows"):
        assert metadata[table].startswith("|"), table
    assert "mid" not in metadata["features"].split(", ")
    password = make_url(database_url).password
    if password:
        assert not any(password in str(value) for value in metadata.values())

    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["champion_version"].value == 1
    version = registry_resource.get_version("signal_model", alias="champion")
    assert version.version == 1 and {"candidate", "champion"} <= set(version.aliases)
    assert version.tags["beats_class_prior"] == "true"


def test_check_fails_and_keeps_the_champion_when_the_model_is_no_better_than_the_prior(
    registry_resource, dagster_instance, tmp_path
):
    good = materialize_model(write_dataset(tmp_path / "good"), registry_resource, dagster_instance)
    assert good.get_asset_check_evaluations()[0].passed

    # The asset's default booster (not the regularised one of these tests) on features that know nothing.
    noise = materialize_model(write_dataset(tmp_path / "noise", signal=False, seed=10), registry_resource,
                              dagster_instance, num_boost_round=100, learning_rate=0.1, min_data_in_leaf=50)
    metadata = noise.asset_materializations_for_node("signal_model")[0].metadata
    assert metadata["oos_log_loss"].value >= metadata["baseline_log_loss"].value
    (check,) = noise.get_asset_check_evaluations()
    assert not check.passed and check.metadata["model_version"].value == 2
    assert registry_resource.get_version("signal_model", alias="champion").version == 1
    assert registry_resource.get_version("signal_model", alias="candidate").version == 2
    assert registry_resource.get_version("signal_model", version=2).tags["beats_class_prior"] == "false"


def test_the_asset_says_what_to_do_when_the_dataset_is_missing(registry_resource, dagster_instance, tmp_path):
    result = materialize_model(tmp_path / "nothing", registry_resource, dagster_instance)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "materialize training_dataset first" in failure.description
