"""Historical klines from Binance's REST API for the days no file covers (the `klines` asset's backfill).

A day is fetched for a symbol when neither a kline CSV of that symbol covers it nor a capture of that
symbol is named for it. The day comes from `/fapi/v1/klines` in pages of 1,500 bars (a day of 1m bars
is one request of weight 10), every request first taking its weight from the client's budget
(`BinanceRestClient`: 1,200 a minute by default, Binance allows 2,400 per IP; a 429 is waited out).
Only closed bars are kept (a bar still open when fetched is not final).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from winiswin_pipelines.marketdata.binance import (
    DEFAULT_WEIGHT_PER_MINUTE,
    KLINES_PAGE,
    BinanceRestClient,
    RateWindow,
)
from winiswin_pipelines.marketdata.klines import KLINE_COLUMNS, interval_ms
from winiswin_pipelines.marketdata.samples import MarketFiles

REST_SOURCE = "rest:/fapi/v1/klines"
_DAY_MS = 86_400_000


@dataclass
class KlineBackfill:
    frame: pd.DataFrame  # `klines` rows (KLINE_COLUMNS)
    days: dict[str, list[dt.date]]  # what was fetched, per symbol
    requests: int
    waited_seconds: float  # spent waiting for the request-weight budget


def days_without_files(files: MarketFiles, symbols: Iterable[str], first: dt.date, last: dt.date
                       ) -> dict[str, list[dt.date]]:
    """Per symbol, the days of [first, last] that no kline file or capture of that symbol covers."""
    missing: dict[str, list[dt.date]] = {}
    day = first
    days = []
    while day <= last:
        days.append(day)
        day += dt.timedelta(days=1)
    for symbol in dict.fromkeys(s.upper() for s in symbols):
        covered = {c.day for c in files.captures if c.symbol == symbol}
        for kline_file in files.klines:
            if kline_file.symbol == symbol:
                covered.update(d for d in days if kline_file.first_day <= d <= kline_file.last_day)
        without = [d for d in days if d not in covered]
        if without:
            missing[symbol] = without
    return missing


def fetch_klines(rest_url: str, wanted: Mapping[str, Iterable[dt.date]], interval: str, *,
                 weight_per_minute: int = DEFAULT_WEIGHT_PER_MINUTE, page: int = KLINES_PAGE) -> KlineBackfill:
    """The closed `interval` klines of every wanted (symbol, UTC day), from `rest_url`."""
    return asyncio.run(_fetch(rest_url, {s: sorted(set(days)) for s, days in wanted.items()}, interval,
                              weight_per_minute, page))


async def _fetch(rest_url: str, wanted: dict[str, list[dt.date]], interval: str, weight_per_minute: int,
                 page: int) -> KlineBackfill:
    interval_ms(interval)
    rows: list[tuple] = []
    limiter = RateWindow(weight_per_minute, 60.0)
    async with BinanceRestClient(rest_url, weight_limiter=limiter) as rest:
        for symbol, days in wanted.items():
            for day in days:
                start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
                day_rows = await rest.klines_between(symbol, interval, start, start + _DAY_MS, page=page)
                now_ms = int(time.time() * 1000)
                rows += [(symbol, row) for row in day_rows if int(row[6]) < now_ms]  # closed bars only
        requests = rest.requests_sent
    return KlineBackfill(_frame(rows, interval), wanted, requests, limiter.waited)


def _frame(rows: list[tuple[str, list]], interval: str) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=_dtype(name)) for name in KLINE_COLUMNS})
    symbols, data = zip(*rows, strict=True)
    raw = pd.DataFrame(list(data)).iloc[:, :11]
    raw.columns = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trade_count",
                   "taker_buy_base_volume", "taker_buy_quote_volume"]
    frame = pd.DataFrame({
        "symbol": list(symbols),
        "interval": interval,
        "open_time": pd.to_datetime(raw["open_time"].astype("int64"), unit="ms", utc=True),
        "close_time": pd.to_datetime(raw["close_time"].astype("int64"), unit="ms", utc=True),
        **{name: raw[name].astype("float64") for name in ("open", "high", "low", "close", "volume", "quote_volume")},
        "trade_count": raw["trade_count"].astype("int64"),
        "taker_buy_base_volume": raw["taker_buy_base_volume"].astype("float64"),
        "taker_buy_quote_volume": raw["taker_buy_quote_volume"].astype("float64"),
        "source": REST_SOURCE,
    })
    return frame[list(KLINE_COLUMNS)]


def _dtype(name: str) -> str:
    if name in ("open_time", "close_time"):
        return "datetime64[ms, UTC]"
    if name in ("symbol", "interval", "source"):
        return "object"
    return "int64" if name == "trade_count" else "float64"
