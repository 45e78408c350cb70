"""The signal model: a LightGBM classifier of the triple-barrier label, trained on the training
dataset's Parquet files over a window of days, scored by purged CV and a walk-forward test, and
registered in MLflow (`resources.ModelRegistryResource`).

Every new version gets the alias `candidate`; the blocking check promotes it to `champion` only when
it beats the class prior out of sample, so `load_model("signal_model", alias="champion")` never
returns a model that learnt nothing. The work is `winiswin_pipelines.ml`'s.
"""

import datetime as dt
import subprocess
from importlib import metadata as package_metadata
from pathlib import Path

import dagster as dg
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.catalog import OWNER
from winiswin_pipelines.features.microstructure import FEATURE_COLUMNS
from winiswin_pipelines.ml import report
from winiswin_pipelines.ml.dataset import dataset_days, read_dataset, window_days
from winiswin_pipelines.ml.training import (
    ModelParams,
    TrainingConfig,
    TrainingResult,
    train_signal_model,
    training_data,
)
from winiswin_pipelines.resources import ModelRegistryResource

MODEL_NAME = "signal_model"
CANDIDATE, CHAMPION = "candidate", "champion"
# Price levels are left out: they are not stationary, and they tell the symbols apart, not the moves.
PRICE_LEVELS = ("mid", "microprice")
MODEL_FEATURES = tuple(column for column in FEATURE_COLUMNS if column not in PRICE_LEVELS)
_DEFAULTS = ModelParams()
_TRAINING = TrainingConfig()


class SignalModelConfig(dg.Config):
    days: int = Field(default=30, description="calendar days of the window, ending at end_day; 0: every day")
    end_day: str = Field(default="", description="last day of the window (YYYY-MM-DD); empty: the newest day")
    dataset_dir: str = Field(default="", description="dataset root; empty: <state dir>/datasets (training_dataset's)")
    n_splits: int = Field(default=_TRAINING.n_splits, description="purged k-fold splits of the development rows")
    pct_embargo: float = Field(default=_TRAINING.pct_embargo, description="share of rows embargoed after a test block")
    test_fraction: float = Field(default=_TRAINING.test_fraction, description="last share of rows tested out of sample")
    num_boost_round: int = _DEFAULTS.num_boost_round
    learning_rate: float = _DEFAULTS.learning_rate
    num_leaves: int = _DEFAULTS.num_leaves
    min_data_in_leaf: int = _DEFAULTS.min_data_in_leaf
    feature_fraction: float = _DEFAULTS.feature_fraction
    bagging_fraction: float = _DEFAULTS.bagging_fraction
    lambda_l2: float = _DEFAULTS.lambda_l2
    max_bin: int = _DEFAULTS.max_bin
    num_threads: int = _DEFAULTS.num_threads
    seed: int = _DEFAULTS.seed

    def training(self) -> TrainingConfig:
        params = ModelParams(**{name: getattr(self, name) for name in ModelParams.__dataclass_fields__})
        return TrainingConfig(n_splits=self.n_splits, pct_embargo=self.pct_embargo, test_fraction=self.test_fraction,
                              params=params)

    def root(self) -> Path:
        return Path(self.dataset_dir) if self.dataset_dir else settings.state_dir() / "datasets"


@dg.asset(
    deps=[dg.AssetKey("training_dataset")],
    owners=[OWNER],
    tags={"tier": "model"},
    kinds={"lightgbm", "mlflow"},
    group_name="models",
    pool="model_training",
    description="LightGBM classifier of the triple-barrier label on the microstructure features of a window of "
    "days: purged k-fold CV with embargo, uniqueness weights, a walk-forward out-of-sample test; registered in "
    f"MLflow as {MODEL_NAME!r} (alias {CANDIDATE!r}; {CHAMPION!r} once it beats the class prior).",
)
def signal_model(
    context: dg.AssetExecutionContext, config: SignalModelConfig, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    root = config.root()
    days = training_days(config)
    if not days:
        raise dg.Failure(f"no training_dataset days under {root} in the window ({config.days} days to "
                         f"{config.end_day or 'the newest'}): materialize training_dataset first")
    data = training_data(read_dataset(root, days), MODEL_FEATURES)
    context.log.info(f"training on {len(data):,} labelled rows of {len(days)} days ({days[0]}..{days[-1]})")
    training = config.training()
    result = train_signal_model(data, training)
    version = model_registry.register(
        MODEL_NAME, result.model, params=_params(training, days), metrics=result.metrics(),
        documents={"report.md": report.full_report(result)}, tags=_tags(result, context.run.run_id),
    )
    model_registry.set_alias(MODEL_NAME, CANDIDATE, version.version)
    context.log.info(f"registered {MODEL_NAME} version {version.version}: out-of-sample log loss "
                     f"{result.oos.log_loss:.4f} vs class prior {result.baseline_log_loss:.4f}")
    return dg.MaterializeResult(metadata={
        **_metrics_metadata(result),
        "days": f"{days[0]}..{days[-1]} ({len(days)} days with data)",
        "features": ", ".join(MODEL_FEATURES),
        "params": dg.MetadataValue.json(training.params.lightgbm()),
        "code_version": _code_version(),
        "model_name": MODEL_NAME, "model_version": version.version,
        "model_uri": f"models:/{MODEL_NAME}/{version.version}",
        "artifacts": version.source,
    })


def _params(training: TrainingConfig, days: list[dt.date]) -> dict[str, object]:
    return {**training.params.lightgbm(), "n_splits": training.n_splits, "pct_embargo": training.pct_embargo,
            "test_fraction": training.test_fraction, "days": f"{days[0]}..{days[-1]}"}


def _tags(result: TrainingResult, run_id: str) -> dict[str, str]:
    """What a user of the version must know: the code, and the time its training data covers (a backtest
    must replay days after `training_end`, the latest label end)."""
    return {"code_version": _code_version(), "training_start": result.window.start.isoformat(),
            "training_end": result.window.last_label_end.isoformat(), "training_rows": str(result.window.rows),
            "dagster_run_id": run_id}


def _metrics_metadata(result: TrainingResult) -> dict[str, object]:
    """The scores as numbers (the check reads them) and as Markdown tables."""
    return {
        "dagster/row_count": result.window.rows,
        "training_window": str(result.window),
        "training_end": result.window.last_label_end.isoformat(),
        "oos_log_loss": result.oos.log_loss, "baseline_log_loss": result.baseline_log_loss,
        "cv_log_loss": result.cv.log_loss, "oos_accuracy": result.oos.accuracy, "cv_accuracy": result.cv.accuracy,
        "beats_baseline": result.beats_baseline,
        "scores": dg.MetadataValue.md(report.scores_table(result)),
        "per_class_out_of_sample": dg.MetadataValue.md(report.per_class_table(result.oos)),
        "confusion_matrix": dg.MetadataValue.md(report.confusion_table(result.oos)),
        "per_class_cv": dg.MetadataValue.md(report.per_class_table(result.cv)),
        "feature_importance": dg.MetadataValue.md(report.importance_table(result.importance)),
        "label_balance": dg.MetadataValue.md(report.label_balance_table(result.label_balance)),
        "windows": dg.MetadataValue.md(report.windows_table(result)),
    }


@dg.asset_check(asset=signal_model, blocking=True)
def signal_model_beats_class_prior(
    context: dg.AssetCheckExecutionContext, model_registry: ModelRegistryResource
) -> dg.AssetCheckResult:
    """The new version predicts the out-of-sample labels better (lower log loss) than the class prior of
    its development rows; it then becomes the `champion`, otherwise the champion stays where it was."""
    event = context.instance.get_latest_materialization_event(signal_model.key)
    values = {key: value.value for key, value in event.asset_materialization.metadata.items()}
    model_loss, prior_loss, version = values["oos_log_loss"], values["baseline_log_loss"], values["model_version"]
    passed = model_loss < prior_loss
    model_registry.set_version_tag(MODEL_NAME, version, "beats_class_prior", str(passed).lower())
    if passed:
        model_registry.set_alias(MODEL_NAME, CHAMPION, version)
    champion = _alias_version(model_registry, CHAMPION)
    return dg.AssetCheckResult(passed=passed, metadata={
        "oos_log_loss": model_loss, "baseline_log_loss": prior_loss, "improvement": prior_loss - model_loss,
        "model_version": version, "champion_version": champion if champion is not None else "none",
    })


def _alias_version(model_registry: ModelRegistryResource, alias: str) -> int | None:
    try:
        return model_registry.get_version(MODEL_NAME, alias=alias).version
    except Exception:  # no version holds the alias yet
        return None


def _code_version() -> str:
    """The git commit of the project's checkout, else the installed package's version."""
    try:
        commit = subprocess.run(["git", "-C", str(settings.PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        if commit:
            return f"git {commit}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"winiswin_pipelines {package_metadata.version('winiswin_pipelines')}"


def training_days(config: SignalModelConfig) -> list[dt.date]:
    """The dataset days a run with `config` trains on (for a caller that wants to say which)."""
    end_day = dt.date.fromisoformat(config.end_day) if config.end_day else None
    return window_days(dataset_days(config.root()), config.days, end_day)
