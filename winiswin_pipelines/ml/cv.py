"""Cross-validation for labels that span time (AFML ch. 7): purged k-fold with embargo, and walk-forward.

A triple-barrier label starting at `t0` is decided by prices up to its end `t1`, so a training label
whose interval overlaps the test block has seen the test period: plain k-fold leaks. The rule here
(AFML snippet 7.3, issue 14):

- Fold k tests a contiguous block of positions [i, j), cut as `np.array_split` cuts them. Its window
  is [t0_i, max t1 of the fold]; the maximum, not the last `t1`, because label ends are not
  monotonic (a long label early in the fold can end after the fold's last one).
- A sample outside the fold trains when its label ends strictly before the window starts
  (t1 < t0_i) or starts strictly after the window ends; the rest are purged.
- The first int(N * pct_embargo) samples that start after the window are embargoed too: their
  features may look back into the test block (serial correlation).
- Train and test indices are positions, in increasing order.

Unlike mlfinpy 0.1.2, which takes the fold's first and last `t1` as the window and raises "Train and
test intersect" when ends are not monotonic, the window here always covers every test label.

Each fold costs a boolean mask over the samples before it and one binary search for those after it,
so a million labels split in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

from winiswin_pipelines.ml.intervals import label_intervals


class PurgedKFold(BaseCrossValidator):
    """Scikit-learn splitter: k contiguous folds, training labels overlapping a fold purged, then an embargo.

    `samples_info_sets`: a Series indexed by each label's start `t0` (sorted) holding its end `t1`,
    in the order of the rows of X. `pct_embargo`: the fraction of all samples embargoed after each
    test window.
    """

    def __init__(self, n_splits: int, samples_info_sets: pd.Series, pct_embargo: float = 0.0):
        self.n_splits = n_splits
        self.samples_info_sets = samples_info_sets
        self.pct_embargo = pct_embargo
        self._starts, self._ends = label_intervals(samples_info_sets)
        _check_n_splits(n_splits, len(self._starts))
        _check_pct_embargo(pct_embargo)

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (train, test) positions per fold; `y` and `groups` are accepted for scikit-learn and ignored."""
        n, rows = len(self._starts), X.shape[0] if hasattr(X, "shape") else len(X)
        if rows != n:
            raise ValueError(f"X has {rows} rows but samples_info_sets has {n} labels: they must match row for row")
        embargo = int(n * self.pct_embargo)
        for test in np.array_split(np.arange(n), self.n_splits):
            yield _train_around(self._starts, self._ends, test[0], test[-1] + 1, embargo), test


def walk_forward_split(
    samples_info_sets: pd.Series, test_fraction: float, pct_embargo: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions for the final out-of-sample evaluation: test on the last block, train before it.

    The test block is the last int(N * test_fraction) samples. A sample before it trains only when its
    label ends strictly before the first test label starts (labels reaching into the test window are
    purged). `pct_embargo` additionally drops the last int(N * pct_embargo) training samples, a gap
    like scikit-learn's `TimeSeriesSplit(gap=...)`.
    """
    starts, ends = label_intervals(samples_info_sets)
    n = len(starts)
    n_test = int(n * test_fraction) if 0 < test_fraction < 1 else 0
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction must leave at least one test and one earlier sample of {n}: {test_fraction}")
    _check_pct_embargo(pct_embargo)
    first_test = n - n_test
    train = np.flatnonzero(ends[:first_test] < starts[first_test])
    return train[: max(len(train) - int(n * pct_embargo), 0)], np.arange(first_test, n)


def _train_around(starts: np.ndarray, ends: np.ndarray, i: int, j: int, embargo: int) -> np.ndarray:
    """Positions that train while [i, j) tests: ended before the window, or started after it and past the embargo."""
    window_start, window_end = starts[i], ends[i:j].max()
    # Samples before the fold start no later than t0_i, so only their ends can overlap the window.
    before = np.flatnonzero(ends[:i] < window_start)
    # Starts are sorted and every fold label starts no later than the window end, so the samples that
    # start after the window are a tail beginning at or after j.
    after = int(np.searchsorted(starts, window_end, side="right"))
    return np.concatenate([before, np.arange(after + embargo, len(starts))])


def _check_n_splits(n_splits: int, n_samples: int) -> None:
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    if n_splits > n_samples:
        raise ValueError(f"n_splits={n_splits} is more than the {n_samples} samples")


def _check_pct_embargo(pct_embargo: float) -> None:
    if not 0 <= pct_embargo < 1:
        raise ValueError(f"pct_embargo must be in [0, 1), got {pct_embargo}")
