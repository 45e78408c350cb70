"""Funding-rate history from Binance's `GET /fapi/v1/fundingRate`: paging and parsing.

Binance answers at most `limit` (1,000) funding events from `startTime` on, oldest first, both
`startTime` and `endTime` inclusive; a full page is followed by the next one from just after its
last `fundingTime`. Each request first takes its place in the client's funding window (Binance: 500
requests per 5 minutes per IP, shared with `/fapi/v1/fundingInfo`; the client allows itself half)
and its request weight from the weight budget; a 429 is waited out (`BinanceRestClient`).
USDT-M perpetuals are funded every 8 hours (00:00, 08:00, 16:00 UTC) unless Binance set another
interval for a symbol: the stored times are the ones Binance reports, whatever the interval.
`markPrice` (the mark price the fee was charged at) is empty in old records: then None.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from winiswin_pipelines.marketdata.binance import (
    DEFAULT_WEIGHT_PER_MINUTE,
    FUNDING_PAGE,
    BinanceRestClient,
    RateWindow,
)
from winiswin_pipelines.times import from_epoch_ms

FUNDING_COLUMNS = ("symbol", "funding_time", "funding_rate", "mark_price")


@dataclass(frozen=True)
class FundingRate:
    symbol: str
    funding_time: dt.datetime
    funding_rate: float  # fraction of the position's notional: > 0 longs pay shorts
    mark_price: float | None


@dataclass
class FundingFetch:
    rates: list[FundingRate]
    requests: int
    waited_seconds: float  # spent waiting for the request budgets


def parse_funding_rate(row: dict[str, Any]) -> FundingRate:
    """One funding event of a /fapi/v1/fundingRate reply."""
    mark = row.get("markPrice")
    return FundingRate(row["symbol"], from_epoch_ms(int(row["fundingTime"])), float(row["fundingRate"]),
                       float(mark) if mark not in (None, "") else None)


def next_page_start(page: Sequence[dict[str, Any]], limit: int) -> int | None:
    """Where the next request starts (epoch ms), or None when `page` was the last one (not full)."""
    if len(page) < limit:
        return None
    return int(page[-1]["fundingTime"]) + 1


async def funding_history(client: BinanceRestClient, symbol: str, start: dt.datetime, end: dt.datetime, *,
                          page: int = FUNDING_PAGE) -> list[FundingRate]:
    """`symbol`'s funding events in [start, end), paged."""
    start_ms, end_ms = _ms(start), _ms(end) - 1
    rates: list[FundingRate] = []
    while start_ms is not None and start_ms <= end_ms:
        rows = await client.funding_rates(symbol, start_time=start_ms, end_time=end_ms, limit=page)
        rates += [parse_funding_rate(row) for row in rows if start_ms <= int(row["fundingTime"]) <= end_ms]
        start_ms = next_page_start(rows, page)
    return rates


def fetch_funding_rates(rest_url: str, symbols: Iterable[str], start: dt.datetime, end: dt.datetime, *,
                        weight_per_minute: int = DEFAULT_WEIGHT_PER_MINUTE, page: int = FUNDING_PAGE) -> FundingFetch:
    """The funding events of every symbol in [start, end), from `rest_url`."""
    return asyncio.run(_fetch(rest_url, list(dict.fromkeys(s.upper() for s in symbols)), start, end,
                              weight_per_minute, page))


async def _fetch(rest_url: str, symbols: list[str], start: dt.datetime, end: dt.datetime, weight_per_minute: int,
                 page: int) -> FundingFetch:
    limiter = RateWindow(weight_per_minute, 60.0)
    async with BinanceRestClient(rest_url, weight_limiter=limiter) as rest:
        rates = [rate for symbol in symbols for rate in await funding_history(rest, symbol, start, end, page=page)]
        return FundingFetch(rates, rest.requests_sent, limiter.waited + rest.funding_requests.waited)


def funding_frame(rates: Sequence[FundingRate]) -> pd.DataFrame:
    """`funding_rates` rows (FUNDING_COLUMNS), one per (symbol, funding_time)."""
    frame = pd.DataFrame([(r.symbol, r.funding_time, r.funding_rate, r.mark_price) for r in rates],
                         columns=list(FUNDING_COLUMNS))
    return frame.drop_duplicates(["symbol", "funding_time"], keep="last")


def _ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"funding times must be timezone-aware, got {value.isoformat()}")
    return int(value.timestamp() * 1000)
