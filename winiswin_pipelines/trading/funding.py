"""Funding charged to simulated positions (backtest, paper) from the stored funding-rate history.

A USDT-M perpetual settles funding at each funding time (every 8 hours: 00:00, 08:00, 16:00 UTC) on
the positions open then: a long pays `rate x quantity x mark price` and a short receives it (both
the other way round when the rate is negative). A position pays at a funding time when it was
filled before it and is still open after it. Live positions are charged by the exchange itself
(ACCOUNT_UPDATE FUNDING_FEE); this module is for the sessions that simulate.

`FundingSchedule` reads the history a UTC day at a time through `load` (e.g. the `funding_rates`
table) and caches it. A funding time on the 8-hour grid the history does not hold is unknown: it is
charged at `assumed_rate` when one is configured (e.g. 0.01%, Binance's interest-rate baseline that
a calm market's funding equals) and counted as assumed, otherwise counted as unknown, never charged
as zero silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FUNDING_INTERVAL = dt.timedelta(hours=8)
_DAY = dt.timedelta(days=1)

# (symbols, start, end) -> (symbol, funding_time, funding_rate, mark_price) rows in [start, end)
FundingLoader = Callable[[Sequence[str], dt.datetime, dt.datetime], Sequence[tuple]]


@dataclass(frozen=True)
class FundingEvent:
    symbol: str
    time: dt.datetime
    rate: float | None  # None: the history does not hold this funding time
    mark_price: float | None


def funding_payment(side_sign: int, quantity: float, mark_price: float, rate: float) -> float:
    """What a position receives (> 0) or pays (< 0) at one funding time, USDT; `side_sign` +1 long, -1 short."""
    return -side_sign * rate * quantity * mark_price


def grid_times(after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """The 8-hour funding times in (after, until]."""
    midnight = after.replace(hour=0, minute=0, second=0, microsecond=0)
    steps = (after - midnight) // FUNDING_INTERVAL + 1
    times, time = [], midnight + steps * FUNDING_INTERVAL
    while time <= until:
        times.append(time)
        time += FUNDING_INTERVAL
    return times


class FundingSchedule:
    """The funding events of the traded symbols, read a day at a time through `load`."""

    def __init__(self, load: FundingLoader, assumed_rate: float | None = None):
        self._load = load
        self.assumed_rate = assumed_rate  # charged where the history holds no rate (None: nothing charged)
        self._days: dict[tuple[str, dt.date], dict[dt.datetime, tuple[float, float | None]]] = {}

    @classmethod
    def of(cls, rows: Sequence[tuple], assumed_rate: float | None = None) -> FundingSchedule:
        """A schedule of exactly these rows (tests, or a history read beforehand)."""
        return cls(lambda symbols, start, end: [r for r in rows if r[0] in symbols and start <= r[1] < end],
                   assumed_rate)

    def events(self, symbol: str, after: dt.datetime, until: dt.datetime) -> list[FundingEvent]:
        """`symbol`'s funding events in (after, until]: the stored ones and the 8-hour grid's times."""
        known: dict[dt.datetime, tuple[float, float | None]] = {}
        day = after.date()
        while day <= until.date():
            known |= self._day(symbol, day)
            day += _DAY
        times = sorted({t for t in known if after < t <= until} | set(grid_times(after, until)))
        return [FundingEvent(symbol, t, *known.get(t, (None, None))) for t in times]

    def _day(self, symbol: str, day: dt.date) -> dict[dt.datetime, tuple[float, float | None]]:
        if (symbol, day) not in self._days:
            start = dt.datetime.combine(day, dt.time(), dt.UTC)
            rows = self._load([symbol], start, start + _DAY)
            self._days[(symbol, day)] = {row[1]: (float(row[2]), row[3]) for row in rows if row[0] == symbol}
        return self._days[(symbol, day)]
