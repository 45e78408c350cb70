"""Concurrency and average uniqueness of labels (AFML snippets 4.1-4.2), vectorised.

A label lives on the bars in [t0, t1] (both ends included, as pandas' `.loc[t0:t1]` slices them).
A bar's concurrency c_t is the number of labels alive on it; a label's average uniqueness is the
mean of 1 / c_t over the bars of its life. Overlapping labels share information, so these are the
sample weights that keep a run of overlapping labels from counting as many independent ones.

The values equal the `tW` column of mlfinpy's `get_av_uniqueness_from_triple_barrier` (to about
1e-12 relative: the means come from differences of running sums), including its handling of an
unfinished label (t1 missing) with naive times: it lives until the last bar (mlfinpy raises on a
missing tz-aware t1; here both kinds of time behave the same). How it is fast: each
label's life is a range of bar positions found by binary search; concurrency is the running sum of
+1 at each start and -1 after each end, and a label's mean is a difference of the running sum of
1 / c_t, so a million labels take a few vectorised passes instead of a loop over bars per label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from winiswin_pipelines.ml.intervals import as_numbers, check_same_kind, label_intervals


def concurrent_events(t1: pd.Series, close_index: pd.Index) -> pd.Series:
    """Number of labels alive on each bar of `close_index` (AFML snippet 4.1); `t1` is indexed by `t0`."""
    first, stop = _bar_spans(t1, close_index)
    return pd.Series(_concurrency(first, stop, len(close_index)), index=close_index, name="concurrent_events")


def average_uniqueness(t1: pd.Series, close_index: pd.Index) -> pd.Series:
    """Each label's mean of 1 / concurrency over its bars (AFML snippet 4.2), indexed like `t1`.

    `t1`: each label's end, indexed by its start `t0` (sorted). `close_index`: the bar times,
    strictly increasing. A label whose life holds no bar gets NaN (the mean of nothing).
    """
    first, stop = _bar_spans(t1, close_index)
    concurrency = _concurrency(first, stop, len(close_index))
    inverse = np.divide(1.0, concurrency, out=np.zeros(len(concurrency)), where=concurrency > 0)
    running = np.concatenate([[0.0], np.cumsum(inverse)])
    with np.errstate(invalid="ignore"):
        mean = (running[stop] - running[first]) / (stop - first)
    return pd.Series(mean, index=t1.index, name="average_uniqueness")


def _bar_spans(t1: pd.Series, close_index: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Per label, the bar positions [first, stop) of its life; an unfinished label lives to the last bar."""
    if not isinstance(close_index, pd.Index) or len(close_index) == 0:
        raise ValueError("close_index must be a non-empty pandas Index of bar times")
    if not close_index.is_monotonic_increasing or not close_index.is_unique:
        raise ValueError("close_index must be strictly increasing (sorted, no duplicate bars)")
    if isinstance(t1, pd.Series):
        check_same_kind(t1.index, close_index, "t0 (the index of t1)", "close_index")
        t1 = t1.fillna(close_index[-1])
    starts, ends = label_intervals(t1)
    bars = as_numbers(close_index)
    return np.searchsorted(bars, starts, side="left"), np.searchsorted(bars, ends, side="right")


def _concurrency(first: np.ndarray, stop: np.ndarray, n_bars: int) -> np.ndarray:
    """Labels alive per bar: +1 where a life starts, -1 where it stops, summed along the bars."""
    change = np.bincount(first, minlength=n_bars + 1) - np.bincount(stop, minlength=n_bars + 1)
    return np.cumsum(change[:n_bars])
