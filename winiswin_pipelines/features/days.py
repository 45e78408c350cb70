"""The pipeline's features of a UTC day, pure: its settings, the day's rows computed from a book read
with warm-up, and the look-ahead comparison of stored rows with a recomputation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from winiswin_pipelines.features.microstructure import FEATURE_COLUMNS, BookArrays, FeatureConfig, compute_features

FEATURES = FeatureConfig()


# Extra history before a day so a window's start is observed even when snapshots are sparse.
FEATURE_READ_WARMUP = FEATURES.warmup + pd.Timedelta(minutes=5)


def day_features(book: BookArrays, day: dt.datetime) -> pd.DataFrame:
    """Features of the snapshots of `book` from `day` on, with their book state."""
    features = compute_features(book, FEATURES)
    return features[features["ts"] >= day].reset_index(drop=True)


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
