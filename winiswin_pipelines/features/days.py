"""The pipeline's features of a UTC day, pure: its settings, the day's rows computed from a book read
with warm-up, the gaps in the day's book, and the look-ahead comparison of stored rows with a
recomputation."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from winiswin_pipelines.features.microstructure import (
    FEATURE_COLUMNS,
    BookArrays,
    FeatureConfig,
    compute_features,
    snapshot_gaps,
    usable_mid,
)

FEATURES = FeatureConfig()

# The history before a day that its first rows can read (the longest window and the gap tolerance):
# a row's features come out the same whether its day is computed alone or within a range.
FEATURE_READ_WARMUP = FEATURES.warmup


def day_features(book: BookArrays, day: dt.datetime) -> pd.DataFrame:
    """Features of the snapshots of `book` from `day` on, with their book state."""
    features = compute_features(book, FEATURES)
    return features[features["ts"] >= day].reset_index(drop=True)


@dataclass(frozen=True)
class SnapshotGap:
    """Two consecutive usable book snapshots of `symbol` more than the gap tolerance apart: the last
    one before the gap (`start`) and the first one after it (`end`). A gap belongs to the day of `end`."""

    symbol: str
    start: pd.Timestamp
    end: pd.Timestamp

    def __str__(self) -> str:
        return f"{self.symbol} {self.start:%Y-%m-%d %H:%M:%S} -> {self.end:%Y-%m-%d %H:%M:%S} ({self.end - self.start})"


def day_gaps(book: BookArrays, symbol: str, day: dt.datetime) -> tuple[list[SnapshotGap], pd.Timestamp | None]:
    """The gaps between the usable snapshots of `book` that end on `day` or later, and the day's
    first usable snapshot when `book` holds no usable one before it (else None): the snapshot before
    that one lies before the book read, and ends a gap if there is one."""
    usable = book.ts[~np.isnan(usable_mid(book.bid_px[:, 0], book.ask_px[:, 0]))]
    start = pd.Timestamp(day).value
    ends = snapshot_gaps(usable, FEATURES.gap_tolerance)
    gaps = [SnapshotGap(symbol, _utc(usable[k - 1]), _utc(usable[k])) for k in ends[usable[ends] >= start]]
    first_without_previous = _utc(usable[0]) if len(usable) and usable[0] >= start else None
    return gaps, first_without_previous


def _utc(ns: int) -> pd.Timestamp:
    return pd.Timestamp(int(ns), tz="UTC")


def look_ahead_difference(book: BookArrays, day: dt.datetime, row) -> str:
    """The features of `row` (stored: `ts` and the FEATURE_COLUMNS) that differ when computed from
    `book` cut right after its timestamp; empty when none does."""
    cut = int(np.searchsorted(book.ts, pd.Timestamp(row.ts).value, side="right"))
    if cut == 0 or book.ts[cut - 1] != pd.Timestamp(row.ts).value:
        return "no book snapshot at this time"
    recomputed = day_features(book.head(cut), day).iloc[-1]
    return ", ".join(c for c in FEATURE_COLUMNS if not _same(getattr(row, c), recomputed[c]))


def _same(stored: float | None, recomputed: float) -> bool:
    if stored is None or pd.isna(stored):
        return bool(pd.isna(recomputed))
    return bool(np.isclose(stored, recomputed, rtol=1e-9, atol=1e-12))
