"""The trained signal model: a LightGBM booster with the names of its features and its classes.

The booster is LightGBM's own (its text format is what the registry stores: no pickle to trust),
trained on the triple-barrier label encoded as 0, 1, 2 for CLASSES -1, 0, 1. Every class keeps its
column even when a training window lacks it, so probabilities always line up with CLASSES.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

# The triple-barrier label: -1 lower barrier first, 0 vertical (time) barrier, 1 upper barrier first.
CLASSES: tuple[int, ...] = (-1, 0, 1)
# Fewer rows than this predict on one thread: waking LightGBM's thread pool for a row or a few costs more
# than the prediction (p99 of one row: ~0.2 ms on one thread, ~16 ms with the pool on a busy machine).
_ONE_THREAD_BELOW = 10_000


def encode_labels(labels: pd.Series | np.ndarray) -> np.ndarray:
    """CLASSES -1, 0, 1 as LightGBM's class indices 0, 1, 2."""
    values = np.asarray(labels)
    unknown = ~np.isin(values, CLASSES)
    if unknown.any():
        raise ValueError(f"labels must be one of {CLASSES}; got {sorted(set(values[unknown].tolist()))[:5]}")
    return np.searchsorted(CLASSES, values)


@dataclass(frozen=True)
class SignalModel:
    """Class probabilities for rows of features, in the order of CLASSES."""

    booster: lgb.Booster
    features: tuple[str, ...]
    classes: tuple[int, ...] = CLASSES

    def predict_proba(self, rows: pd.DataFrame | np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
        """One row of probabilities (summing to 1) per row of `rows`: a frame holding the features
        (by name), or an array whose columns are `features` in order (one row may be 1-D).
        `num_threads` None: one thread for a few rows (a trading decision), LightGBM's default for many."""
        values = rows[list(self.features)].to_numpy(np.float64) if isinstance(rows, pd.DataFrame) else rows
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values.reshape(1, -1)
        if values.shape[1] != len(self.features):
            raise ValueError(f"expected {len(self.features)} feature columns {self.features}, got {values.shape[1]}")
        if num_threads is None:
            num_threads = 1 if len(values) < _ONE_THREAD_BELOW else 0
        return self.booster.predict(values, num_threads=num_threads)

    def probability(self, rows: pd.DataFrame | np.ndarray, label: int) -> np.ndarray:
        """The probability of one class (e.g. 1: the upper barrier first) per row."""
        return self.predict_proba(rows)[:, self.classes.index(label)]

    @classmethod
    def from_text(cls, model_text: str, features: Sequence[str]) -> SignalModel:
        return cls(lgb.Booster(model_str=model_text), tuple(features))
