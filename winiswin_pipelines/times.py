"""Time conversions shared by the exchange readers: every result is timezone-aware UTC."""

from __future__ import annotations

import datetime as dt

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def from_epoch_ms(ms: int | float) -> dt.datetime:
    """Binance's milliseconds since the Unix epoch as an aware UTC datetime (exact, no float seconds)."""
    return EPOCH + dt.timedelta(milliseconds=int(ms))
