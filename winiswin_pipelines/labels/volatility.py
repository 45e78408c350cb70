"""Volatility targets for the barriers: AFML snippet 3.1 and its generalisation to any lookback."""

from __future__ import annotations

import numpy as np
import pandas as pd


def check_price_series(price: pd.Series, name: str = "price") -> pd.DatetimeIndex:
    """The index of `price` after checking it is a tz-aware, strictly increasing time index."""
    if not isinstance(price, pd.Series):
        raise TypeError(f"{name} must be a pandas Series, got {type(price).__name__}")
    index = price.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError(f"{name} must have a timezone-aware (UTC) DatetimeIndex")
    if not index.is_monotonic_increasing or not index.is_unique:
        raise ValueError(f"{name} index must be strictly increasing (sorted, no duplicate timestamps)")
    return index


def get_return_vol(
    close: pd.Series, lookback: pd.Timedelta, span: int = 100, *, tolerance: pd.Timedelta | None = None
) -> pd.Series:
    """EWM standard deviation of the simple returns over `lookback` (AFML snippet 3.1 with any lookback).

    For each bar t the return is taken against the last bar strictly before t - lookback, exactly as
    snippet 3.1 does with `searchsorted(index - lookback) - 1`; bars with no such earlier bar are left
    out, so the result starts later than `close`. With a `tolerance`, so are bars whose earlier bar is
    stale, older than t - lookback - tolerance (after a gap in the data the return would span the
    gap, not `lookback`). `ewm(span=span).std()` (pandas' bias-corrected, adjust=True) follows. The
    result is indexed by the bars that have a value.
    """
    index = check_price_series(close, "close")
    lookback = pd.Timedelta(lookback)
    prior = index.searchsorted(index - lookback)
    has_prior = prior > 0
    if tolerance is not None:
        has_prior &= index[np.maximum(prior - 1, 0)] >= index - lookback - pd.Timedelta(tolerance)
    values = close.to_numpy(dtype=float)
    returns = pd.Series(
        values[has_prior] / values[prior[has_prior] - 1] - 1, index=index[has_prior], name=close.name
    )
    return returns.ewm(span=span).std()


def get_daily_vol(close: pd.Series, span: int = 100) -> pd.Series:
    """Daily volatility target as AFML snippet 3.1 (`getDailyVol`) defines it: EWM std of ~24 h returns."""
    return get_return_vol(close, pd.Timedelta(days=1), span)
