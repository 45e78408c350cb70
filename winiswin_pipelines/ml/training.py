"""Training the signal model on the training dataset (AFML ch. 4 and 7), pure pandas/numpy/LightGBM.

From the dataset's rows (features, `ts`, `label`, `label_t1`, optionally `symbol`):
- X: the feature columns asked for; y: the triple-barrier label; rows without a label are dropped;
- each row's label interval [ts, label_t1] (`samples_info_sets`), rows ordered by their start;
- sample weights: each label's average uniqueness among the labels of its symbol, scaled to mean 1;
- a walk-forward split: the last `test_fraction` of the rows is the out-of-sample block, labels
  reaching into it purged from the development rows before it;
- purged k-fold with embargo on the development rows: the cross-validated scores;
- one model on the development rows, scored out of sample against the class-prior baseline;
- the model kept: refit on every row of the window (the most recent rows matter most to trade on).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from winiswin_pipelines.ml.cv import PurgedKFold, walk_forward_split
from winiswin_pipelines.ml.metrics import Scores, label_balance, prior_log_loss, score
from winiswin_pipelines.ml.model import CLASSES, SignalModel, encode_labels
from winiswin_pipelines.ml.uniqueness import average_uniqueness


@dataclass(frozen=True)
class TrainingData:
    """Labelled rows ordered by label start: features X, labels y, label ends t1 (indexed by the start
    t0, PurgedKFold's `samples_info_sets`) and uniqueness weights, all row for row."""

    features: pd.DataFrame
    labels: pd.Series
    t1: pd.Series
    weights: pd.Series

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, positions: np.ndarray) -> TrainingData:
        return TrainingData(self.features.iloc[positions], self.labels.iloc[positions], self.t1.iloc[positions],
                            self.weights.iloc[positions])


def training_data(
    frame: pd.DataFrame, feature_columns: Sequence[str], *, time_column: str = "ts", label_column: str = "label",
    end_column: str = "label_t1", symbol_column: str = "symbol",
) -> TrainingData:
    """The labelled rows of `frame` as training data; rows whose label (or its end) is missing are dropped."""
    missing = [c for c in (time_column, label_column, end_column, *feature_columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"the dataset lacks the columns {missing}")
    labelled = frame[frame[label_column].notna() & frame[end_column].notna()]
    if labelled.empty:
        raise ValueError(f"no labelled rows among the {len(frame):,} rows")
    labelled = labelled.sort_values([time_column, symbol_column] if symbol_column in frame else [time_column],
                                     kind="stable").reset_index(drop=True)
    t1 = pd.Series(labelled[end_column].array, index=pd.Index(labelled[time_column], name="t0"), name="t1")
    symbols = labelled[symbol_column] if symbol_column in labelled else pd.Series("", index=labelled.index)
    weights = _uniqueness_by_symbol(labelled[time_column], labelled[end_column], symbols)
    return TrainingData(
        features=labelled[list(feature_columns)].astype(np.float64),
        labels=labelled[label_column].astype(np.int64).rename("label"),
        t1=t1,
        weights=(weights / weights.mean()).rename("weight"),
    )


def _uniqueness_by_symbol(starts: pd.Series, ends: pd.Series, symbols: pd.Series) -> pd.Series:
    """Average uniqueness of each label among its own symbol's labels, on the symbol's event times.

    Labels of different symbols are different price paths: they do not share information the way two
    overlapping labels of one symbol do."""
    weights = pd.Series(np.nan, index=starts.index)
    for _, positions in symbols.groupby(symbols, sort=False).indices.items():
        t0 = pd.DatetimeIndex(starts.iloc[positions]) if _is_time(starts) else pd.Index(starts.iloc[positions])
        t1 = pd.Series(ends.iloc[positions].array, index=t0)
        bars = t0.unique().sort_values()
        weights.iloc[positions] = average_uniqueness(t1, bars).to_numpy()
    return weights


def _is_time(values: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(values.dtype)


@dataclass(frozen=True)
class ModelParams:
    """LightGBM's multiclass booster: few shallow trees, row and feature bagging and a coarse histogram
    (63 bins), so that a million rows train within a minute on two cores."""

    num_boost_round: int = 100
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.5
    lambda_l2: float = 1.0
    max_bin: int = 63
    num_threads: int = 2
    seed: int = 7

    def lightgbm(self) -> dict[str, Any]:
        return {
            "objective": "multiclass", "num_class": len(CLASSES), "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction, "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0, "lambda_l2": self.lambda_l2,
            "max_bin": self.max_bin, "num_threads": self.num_threads, "seed": self.seed,
            "deterministic": True, "force_col_wise": True, "verbosity": -1,
        }


@dataclass(frozen=True)
class TrainingConfig:
    n_splits: int = 5
    pct_embargo: float = 0.01
    test_fraction: float = 0.2
    params: ModelParams = field(default_factory=ModelParams)


def fit(data: TrainingData, params: ModelParams) -> SignalModel:
    """A booster on every row of `data`, weighted by uniqueness."""
    dataset = lgb.Dataset(data.features.to_numpy(np.float64), label=encode_labels(data.labels),
                          weight=data.weights.to_numpy(), feature_name=list(data.features.columns),
                          params={"max_bin": params.max_bin, "verbosity": -1})
    booster = lgb.train(params.lightgbm(), dataset, num_boost_round=params.num_boost_round)
    return SignalModel(booster, tuple(data.features.columns))


def out_of_fold_proba(
    data: TrainingData, splits: Iterable[tuple[np.ndarray, np.ndarray]], params: ModelParams
) -> np.ndarray:
    """Each tested row's probabilities from the model trained on its split's training rows; rows no
    split tests stay NaN."""
    proba = np.full((len(data), len(CLASSES)), np.nan)
    for train, test in splits:
        if len(train) == 0:
            raise ValueError(f"a split leaves no training rows for its {len(test):,} test rows: too few rows "
                             f"({len(data):,}) for the labels' spans, splits and embargo")
        proba[test] = fit(data.rows(train), params).predict_proba(data.features.iloc[test])
    return proba


def out_of_fold_log_loss(
    data: TrainingData, splits: Iterable[tuple[np.ndarray, np.ndarray]], params: ModelParams
) -> float:
    """The log loss over the rows the splits test (how any splitter scores the same model)."""
    proba = out_of_fold_proba(data, splits, params)
    tested = ~np.isnan(proba[:, 0])
    return score(data.labels.to_numpy()[tested], proba[tested]).log_loss


@dataclass(frozen=True)
class Window:
    """First and last label start of some rows (UTC), how many rows, and the latest label end: the
    prices the labels saw reach that far (a backtest must start after it)."""

    start: pd.Timestamp
    end: pd.Timestamp
    rows: int
    last_label_end: pd.Timestamp

    @classmethod
    def of(cls, data: TrainingData) -> Window:
        return cls(data.t1.index[0], data.t1.index[-1], len(data), data.t1.max())

    def __str__(self) -> str:
        return f"{self.start} .. {self.end} ({self.rows:,} rows)"


@dataclass(frozen=True)
class TrainingResult:
    model: SignalModel  # refit on every row of the window
    cv: Scores  # purged k-fold on the development rows, out of fold
    cv_fold_log_loss: list[float]
    oos: Scores  # the model of the development rows on the walk-forward block
    baseline_log_loss: float  # the development rows' class prior on the walk-forward block
    importance: pd.DataFrame  # the kept model's gain and splits per feature, by gain
    window: Window  # every row: the kept model's training window
    development: Window
    out_of_sample: Window
    label_balance: dict[int, int]
    config: TrainingConfig

    @property
    def beats_baseline(self) -> bool:
        """The model predicts the out-of-sample labels better (lower log loss) than the class prior."""
        return self.oos.log_loss < self.baseline_log_loss

    def metrics(self) -> dict[str, float]:
        """The headline numbers, flat (for the registry and Dagster's metadata)."""
        return {
            "cv_log_loss": self.cv.log_loss, "cv_accuracy": self.cv.accuracy,
            "oos_log_loss": self.oos.log_loss, "oos_accuracy": self.oos.accuracy,
            "baseline_log_loss": self.baseline_log_loss,
            "rows": float(self.window.rows), "development_rows": float(self.development.rows),
            "oos_rows": float(self.out_of_sample.rows),
        }


def train_signal_model(data: TrainingData, config: TrainingConfig = TrainingConfig()) -> TrainingResult:
    """Purged cross-validation and a walk-forward test on `data`, then the model refit on all of it."""
    development, test = walk_forward_split(data.t1, config.test_fraction, config.pct_embargo)
    dev = data.rows(development)
    folds = list(PurgedKFold(config.n_splits, dev.t1, config.pct_embargo).split(dev.features))
    cv_proba = out_of_fold_proba(dev, folds, config.params)
    fold_losses = [score(dev.labels.iloc[test_rows], cv_proba[test_rows]).log_loss for _, test_rows in folds]
    oos = data.rows(test)
    oos_proba = fit(dev, config.params).predict_proba(oos.features)
    model = fit(data, config.params)
    return TrainingResult(
        model=model,
        cv=score(dev.labels, cv_proba),
        cv_fold_log_loss=fold_losses,
        oos=score(oos.labels, oos_proba),
        baseline_log_loss=prior_log_loss(dev.labels, oos.labels),
        importance=feature_importance(model),
        window=Window.of(data), development=Window.of(dev), out_of_sample=Window.of(oos),
        label_balance=label_balance(data.labels),
        config=config,
    )


def feature_importance(model: SignalModel) -> pd.DataFrame:
    """Total gain, its share and the number of splits per feature, largest gain first."""
    gain = model.booster.feature_importance("gain")
    total = gain.sum()
    return pd.DataFrame({
        "feature": list(model.features),
        "gain": gain,
        "gain_share": gain / total if total > 0 else np.zeros(len(gain)),
        "splits": model.booster.feature_importance("split"),
    }).sort_values("gain", ascending=False, kind="stable").reset_index(drop=True)
