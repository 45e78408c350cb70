"""Label intervals as numbers: each label's start `t0` (the index) and end `t1` (the values), checked.

The splitters and the uniqueness weights compare times with numpy's searchsorted and boolean masks,
so times become int64 nanoseconds (tz-aware times in UTC) or float64 for plain numbers. Both sides
of a comparison must be the same kind of time: a naive and a tz-aware time are refused rather than
guessed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def label_intervals(samples_info_sets: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the labels in `samples_info_sets` (index `t0`, values `t1`), after checking them.

    The starts must be sorted (ties allowed), every end set, and no end before its start.
    """
    if not isinstance(samples_info_sets, pd.Series):
        kind = type(samples_info_sets).__name__
        raise TypeError(f"samples_info_sets must be a pandas Series (index t0, values t1), got {kind}")
    t0, t1 = samples_info_sets.index, pd.Index(samples_info_sets)
    check_same_kind(t0, t1, "t0 (the index)", "t1 (the values)")
    if t0.hasnans:
        raise ValueError(f"t0 (the index) has {int(t0.isna().sum())} missing times")
    if t1.hasnans:
        first = t0[np.argmax(t1.isna())]
        raise ValueError(f"t1 has {int(t1.isna().sum())} missing ends (unfinished labels), first at t0={first}")
    starts, ends = as_numbers(t0), as_numbers(t1)
    unsorted = np.flatnonzero(np.diff(starts) < 0)
    if len(unsorted):
        late = unsorted[0] + 1
        raise ValueError(f"t0 (the index) must be sorted increasing; position {late} ({t0[late]}) is out of order")
    backwards = ends < starts
    if backwards.any():
        first = int(np.argmax(backwards))
        raise ValueError(
            f"t1 must not be before t0: {int(backwards.sum())} labels end before they start, "
            f"first t0={t0[first]}, t1={t1[first]}"
        )
    return starts, ends


def as_numbers(times: pd.Index) -> np.ndarray:
    """Times as comparable numbers: int64 nanoseconds for datetimes (UTC when tz-aware), float64 otherwise."""
    if pd.api.types.is_datetime64_any_dtype(times.dtype):
        return pd.DatetimeIndex(times).as_unit("ns").asi8
    return times.to_numpy(dtype=np.float64)


def check_same_kind(left: pd.Index, right: pd.Index, left_name: str, right_name: str) -> None:
    """Refuse to compare times of different kinds (tz-aware, naive, numbers)."""
    if _kind(left) != _kind(right):
        raise TypeError(f"{left_name} holds {_kind(left)} but {right_name} holds {_kind(right)}: not comparable")


def _kind(times: pd.Index) -> str:
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        return "tz-aware datetimes"
    if pd.api.types.is_datetime64_dtype(times.dtype):
        return "naive datetimes"
    if pd.api.types.is_numeric_dtype(times.dtype) and not pd.api.types.is_bool_dtype(times.dtype):
        return "numbers"
    raise TypeError(f"times must be datetimes or numbers, got dtype {times.dtype}")
