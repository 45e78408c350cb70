"""Binance klines: the public CSV files, and bars aggregated from the trade stream.

Bars from trades follow Binance's definition, so they equal Binance's own klines exactly:
MARKET trades only (insurance-fund and ADL fills are excluded); open/close are the first/last
trade by (time, id); volume = sum of quantities; quote volume = sum of price * quantity;
count = number of trades; taker buy = trades whose buyer is not the maker (`m` false). Sums are
taken in integers (prices and quantities are decimals on a tick grid), so no float drift.
An interval without trades between two traded ones is a zero-volume bar at the previous close,
as Binance publishes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from winiswin_pipelines.marketdata.capture import CaptureMessage

KLINE_COLUMNS = (
    "symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume",
    "quote_volume", "trade_count", "taker_buy_base_volume", "taker_buy_quote_volume", "source",
)
TRADE_COLUMNS = (
    "symbol", "trade_id", "trade_time", "event_time", "receive_time", "price", "quantity",
    "is_buyer_maker", "trade_type", "trade_count",
)
# Binance's CSV column order (data.binance.vision); the 12th column is unused.
_CSV_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trade_count",
    "taker_buy_base_volume", "taker_buy_quote_volume", "ignore",
)
_PRICE_AND_VOLUME_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_DECIMALS = 12


class KlineCsvError(ValueError):
    """A kline CSV that does not follow Binance's 12-column layout; names the file and the line."""


def interval_ms(interval: str) -> int:
    """Length of a fixed Binance interval ("1m" ... "1d") in milliseconds."""
    unit = _UNIT_MS.get(interval[-1:])
    if unit is None or not interval[:-1].isdigit() or int(interval[:-1]) <= 0:
        raise ValueError(f"unsupported kline interval {interval!r} (expected e.g. 1m, 5m, 1h, 1d)")
    return int(interval[:-1]) * unit


def read_kline_csv(path: str | Path, *, symbol: str, interval: str) -> pd.DataFrame:
    """A Binance kline CSV (12 columns, with or without header; ms or µs times) as `klines` rows."""
    path = Path(path)
    interval_ms(interval)
    with path.open("rb") as handle:
        first = handle.readline().split(b",")[0].strip()
    if not first:
        raise KlineCsvError(f"{path}: empty file")
    header_lines = 0 if first.isdigit() else 1  # Binance's older files have no header row
    raw = pd.read_csv(path, header=0 if header_lines else None, dtype=str, keep_default_na=False)
    if raw.shape[1] != len(_CSV_COLUMNS):
        raise KlineCsvError(f"{path}: expected {len(_CSV_COLUMNS)} columns, found {raw.shape[1]}")
    raw.columns = list(_CSV_COLUMNS)
    numbers = {name: _numeric(raw[name], path, name, header_lines) for name in _CSV_COLUMNS[:-1]}
    unit = "us" if len(raw) and numbers["open_time"].iloc[0] >= 10**14 else "ms"
    frame = pd.DataFrame({
        "symbol": symbol.upper(),
        "interval": interval,
        "open_time": pd.to_datetime(numbers["open_time"].astype("int64"), unit=unit, utc=True),
        "close_time": pd.to_datetime(numbers["close_time"].astype("int64"), unit=unit, utc=True),
        **{name: numbers[name].astype("float64") for name in _PRICE_AND_VOLUME_COLUMNS},
        "trade_count": numbers["trade_count"].astype("int64"),
        "taker_buy_base_volume": numbers["taker_buy_base_volume"].astype("float64"),
        "taker_buy_quote_volume": numbers["taker_buy_quote_volume"].astype("float64"),
        "source": f"csv:{path.name}"[:64],
    })
    return frame[list(KLINE_COLUMNS)]


def _numeric(column: pd.Series, path: Path, name: str, header_lines: int) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise KlineCsvError(f"{path}:{row + 1 + header_lines}: column {name!r} is not a number: {column.iloc[row]!r}")
    return values


def trades_from_capture(messages: Iterable[CaptureMessage]) -> pd.DataFrame:
    """The `@trade` and `@aggTrade` events of a capture, one row each (`TRADE_COLUMNS`).

    `trade_count` is 1 for a trade and `l - f + 1` for an aggregate trade; aggregate trades carry
    MARKET fills only, as Binance aggregates nothing else.
    """
    rows = []
    for message in messages:
        kind, data = message.kind, message.data
        if kind == "trade":
            rows.append((data["s"], data["t"], data["T"], data["E"], message.receive_time, data["p"], data["q"],
                         data["m"], data.get("X", "MARKET"), 1))
        elif kind == "aggTrade":
            rows.append((data["s"], data["a"], data["T"], data["E"], message.receive_time, data["p"], data["q"],
                         data["m"], "MARKET", data["l"] - data["f"] + 1))
    frame = pd.DataFrame(rows, columns=list(TRADE_COLUMNS))
    for column in ("trade_time", "event_time"):
        frame[column] = pd.to_datetime(frame[column].astype("int64"), unit="ms", utc=True)
    frame["receive_time"] = pd.to_datetime(frame["receive_time"], utc=True)
    frame["price"] = frame["price"].astype("float64")
    frame["quantity"] = frame["quantity"].astype("float64")
    frame["is_buyer_maker"] = frame["is_buyer_maker"].astype(bool)
    frame["trade_id"] = frame["trade_id"].astype("int64")
    frame["trade_count"] = frame["trade_count"].astype("int64")
    return frame



def aggregate_trades_to_klines(
    trades: pd.DataFrame, *, symbol: str, interval: str, source: str | None = "trades"
) -> pd.DataFrame:
    """Binance klines of `symbol` built from `trades` (`TRADE_COLUMNS`), MARKET trades only.

    Every bar from the first traded interval to the last is returned; the first and last can be
    partial when the trades do not cover them (see `complete_klines`).
    """
    step = interval_ms(interval)
    market = trades[(trades["symbol"] == symbol.upper()) & (trades["trade_type"] == "MARKET")]
    market = market.sort_values(["trade_time", "trade_id"], kind="stable")
    if market.empty:
        return pd.DataFrame({name: pd.Series(dtype=_kline_dtype(name)) for name in KLINE_COLUMNS})
    time_ms = market["trade_time"].to_numpy("datetime64[ms]").astype("int64")
    bucket = time_ms // step * step
    price_int, price_scale = _decimal_mantissas(market["price"].to_numpy())
    qty_int, qty_scale = _decimal_mantissas(market["quantity"].to_numpy())
    taker_buy = ~market["is_buyer_maker"].to_numpy()
    parts = pd.DataFrame({
        "bucket": bucket, "price": market["price"].to_numpy(), "qty": qty_int, "quote": price_int * qty_int,
        "count": market["trade_count"].to_numpy(), "buy_qty": np.where(taker_buy, qty_int, 0),
        "buy_quote": np.where(taker_buy, price_int * qty_int, 0),
    })
    bars = parts.groupby("bucket", sort=True).agg(
        open=("price", "first"), high=("price", "max"), low=("price", "min"), close=("price", "last"),
        qty=("qty", "sum"), quote=("quote", "sum"), count=("count", "sum"),
        buy_qty=("buy_qty", "sum"), buy_quote=("buy_quote", "sum"),
    )
    bars = _fill_quiet_intervals(bars, step)
    open_ms = bars.index.to_numpy()
    return pd.DataFrame({
        "symbol": symbol.upper(),
        "interval": interval,
        "open_time": pd.to_datetime(open_ms, unit="ms", utc=True),
        "close_time": pd.to_datetime(open_ms + step - 1, unit="ms", utc=True),
        "open": bars["open"].to_numpy(), "high": bars["high"].to_numpy(),
        "low": bars["low"].to_numpy(), "close": bars["close"].to_numpy(),
        "volume": _scaled(bars["qty"], qty_scale),
        "quote_volume": _scaled(bars["quote"], price_scale + qty_scale),
        "trade_count": bars["count"].to_numpy().astype("int64"),
        "taker_buy_base_volume": _scaled(bars["buy_qty"], qty_scale),
        "taker_buy_quote_volume": _scaled(bars["buy_quote"], price_scale + qty_scale),
        "source": source,
    })[list(KLINE_COLUMNS)]


def complete_klines(klines: pd.DataFrame, covered_from: dt.datetime, covered_to: dt.datetime) -> pd.DataFrame:
    """The bars lying entirely inside [covered_from, covered_to] (the span a capture recorded)."""
    inside = (klines["open_time"] >= covered_from) & (klines["close_time"] <= covered_to)
    return klines[inside].reset_index(drop=True)


def klines_without_lost_trades(klines: pd.DataFrame, trades: pd.DataFrame) -> pd.DataFrame:
    """The bars of `klines` in which no trade of `trades` (the trades they were built from) is missing.

    Binance's trade ids (aggregate ids for aggTrade) are consecutive per symbol, so a jump in ids
    marks trades lost between two recorded ones: every bar touching that span is incomplete.
    """
    keep = pd.Series(True, index=klines.index)
    for symbol, own in trades.sort_values("trade_id").groupby("symbol"):
        ids, times = own["trade_id"].to_numpy(), own["trade_time"].to_numpy()
        for position in np.flatnonzero(np.diff(ids) > 1):
            lost_from, lost_to = times[position], times[position + 1]
            keep &= ~(
                (klines["symbol"] == symbol) & (klines["open_time"] <= lost_to) & (klines["close_time"] >= lost_from)
            )
    return klines[keep].reset_index(drop=True)


def complete_klines_from_trades(
    trades: pd.DataFrame, *, symbol: str, interval: str, source: str | None = "trades"
) -> pd.DataFrame:
    """Only the bars of `symbol` that equal Binance's: those the trades cover from start to end,
    with no trade lost (a capture's first and last bars are usually partial)."""
    own = trades[trades["symbol"] == symbol.upper()]
    bars = aggregate_trades_to_klines(own, symbol=symbol, interval=interval, source=source)
    bars = complete_klines(bars, own["trade_time"].min(), own["trade_time"].max())
    return klines_without_lost_trades(bars, own)


def _fill_quiet_intervals(bars: pd.DataFrame, step: int) -> pd.DataFrame:
    full = np.arange(bars.index[0], bars.index[-1] + step, step)
    if len(full) == len(bars):
        return bars
    sums = bars[["qty", "quote", "count", "buy_qty", "buy_quote"]].reindex(full, fill_value=0)
    prices = bars[["open", "high", "low", "close"]].reindex(full)
    previous_close = prices["close"].ffill()
    prices = prices.apply(lambda column: column.fillna(previous_close))
    return pd.concat([prices, sums], axis=1)


def _decimal_mantissas(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integers m and the smallest scale s with values == m / 10**s (decimals on a tick grid)."""
    for scale in range(_MAX_DECIMALS + 1):
        scaled = values * 10.0**scale
        rounded = np.round(scaled)
        if np.all(np.abs(scaled - rounded) <= 1e-6 * np.maximum(1.0, np.abs(scaled)) * 1e-3):
            return rounded.astype("int64"), scale
    raise ValueError(f"prices or quantities have more than {_MAX_DECIMALS} decimals")


def _scaled(mantissas: pd.Series, scale: int) -> np.ndarray:
    # Python's int / int is correctly rounded: the same float as parsing Binance's decimal text.
    return np.array([int(m) / 10**scale for m in mantissas], dtype="float64")


def _kline_dtype(name: str) -> str:
    if name in ("open_time", "close_time"):
        return "datetime64[ms, UTC]"
    if name in ("symbol", "interval", "source"):
        return "object"
    return "int64" if name == "trade_count" else "float64"
