"""Training data of a UTC day: features of the day's book snapshots and labels of the day's rows
written to `training_features`, the day's labelled rows to the Parquet dataset, and the look-ahead
check of the stored features.

The Dagster assets in `winiswin_pipelines.defs.features` call these, one day at a time, and add the
results of a range of days with `+`. The computations are the pure modules `features.days` and
`labels.days`; the SQL is `features.repository`.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from winiswin_pipelines.archive import read_history
from winiswin_pipelines.archive import repository as archive_repository
from winiswin_pipelines.archive.history import read_cold
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.bulk import EMPTY_RESULT, UpsertResult
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.factories import cold_store
from winiswin_pipelines.features import book_history, repository
from winiswin_pipelines.features.dataset import DATASET_COLUMNS, write_day_file
from winiswin_pipelines.features.days import (
    FEATURE_READ_WARMUP,
    FEATURES,
    SnapshotGap,
    day_features,
    day_gaps,
    look_ahead_difference,
)
from winiswin_pipelines.features.microstructure import BOOK_STATES, FEATURE_COLUMNS, BookArrays
from winiswin_pipelines.labels import BARRIERS
from winiswin_pipelines.labels.days import GAP, LABEL_COLUMNS, LABELS, LabelConfig, label_events

DAY = dt.timedelta(days=1)
_USABLE_STATES = ("ok", "locked")
_PARALLEL_SYMBOLS = 2


# --- features ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureResult:
    """Feature rows written, snapshots per book state (only "ok" and "locked" are written), symbols,
    and the gaps in the book that end on the days (after each, the windowed features are NaN until
    their windows are observed again)."""

    written: UpsertResult = EMPTY_RESULT
    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BOOK_STATES, 0))
    symbols: frozenset[str] = frozenset()
    gaps: tuple[SnapshotGap, ...] = ()

    def __add__(self, other: FeatureResult) -> FeatureResult:
        return FeatureResult(
            self.written + other.written,
            {state: self.states[state] + other.states[state] for state in BOOK_STATES},
            self.symbols | other.symbols,
            tuple(sorted(self.gaps + other.gaps, key=lambda gap: (gap.end, gap.symbol))),
        )


def read_day_book(manager: DatabaseManager, conn: Connection, cold: ColdStore, symbol: str, day: dt.datetime) -> BookArrays:
    """`symbol`'s snapshots of `day` and of the warm-up before it, hot and archived."""
    return book_history.read_book(manager, conn, cold, symbol, day - FEATURE_READ_WARMUP, day + DAY,
                                  levels=FEATURES.depth_levels)


def book_symbols(manager: DatabaseManager, cold: ColdStore, start: dt.datetime, end: dt.datetime) -> list[str]:
    """Symbols with book snapshots in [start, end), hot or archived."""
    with manager.engine.connect() as conn:
        hot = repository.book_symbols(conn, start, end)
    archived = read_cold(manager, cold, book_history.BOOK, start, end, columns=["symbol"])["symbol"].unique()
    return sorted(set(hot) | set(archived.to_pylist()))


def write_day_features(manager: DatabaseManager, day: dt.datetime, cold: ColdStore | None = None) -> FeatureResult:
    """Compute and upsert the features of every symbol's snapshots on `day`, symbols side by side.
    Archived snapshots are read in place from `cold` (default: the environment's cold store)."""
    cold = cold or cold_store()
    symbols = book_symbols(manager, cold, day, day + DAY)
    # PostgreSQL does most of the work (reading, upserting): two symbols at once keep two backends busy.
    with ThreadPoolExecutor(max_workers=_PARALLEL_SYMBOLS) as pool:
        return sum(pool.map(lambda symbol: _write_symbol_features(manager, cold, symbol, day), symbols), FeatureResult())


def _write_symbol_features(manager: DatabaseManager, cold: ColdStore, symbol: str, day: dt.datetime) -> FeatureResult:
    """Compute and upsert the features of `symbol`'s snapshots on `day` (one transaction)."""
    with manager.engine.connect() as conn:
        book = read_day_book(manager, conn, cold, symbol, day)
        gaps, first_without_previous = day_gaps(book, symbol, day)
        if first_without_previous is not None:  # the usable snapshot before it, if any, lies before the read
            previous = repository.last_usable_snapshot(conn, symbol, day - FEATURE_READ_WARMUP)
            if previous is not None:
                gaps.insert(0, SnapshotGap(symbol, pd.Timestamp(previous), first_without_previous))
        features = day_features(book, day).assign(symbol=symbol)
    states = features["book_state"].value_counts().reindex(BOOK_STATES, fill_value=0).astype(int).to_dict()
    usable = features[features["book_state"].isin(_USABLE_STATES)]
    changed, unchanged = _changes_only(manager, cold, usable, FEATURE_COLUMNS, day, day + DAY)
    written = repository.write_features(manager, changed) + unchanged
    return FeatureResult(written, states, frozenset([symbol]), tuple(gaps))


def _changes_only(
    manager: DatabaseManager, cold: ColdStore, frame: pd.DataFrame, columns: tuple[str, ...], start: dt.datetime,
    end: dt.datetime,
) -> tuple[pd.DataFrame, UpsertResult]:
    """The rows of `frame` whose `columns` differ from what the history reader returns for their key,
    and the others counted as unchanged. Only a range holding archived rows is compared: there, a
    recomputation that changes nothing writes nothing hot, so the archived day stays as it left."""
    last_day = (end - dt.timedelta(microseconds=1)).date()
    if frame.empty or not archive_repository.manifest_entries(
            manager, "training_features", start.date(), last_day, {archive_repository.ARCHIVED}):
        return frame, EMPTY_RESULT
    key = ["symbol", "ts"]
    seen = read_history("training_features", start, end, sorted(frame["symbol"].unique()), list(columns),
                        manager=manager, store=cold)
    seen["ts"] = seen["ts"].dt.as_unit("ns")
    pairs = frame[[*key, *columns]].assign(ts=frame["ts"].dt.as_unit("ns")).merge(
        seen[[*key, *columns]], on=key, how="left", suffixes=("", "_seen"), indicator=True)
    same = pairs["_merge"] == "both"
    for column in columns:
        new, old = pairs[column], pairs[f"{column}_seen"]
        same &= new.eq(old) | (new.isna() & old.isna())
    same = same.to_numpy()
    unchanged = int(same.sum())
    return frame[~same], UpsertResult(unchanged, 0, 0, unchanged, 0)


# --- labels -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelResult:
    """Label rows written, labels given per barrier (the day's, and the previous day's completed ones),
    rows blocked by a gap (the day's, and the previous day's pending ones found blocked), the day's
    rows still pending or skipped for good, and the previous day's rows completed."""

    written: UpsertResult
    labels: dict[str, int]
    pending: int
    skipped: int
    completed_previous_day: int
    gap: int = 0

    def __add__(self, next_day: LabelResult) -> LabelResult:
        """This day's result followed by the next day's: the pending rows are the next day's (it
        completes this day's)."""
        return LabelResult(
            self.written + next_day.written,
            {barrier: self.labels[barrier] + next_day.labels[barrier] for barrier in BARRIERS},
            next_day.pending,
            self.skipped + next_day.skipped,
            self.completed_previous_day + next_day.completed_previous_day,
            self.gap + next_day.gap,
        )


def write_day_labels(
    manager: DatabaseManager, day: dt.datetime, cold: ColdStore | None = None, config: LabelConfig = LABELS
) -> LabelResult:
    """Label every usable book snapshot of `day`, and the rows of the day before that were still
    waiting for this day's prices.

    The prices are the mids of `book_snapshots`, not stored features: a day's labels do not depend on
    which days' features exist, and they are upserted by (symbol, ts), the same rows the features have.
    Archived snapshots and rows are read in place from `cold`; labels of an archived row are written
    hot, where the archive's merge rule finds them.
    """
    cold = cold or cold_store()
    symbols = book_symbols(manager, cold, day - DAY, day + DAY)
    with manager.engine.connect() as conn:
        previous = [_day_labels(manager, conn, cold, config, s, day - DAY, only_unlabelled=True) for s in symbols]
        current = [_day_labels(manager, conn, cold, config, s, day) for s in symbols]
    if not symbols:
        return LabelResult(EMPTY_RESULT, dict.fromkeys(BARRIERS, 0), 0, 0, 0)
    rows = pd.concat([*previous, *current], ignore_index=True)
    changed, unchanged = _changes_only(manager, cold, rows, LABEL_COLUMNS, day - DAY, day + DAY)
    written = repository.write_labels(manager, changed) + unchanged
    today = rows[rows["ts"] >= day]
    skipped = today["skipped"].astype(bool)
    return LabelResult(
        written=written,
        labels={barrier: int((rows["label_barrier"] == barrier).sum()) for barrier in BARRIERS},
        pending=int((today["label"].isna() & ~skipped & (today["label_barrier"] != GAP)).sum()),
        skipped=int(skipped.sum()),
        completed_previous_day=sum(int(frame["label"].notna().sum()) for frame in previous),
        gap=int((rows["label_barrier"] == GAP).sum()),
    )


def _day_labels(
    manager: DatabaseManager, conn: Connection, cold: ColdStore, config: LabelConfig, symbol: str, day: dt.datetime,
    *, only_unlabelled: bool = False,
) -> pd.DataFrame:
    """Labels of `symbol`'s usable book snapshots on `day` (or only of its rows without a label that
    may still get one), NULL where still pending, skipped or blocked by a gap.

    The price path comes from a window fixed by the day (from `vol_warmup` before it to the first
    price after every path's end), so a row gets the same label whichever run computes it.
    """
    waiting = _unlabelled_times(manager, cold, symbol, day) if only_unlabelled else None
    if waiting is not None and not len(waiting):
        prices = book_history.NO_PRICES  # nothing to read
    else:
        reach = day + DAY + config.horizon + config.gap_tolerance  # every path ends by then, but across a gap
        prices = book_history.read_prices(manager, conn, cold, symbol, day - config.vol_warmup, reach)
    events = prices.index[(prices.index >= day) & (prices.index < day + DAY)]
    if waiting is not None:
        events = events.intersection(waiting)
    labels = label_events(prices["mid"], events, config, spread=prices["spread"])
    labels.insert(0, "symbol", symbol)
    return labels



def _unlabelled_times(manager: DatabaseManager, cold: ColdStore, symbol: str, day: dt.datetime) -> pd.DatetimeIndex:
    """Times of `symbol`'s rows on `day`, hot or archived, without a label that a later run may
    still give one (pending or skipped; not those blocked by a gap, which never get one)."""
    rows = read_history("training_features", day, day + DAY, [symbol], ["label", "label_barrier"],
                        manager=manager, store=cold)
    waiting = rows["label"].isna() & (rows["label_barrier"] != GAP)
    return pd.DatetimeIndex(rows.loc[waiting, "ts"]).as_unit("ns")


# --- training dataset -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetResult:
    """Files written (a day without labelled rows has none), their rows, the rows without a label, and
    the rows labelled net of costs with the sum of their round-trip costs (the cost model in use)."""

    files: tuple[Path, ...]
    rows: int
    pending: int
    net_of_costs: int = 0
    cost_sum: float = 0.0

    def __add__(self, other: DatasetResult) -> DatasetResult:
        return DatasetResult(self.files + other.files, self.rows + other.rows, self.pending + other.pending,
                             self.net_of_costs + other.net_of_costs, self.cost_sum + other.cost_sum)

    def cost_model(self) -> str:
        if not self.net_of_costs:
            return "labels gross of costs"
        mean = self.cost_sum / self.net_of_costs
        return (f"{self.net_of_costs:,} of {self.rows:,} rows labelled net of a round-trip cost "
                f"(mean {mean:.4%}; per row in label_cost)")


def write_dataset_day(
    manager: DatabaseManager, day: dt.datetime, root: Path, cold: ColdStore | None = None
) -> DatasetResult:
    """Write the labelled rows of `day`, hot or archived, to
    <root>/training_dataset/date=YYYY-MM-DD/part-0.parquet."""
    rows = read_history("training_features", day, day + DAY, columns=[*DATASET_COLUMNS, "features_computed_at"],
                        manager=manager, store=cold or cold_store())
    rows = rows[rows["features_computed_at"].notna()]
    labelled = rows["label"].notna()
    pending = int((~labelled & (rows["label_barrier"] != GAP)).sum())
    frame = rows.loc[labelled, list(DATASET_COLUMNS)].sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    path = write_day_file(frame, root, day)
    costs = frame["label_cost"].dropna()
    return DatasetResult((path,) if len(frame) else (), len(frame), pending, len(costs), float(costs.sum()))


# --- look-ahead check -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LookAheadResult:
    """Rows recomputed, the mismatches found (symbol, time: features), and the symbol-days not checked
    because their book snapshots are gone from both tiers (deleted)."""

    checked: int = 0
    mismatches: tuple[str, ...] = ()
    missing_book: tuple[str, ...] = ()

    def __add__(self, other: LookAheadResult) -> LookAheadResult:
        return LookAheadResult(
            self.checked + other.checked, self.mismatches + other.mismatches, self.missing_book + other.missing_book
        )


def check_day_look_ahead(manager: DatabaseManager, day: dt.datetime, samples: int, cold: ColdStore | None = None) -> LookAheadResult:
    """Recompute `samples` stored feature rows per symbol of `day`, hot or archived, from the book cut
    right after each row's timestamp: a feature that read later data cannot come out the same."""
    cold = cold or cold_store()
    stored = read_history("training_features", day, day + DAY, columns=["features_computed_at", *FEATURE_COLUMNS],
                          manager=manager, store=cold)
    stored = stored[stored["features_computed_at"].notna()]
    result = LookAheadResult()
    with manager.engine.connect() as conn:
        for symbol, rows in stored.groupby("symbol", sort=True):
            book = read_day_book(manager, conn, cold, str(symbol), day)
            if not (book.ts >= pd.Timestamp(day).value).any():
                result += LookAheadResult(missing_book=(f"{symbol} {day:%Y-%m-%d}",))
                continue
            picks = np.unique(np.linspace(0, len(rows) - 1, samples).round().astype(int))
            picked = list(rows[["ts", *FEATURE_COLUMNS]].iloc[picks].itertuples(index=False))
            mismatches = tuple(
                f"{symbol} {row.ts:%Y-%m-%d %H:%M:%S.%f}: {difference}"
                for row in picked if (difference := look_ahead_difference(book, day, row))
            )
            result += LookAheadResult(len(picked), mismatches)
    return result
