"""Aggregate klines to a longer timeframe (1m -> 5m, 15m, 1h), aligned to UTC boundaries.

A coarse bar is built from the fine bars whose `open_time` falls in [start, start + interval):
open of the first, high max, low min, close of the last, and the volumes, quote volumes, trade
counts and taker volumes summed. Volumes are decimals (Binance publishes them as decimal text), so
they are summed as decimals (each float's shortest repr) rather than as binary floats: five 1m
volumes give back exactly the exchange's own 5m value, with no float drift. By default only
complete bars (every fine bar present) are returned; a partial bar would otherwise pass for a
real one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal

import pandas as pd

from winiswin_pipelines.marketdata.klines import interval_ms

SUMMED_COLUMNS = ("volume", "quote_volume", "trade_count", "taker_buy_base_volume", "taker_buy_quote_volume")


def decimal_sum(values: Iterable[float]) -> float:
    """The sum of decimal values (given as floats) computed exactly, as the nearest float."""
    return float(sum((Decimal(repr(float(v))) for v in values), Decimal(0)))


def interval_timedelta(interval: str) -> timedelta:
    """Binance interval string ("1m", "5m", "15m", "1h", "1d") as a timedelta."""
    return timedelta(milliseconds=interval_ms(interval))


def resample_klines(bars: pd.DataFrame, interval: str, *, complete_only: bool = True) -> pd.DataFrame:
    """One symbol's klines (kline table columns, one `interval` column value) aggregated to `interval`."""
    if bars.empty:
        return bars.copy()
    source_intervals = bars["interval"].unique() if "interval" in bars.columns else []
    if len(source_intervals) != 1:
        raise ValueError(f"resample_klines: expected one source interval, got {list(source_intervals)}")
    if "symbol" in bars.columns and bars["symbol"].nunique() != 1:
        raise ValueError(f"resample_klines: expected one symbol, got {sorted(bars['symbol'].unique())}")
    fine, coarse = interval_timedelta(source_intervals[0]), interval_timedelta(interval)
    if coarse % fine or coarse < fine:
        raise ValueError(f"resample_klines: {interval} is not a multiple of {source_intervals[0]}")
    if bars["open_time"].dt.tz is None:
        raise ValueError("resample_klines: open_time must be timezone-aware UTC")

    bucket = bars["open_time"].dt.floor(pd.Timedelta(coarse))
    grouped = bars.groupby(bucket, sort=True)
    out = grouped.agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
        **{column: (column, "sum" if column == "trade_count" else decimal_sum)
           for column in SUMMED_COLUMNS if column in bars.columns},
    )
    out["bars"] = grouped.size()
    out = out.rename_axis("open_time").reset_index()
    out["close_time"] = out["open_time"] + pd.Timedelta(coarse) - pd.Timedelta(milliseconds=1)
    if "symbol" in bars.columns:
        out.insert(0, "symbol", bars["symbol"].iloc[0])
    out.insert(1 if "symbol" in out.columns else 0, "interval", interval)
    if complete_only:
        out = out[out["bars"] == coarse // fine].reset_index(drop=True)
    return out.drop(columns="bars")
