"""Training data: microstructure features and triple-barrier labels in `training_features`, and the
training dataset as Hive-partitioned Parquet. They replace the legacy Close > Open / trade-outcome labels.

Partitions are UTC days, the same as `book_snapshots`. Across day boundaries:
- the features of day D read D's snapshots plus the last `FEATURE_READ_WARMUP` of D-1, so the
  windowed features of D's first rows see the previous day's book;
- the labels of day D follow each event's mid-price path into D+1 when D+1's features exist; an
  event whose path is not complete yet stays unlabelled (label NULL, labels_computed_at set) and is
  labelled when D+1 is materialised, because every run re-evaluates the previous day's unlabelled rows;
- the dataset of D holds D's labelled rows, so it depends on the labels of D and of D+1.
"""

import datetime as dt
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from pydantic import Field
from sqlalchemy import Connection, text

from winiswin_pipelines import settings
from winiswin_pipelines.db.bulk import EMPTY_RESULT, UpsertResult, copy_upsert, dataframe_rows
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.features import (
    BOOK_STATES,
    FEATURE_COLUMNS,
    BookArrays,
    FeatureConfig,
    compute_features,
)
from winiswin_pipelines.labels import get_return_vol, get_triple_barrier_label
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines.sample_steps import SampleRunner, sample_step

training_partitions = dg.DailyPartitionsDefinition(start_date="2019-09-01", timezone="UTC")
DAY = dt.timedelta(days=1)
FEATURES = FeatureConfig()
# Extra history before a day so a window's start is observed even when snapshots are sparse.
FEATURE_READ_WARMUP = FEATURES.warmup + pd.Timedelta(minutes=5)
REQUIRED_FEATURES = (
    "mid", "microprice", "obi", "obi_depth", "spread_pct", "hour_sin", "hour_cos", "dow_sin", "dow_cos",
)
LABEL_COLUMNS = ("label", "label_ret", "label_t1", "label_barrier")
_USABLE_STATES = ("ok", "locked")
_WRITE_BATCH = 100_000
_PARALLEL_SYMBOLS = 2


@dataclass(frozen=True)
class LabelConfig:
    """Triple barriers on the mid price: the volatility target is the EWM std of horizon-long returns."""

    horizon: pd.Timedelta = pd.Timedelta(minutes=1)
    pt_sl: tuple[float, float] = (1.0, 1.0)
    min_ret: float = 0.0
    vol_span: int = 300
    vol_warmup: pd.Timedelta = pd.Timedelta(hours=1)
    # A path may end at most this long after t0 + horizon: beyond, the data has a gap and the event
    # gets no label (AFML's "first bar at or after t0 + horizon" would otherwise jump the gap).
    max_gap: pd.Timedelta = pd.Timedelta(minutes=1)


LABELS = LabelConfig()
# Every training-data asset: a UTC day per partition, a range of days in one run when backfilling.
_DAILY = {"group_name": "training_data", "partitions_def": training_partitions,
          "backfill_policy": dg.BackfillPolicy.single_run()}


def _daily_dep(asset, *, start_offset: int = 0, end_offset: int = 0) -> dg.AssetDep:
    """Depends on `asset`'s days from `start_offset` to `end_offset` around the partition's day."""
    return dg.AssetDep(asset, partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=start_offset, end_offset=end_offset, allow_nonexistent_upstream_partitions=True))


def partition_days(window: dg.TimeWindow) -> list[dt.datetime]:
    """Start of each UTC day of a partition window (one day, or a range in a single-run backfill)."""
    days, day = [], window.start
    while day < window.end:
        days.append(day)
        day += DAY
    return days


def _symbols(conn: Connection, table: str, column: str, start: dt.datetime, end: dt.datetime) -> list[str]:
    query = text(f'SELECT DISTINCT symbol FROM "{table}" WHERE "{column}" >= :start AND "{column}" < :end ORDER BY 1')
    return list(conn.execute(query, {"start": start, "end": end}).scalars())


def _upsert(manager: DatabaseManager, frame: pd.DataFrame, values: tuple[str, ...], computed_at: str) -> UpsertResult:
    """Upsert `values` and `computed_at` by (symbol, ts); a row whose values did not change keeps its time."""
    columns = ("symbol", "ts", *values, computed_at)
    values_changed = sql.SQL("({}) IS DISTINCT FROM ({}) OR t.{} IS NULL").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in values),
        sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in values),
        sql.Identifier(computed_at),
    )
    result = EMPTY_RESULT
    with manager.engine.begin() as conn:
        update_where = values_changed.as_string(conn.connection.driver_connection)
        for begin in range(0, len(frame), _WRITE_BATCH):
            rows = dataframe_rows(frame.iloc[begin : begin + _WRITE_BATCH], columns)
            result += copy_upsert(conn, "training_features", columns, rows, conflict_columns=("symbol", "ts"),
                                  update_columns=columns[2:], update_where=update_where)
    return result


# --- features ---------------------------------------------------------------------------------------

_PG_EPOCH_MICROS = 946_684_800_000_000
_SIDE_ARRAYS = ("bid_prices", "bid_sizes", "ask_prices", "ask_sizes")
_BEST_COLUMNS = ("best_bid", "best_bid_qty", "best_ask", "best_ask_qty")


def _book_query(levels: int) -> sql.Composed:
    """One row of arrays: exchange time and level 1 per snapshot, and an (n, levels) matrix per side
    array, padded with NaN where a snapshot holds fewer levels."""
    padded = f"(coalesce({{}}, '{{{{}}}}') || array_fill('NaN'::float8, ARRAY[{levels}]))[1:{levels}]"
    columns = ["exchange_time", *(f"coalesce({c}, 'NaN')" for c in _BEST_COLUMNS)]  # NULL: an empty side
    columns += [padded.format(array) for array in _SIDE_ARRAYS]
    aggregates = sql.SQL(", ").join(sql.SQL(f"array_send(array_agg({c}))") for c in columns)
    return sql.SQL(
        "SELECT {} FROM book_snapshots WHERE symbol = %s AND exchange_time >= %s AND exchange_time < %s"
    ).format(aggregates)


def read_book(conn: Connection, symbol: str, start: dt.datetime, end: dt.datetime) -> BookArrays:
    """The stored snapshots of `symbol` in [start, end) as BookArrays (level 1 from the best_* columns).

    The values are aggregated server-side into arrays sent as raw bytes (`array_send`), which numpy
    reads without a Python object per value: fetching the level arrays row by row as Python lists
    would cost more than everything else the features asset does.
    """
    levels = FEATURES.depth_levels
    with conn.connection.driver_connection.cursor(binary=True) as cur:
        times, *best_and_sides = cur.execute(_book_query(levels), (symbol, start, end)).fetchone()
    micros = _array_values(times, ">i8") + _PG_EPOCH_MICROS  # binary timestamptz: µs since 2000-01-01 UTC
    order = np.argsort(micros, kind="stable")  # one aggregation pass: every array has the same row order
    best = [_array_values(blob, ">f8") for blob in best_and_sides[:4]]
    sides = [_array_values(blob, ">f8").reshape(-1, levels) for blob in best_and_sides[4:]]
    for matrix, top in zip(sides, best, strict=True):
        matrix[:, 0] = top
    return BookArrays(micros[order] * 1000, *(matrix[order] for matrix in sides))


def _array_values(blob: bytes | None, element: str) -> np.ndarray:
    """A PostgreSQL array without NULLs in its binary form (`array_send`), flattened, as native numpy."""
    if blob is None:  # no rows
        return np.empty(0, dtype=element).astype(element[1:])
    dimensions, has_nulls = int.from_bytes(blob[0:4], "big"), int.from_bytes(blob[4:8], "big")
    if has_nulls:
        raise ValueError("book_snapshots holds a level array with NULL elements; expected numbers only")
    sizes = [int.from_bytes(blob[12 + 8 * d : 16 + 8 * d], "big") for d in range(dimensions)]
    count = int(np.prod(sizes))
    values = np.frombuffer(blob, dtype=[("size", ">i4"), ("value", element)], count=count, offset=12 + 8 * dimensions)
    return values["value"].astype(element[1:])


def read_day_book(conn: Connection, symbol: str, day: dt.datetime) -> BookArrays:
    """`symbol`'s snapshots of `day` and of the warm-up before it."""
    return read_book(conn, symbol, day - FEATURE_READ_WARMUP, day + DAY)


def day_features(book: BookArrays, day: dt.datetime) -> pd.DataFrame:
    """Features of the snapshots of `book` from `day` on, with their book state."""
    features = compute_features(book, FEATURES)
    return features[features["ts"] >= day].reset_index(drop=True)


@dataclass
class FeatureDayResult:
    written: UpsertResult
    states: dict[str, int]
    symbols: list[str]


def write_symbol_features(manager: DatabaseManager, symbol: str, day: dt.datetime) -> FeatureDayResult:
    """Compute and upsert the features of `symbol`'s snapshots on `day` (one transaction)."""
    with manager.engine.connect() as conn:
        features = day_features(read_day_book(conn, symbol, day), day).assign(symbol=symbol)
    states = features["book_state"].value_counts().reindex(BOOK_STATES, fill_value=0).astype(int).to_dict()
    usable = features[features["book_state"].isin(_USABLE_STATES)].assign(features_computed_at=dt.datetime.now(dt.UTC))
    return FeatureDayResult(_upsert(manager, usable, FEATURE_COLUMNS, "features_computed_at"), states, [symbol])


def write_day_features(manager: DatabaseManager, day: dt.datetime) -> FeatureDayResult:
    """Compute and upsert the features of every symbol's snapshots on `day`, symbols side by side."""
    with manager.engine.connect() as conn:
        symbols = _symbols(conn, "book_snapshots", "exchange_time", day, day + DAY)
    # PostgreSQL does most of the work (reading, upserting): two symbols at once keep two backends busy.
    with ThreadPoolExecutor(max_workers=_PARALLEL_SYMBOLS) as pool:
        results = list(pool.map(lambda symbol: write_symbol_features(manager, symbol, day), symbols))
    return FeatureDayResult(
        written=sum((r.written for r in results), EMPTY_RESULT),
        states={state: sum(r.states[state] for r in results) for state in BOOK_STATES},
        symbols=symbols,
    )


@dg.asset(
    **_DAILY,
    deps=[_daily_dep("book_snapshots", start_offset=-1)],
    kinds={"postgres", "numpy"},
    pool="pg_write",
    description="Order-book features per snapshot (obi, depth obi, spread, mid, micro-price, cyclic time, OFI, "
    "short return, realised volatility) from data at or before each snapshot, in training_features.",
)
def microstructure_features(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    manager = postgres.manager
    total, states, symbols = EMPTY_RESULT, dict.fromkeys(BOOK_STATES, 0), set()
    for day in partition_days(context.partition_time_window):
        result = write_day_features(manager, day)
        context.log.info(f"features {day:%Y-%m-%d}: {result.written}; book states {result.states}")
        total += result.written
        states = {state: states[state] + result.states[state] for state in BOOK_STATES}
        symbols.update(result.symbols)
    return dg.MaterializeResult(metadata={
        "rows": total.staged, "inserted": total.inserted, "updated": total.updated, "unchanged": total.unchanged,
        "skipped_crossed_books": states["crossed"], "skipped_one_sided_books": states["one_sided"],
        "locked_books": states["locked"],
        "symbols": ", ".join(sorted(symbols)) or "none",
        "windows": f"ofi {FEATURES.ofi_window}, return {FEATURES.return_horizon}, volatility {FEATURES.vol_window}",
    })


# --- labels -----------------------------------------------------------------------------------------


def read_mids(conn: Connection, symbol: str, start: dt.datetime, reach: dt.datetime) -> pd.Series:
    """Stored mids of `symbol` from `start` up to `reach`, and the first one after it within `max_gap`."""
    rows = conn.execute(
        text(
            "SELECT ts, mid FROM training_features WHERE symbol = :symbol AND mid IS NOT NULL AND ts >= :start "
            "AND ts <= coalesce((SELECT min(ts) FROM training_features WHERE symbol = :symbol AND ts >= :reach "
            "AND ts <= :reach + :max_gap AND mid IS NOT NULL), :reach) ORDER BY ts"
        ),
        {"symbol": symbol, "start": start, "reach": reach, "max_gap": LABELS.max_gap.to_pytimedelta()},
    ).all()
    times = pd.DatetimeIndex([r[0] for r in rows], tz="UTC") if rows else pd.DatetimeIndex([], tz="UTC")
    return pd.Series([r[1] for r in rows], index=times, dtype=float, name="mid")


def day_labels(conn: Connection, symbol: str, day: dt.datetime, *, only_unlabelled: bool = False) -> pd.DataFrame:
    """Labels of `symbol`'s rows on `day` (or only those without a label), NULL where still pending or skipped.

    The price path comes from a window fixed by the day (from `vol_warmup` before it), so a row gets
    the same label whichever run computes it.
    """
    mid = read_mids(conn, symbol, day - LABELS.vol_warmup, day + DAY + LABELS.horizon)
    in_day = mid.index[(mid.index >= day) & (mid.index < day + DAY)]
    if only_unlabelled:
        pending = conn.execute(
            text("SELECT ts FROM training_features WHERE symbol = :symbol AND ts >= :start AND ts < :end "
                 "AND label IS NULL"),
            {"symbol": symbol, "start": day, "end": day + DAY},
        ).scalars().all()
        in_day = in_day.intersection(pd.DatetimeIndex(pending, tz="UTC") if pending else in_day[:0])
    vol = get_return_vol(mid, LABELS.horizon, LABELS.vol_span)
    labels = get_triple_barrier_label(
        mid, vol, LABELS.horizon, pt_sl=LABELS.pt_sl, min_ret=LABELS.min_ret, events=in_day
    )
    across_gap = labels["t1"] > labels.index + LABELS.horizon + LABELS.max_gap
    labels = labels[~across_gap].reindex(in_day)
    return pd.DataFrame({
        "symbol": symbol,
        "ts": in_day,
        # Object dtype keeps Python ints and None (a float column would not fit the smallint column).
        "label": pd.Series([None if pd.isna(v) else int(v) for v in labels["label"]], dtype=object),
        "label_ret": labels["ret"].to_numpy(),
        "label_t1": labels["t1"].to_numpy(),
        "label_barrier": labels["barrier"].to_numpy(),
        # Not written: no volatility target yet (warm-up) or one not above min_ret, so never labelled.
        "skipped": ~(vol.reindex(in_day) > LABELS.min_ret).to_numpy(),
    })


@dataclass
class LabelDayResult:
    written: UpsertResult
    labels: dict[str, int]  # labels given in this run: the day's, and the previous day's completed ones
    pending: int
    skipped: int
    completed_previous_day: int


def write_day_labels(manager: DatabaseManager, day: dt.datetime) -> LabelDayResult:
    """Label every row of `day`, and the rows of the day before that were still waiting for this day's prices."""
    columns = ("symbol", "ts", *LABEL_COLUMNS, "labels_computed_at")
    with manager.engine.connect() as conn:
        symbols = _symbols(conn, "training_features", "ts", day - DAY, day + DAY)
        previous = [day_labels(conn, s, day - DAY, only_unlabelled=True) for s in symbols]
        current = [day_labels(conn, s, day) for s in symbols]
    now = dt.datetime.now(dt.UTC)
    previous_rows = pd.concat(previous, ignore_index=True) if previous else pd.DataFrame(columns=[*columns, "skipped"])
    rows = pd.concat([previous_rows, *current], ignore_index=True).assign(labels_computed_at=now)
    written = _upsert(manager, rows, LABEL_COLUMNS, "labels_computed_at")
    today = rows[rows["ts"] >= day]
    return LabelDayResult(
        written=written,
        labels={b: int((rows["label_barrier"] == b).sum()) for b in ("upper", "lower", "vertical")},
        pending=int((today["label"].isna() & ~today["skipped"].astype(bool)).sum()),
        skipped=int(today["skipped"].astype(bool).sum()),
        completed_previous_day=int(previous_rows["label"].notna().sum()),
    )


@dg.asset(
    **_DAILY,
    deps=[_daily_dep("microstructure_features", start_offset=-1)],
    kinds={"postgres", "numpy"},
    pool="pg_write",
    description=f"Triple-barrier labels (AFML ch. 3) on the mid price: barriers at +/-{LABELS.pt_sl} x the EWM "
    f"std of {LABELS.horizon} returns, vertical barrier {LABELS.horizon}; completes the previous day's pending labels.",
)
def triple_barrier_labels(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    counts, pending, skipped, completed = dict.fromkeys(("upper", "lower", "vertical"), 0), 0, 0, 0
    total = EMPTY_RESULT
    for day in partition_days(context.partition_time_window):
        result = write_day_labels(postgres.manager, day)
        context.log.info(f"labels {day:%Y-%m-%d}: {result.labels}, {result.pending} pending, "
                         f"{result.completed_previous_day} of the previous day completed")
        counts = {k: counts[k] + result.labels[k] for k in counts}
        completed += result.completed_previous_day
        skipped += result.skipped
        total += result.written
        # A day's pending rows are completed by the next day of the same run.
        pending = result.pending
    labelled = sum(counts.values())
    return dg.MaterializeResult(metadata={
        "labelled": labelled,
        "labels": ", ".join(f"{n:,} {barrier}" for barrier, n in counts.items()),
        "label_distribution": dg.MetadataValue.md(_distribution_table(counts)),
        "pending_next_day": pending,
        "skipped_without_vol_target": skipped,
        "completed_previous_day": completed,
        "rows": total.staged, "updated": total.updated + total.inserted, "unchanged": total.unchanged,
        "horizon": str(LABELS.horizon), "pt_sl": str(LABELS.pt_sl), "min_ret": LABELS.min_ret,
    })


def _distribution_table(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    names = {"upper": "1 (upper)", "lower": "-1 (lower)", "vertical": "0 (vertical)"}
    lines = ["| label | rows | share |", "|---|---:|---:|"]
    lines += [f"| {names[k]} | {v:,} | {v / total:.1%} |" for k, v in counts.items()]
    return "\n".join(lines)


# --- training dataset -------------------------------------------------------------------------------


class TrainingDatasetConfig(dg.Config):
    output_dir: str = Field(default="", description="dataset root; empty: <state dir>/datasets")


def dataset_root(config: TrainingDatasetConfig) -> Path:
    return Path(config.output_dir) if config.output_dir else settings.state_dir() / "datasets"


def write_dataset_day(manager: DatabaseManager, day: dt.datetime, root: Path) -> tuple[Path, int, int]:
    """Write the labelled rows of `day` to <root>/training_dataset/date=YYYY-MM-DD/part-0.parquet.

    Returns the file, the rows written and the rows without a label (pending or skipped); a day
    without labelled rows has no file.
    """
    columns = ("symbol", "ts", *FEATURE_COLUMNS, *LABEL_COLUMNS)
    with manager.engine.connect() as conn:
        frame = pd.read_sql_query(
            text(f"SELECT {', '.join(columns)} FROM training_features WHERE ts >= :start AND ts < :end "
                 "AND label IS NOT NULL ORDER BY symbol, ts"),
            conn, params={"start": day, "end": day + DAY},
        )
        pending = conn.execute(
            text("SELECT count(*) FROM training_features WHERE ts >= :start AND ts < :end AND label IS NULL"),
            {"start": day, "end": day + DAY},
        ).scalar_one()
    frame = frame.astype({"label": "int8"})
    folder = root / "training_dataset" / f"date={day:%Y-%m-%d}"
    target = folder / "part-0.parquet"
    if frame.empty:
        target.unlink(missing_ok=True)  # nothing labelled that day (any more): no file
        return target, 0, pending
    folder.mkdir(parents=True, exist_ok=True)
    # Written next to the target and renamed: a reader never sees half a file.
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target, len(frame), pending


@dg.asset(
    **_DAILY,
    deps=[_daily_dep(triple_barrier_labels, end_offset=1)],
    kinds={"parquet", "postgres"},
    description="Features joined with their labels, one Parquet file per UTC day, Hive-partitioned by date "
    "(only labelled rows; rows waiting for the next day's prices come when it is materialised).",
)
def training_dataset(
    context: dg.AssetExecutionContext, config: TrainingDatasetConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    root = dataset_root(config)
    files, rows, pending = [], 0, 0
    for day in partition_days(context.partition_time_window):
        path, written, waiting = write_dataset_day(postgres.manager, day, root)
        context.log.info(f"dataset {day:%Y-%m-%d}: {written} rows -> {path} ({waiting} waiting for labels)")
        files += [path] if written else []
        rows += written
        pending += waiting
    return dg.MaterializeResult(metadata={
        "rows": rows, "rows_waiting_for_labels": pending,
        "dataset": dg.MetadataValue.path(str(root / "training_dataset")),
        "files": dg.MetadataValue.md("\n".join(f"- `{p.relative_to(root)}`" for p in files)),
    })


# --- asset checks -----------------------------------------------------------------------------------


def _check_window(context: dg.AssetCheckExecutionContext) -> dg.TimeWindow:
    return context.op_execution_context.partition_time_window


@dg.asset_check(asset=microstructure_features, partitions_def=training_partitions, blocking=True)
def features_required_not_null(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult:
    """Every feature row of the days has mid, micro-price, obi, depth obi, spread and the cyclic time."""
    window = _check_window(context)
    nulls = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL)" for c in REQUIRED_FEATURES)
    with postgres.manager.engine.connect() as conn:
        total, *counts = conn.execute(
            text(f"SELECT count(*), {nulls} FROM training_features WHERE ts >= :start AND ts < :end "
                 "AND features_computed_at IS NOT NULL"),
            {"start": window.start, "end": window.end},
        ).one()
    null_counts = {c: n for c, n in zip(REQUIRED_FEATURES, counts, strict=True) if n}
    return dg.AssetCheckResult(passed=not null_counts, metadata={"rows": total, "null_counts": null_counts or "none"})


@dg.asset_check(asset=microstructure_features, partitions_def=training_partitions, blocking=True)
def features_in_range(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """obi and depth obi lie in [-1, 1]; spread_pct >= 0."""
    window = _check_window(context)
    with postgres.manager.engine.connect() as conn:
        total, bad_obi, bad_spread = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE obi NOT BETWEEN -1 AND 1 OR obi_depth NOT BETWEEN -1 AND 1), "
                 "count(*) FILTER (WHERE spread_pct < 0) FROM training_features WHERE ts >= :start AND ts < :end"),
            {"start": window.start, "end": window.end},
        ).one()
    return dg.AssetCheckResult(
        passed=bad_obi == 0 and bad_spread == 0,
        metadata={"rows": total, "obi_out_of_range": bad_obi, "negative_spread": bad_spread},
    )


_LOOK_AHEAD_SAMPLES = 16


@dg.asset_check(asset=microstructure_features, partitions_def=training_partitions, blocking=True)
def features_no_look_ahead(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """Stored features equal features recomputed from the snapshots at or before their timestamp only.

    At sampled rows of each day the book is cut right after the row's timestamp and the features are
    computed again; a feature that read later data cannot come out the same.
    """
    window = _check_window(context)
    checked, mismatches, archived = 0, [], []
    with postgres.manager.engine.connect() as conn:
        for day in partition_days(window):
            for symbol in _symbols(conn, "training_features", "ts", day, day + DAY):
                stored = _stored_features(conn, symbol, day)
                book = read_day_book(conn, symbol, day)
                if stored.empty or not (book.ts >= pd.Timestamp(day).value).any():
                    archived += [f"{symbol} {day:%Y-%m-%d}"] if not stored.empty else []
                    continue  # no snapshots left to recompute from (the day's book was archived)
                picks = np.unique(np.linspace(0, len(stored) - 1, _LOOK_AHEAD_SAMPLES).round().astype(int))
                for row in stored.iloc[picks].itertuples(index=False):
                    checked += 1
                    if difference := _look_ahead_difference(book, day, row):
                        mismatches.append(f"{symbol} {row.ts:%Y-%m-%d %H:%M:%S.%f}: {difference}")
    return dg.AssetCheckResult(
        passed=not mismatches,
        metadata={"rows_checked": checked, "mismatches": len(mismatches),
                  "first_mismatches": dg.MetadataValue.md("\n".join(f"- {m}" for m in mismatches[:10]) or "none"),
                  "not_checked_book_archived": ", ".join(archived) or "none"},
    )


def _look_ahead_difference(book: BookArrays, day: dt.datetime, row) -> str:
    """The features of `row` that differ when computed from the book cut right after its timestamp."""
    cut = int(np.searchsorted(book.ts, pd.Timestamp(row.ts).value, side="right"))
    if cut == 0 or book.ts[cut - 1] != pd.Timestamp(row.ts).value:
        return "no book snapshot at this time"
    recomputed = day_features(book.head(cut), day).iloc[-1]
    return ", ".join(c for c in FEATURE_COLUMNS if not _same(getattr(row, c), recomputed[c]))


def _stored_features(conn: Connection, symbol: str, day: dt.datetime) -> pd.DataFrame:
    return pd.read_sql_query(
        text(f"SELECT ts, {', '.join(FEATURE_COLUMNS)} FROM training_features WHERE symbol = :symbol "
             "AND ts >= :start AND ts < :end AND features_computed_at IS NOT NULL ORDER BY ts"),
        conn, params={"symbol": symbol, "start": day, "end": day + DAY},
    )


def _same(stored: float | None, recomputed: float) -> bool:
    if stored is None or pd.isna(stored):
        return bool(pd.isna(recomputed))
    return bool(np.isclose(stored, recomputed, rtol=1e-9, atol=1e-12))


@dg.asset_check(asset=triple_barrier_labels, partitions_def=training_partitions, blocking=True)
def labels_consistent(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """Labels match their barrier, end at or after their event, and their distribution is reported."""
    window = _check_window(context)
    with postgres.manager.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(label_barrier, 'pending'), count(*), count(*) FILTER (WHERE NOT ("
                "(label_barrier = 'upper' AND label = 1) OR (label_barrier = 'lower' AND label = -1) OR "
                "(label_barrier = 'vertical' AND label = 0) OR (label_barrier IS NULL AND label IS NULL)) "
                "OR label_t1 < ts) FROM training_features WHERE ts >= :start AND ts < :end "
                "AND features_computed_at IS NOT NULL GROUP BY 1"
            ),
            {"start": window.start, "end": window.end},
        ).all()
    counts = {barrier: n for barrier, n, _ in rows}
    inconsistent = sum(bad for _, _, bad in rows)
    distribution = {b: counts.get(b, 0) for b in ("upper", "lower", "vertical")}
    return dg.AssetCheckResult(
        passed=inconsistent == 0,
        metadata={"label_distribution": dg.MetadataValue.md(_distribution_table(distribution)),
                  "pending": counts.get("pending", 0), "inconsistent": inconsistent},
    )


# --- jobs, schedules, definitions -------------------------------------------------------------------

training_data_job = dg.define_asset_job(
    "training_data_job",
    selection=dg.AssetSelection.assets(microstructure_features, triple_barrier_labels, training_dataset),
    description="Features, labels and the training dataset for a range of UTC days, in one run.",
)


@dg.schedule(job=training_data_job, cron_schedule="0 1 * * *", execution_timezone="UTC")
def training_data_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """At 01:00 UTC, after the market-data import (00:20): yesterday, and the day before, whose pending
    labels need yesterday's prices and whose dataset file then gains them."""
    yesterday = (context.scheduled_execution_time.astimezone(dt.UTC) - DAY).date()
    first = yesterday - dt.timedelta(days=1)
    return dg.RunRequest(
        run_key=f"training-data-{first}..{yesterday}",
        tags={"dagster/asset_partition_range_start": f"{first}", "dagster/asset_partition_range_end": f"{yesterday}"},
    )


defs = dg.Definitions(
    assets=[microstructure_features, triple_barrier_labels, training_dataset],
    asset_checks=[features_required_not_null, features_in_range, features_no_look_ahead, labels_consistent],
    jobs=[training_data_job],
    schedules=[training_data_daily],
)


# --- make run ---------------------------------------------------------------------------------------


def book_day_ranges(manager: DatabaseManager) -> list[tuple[dt.date, dt.date]]:
    """The runs of consecutive UTC days that hold book snapshots."""
    with manager.engine.connect() as conn:
        days = conn.execute(
            text("SELECT DISTINCT (exchange_time AT TIME ZONE 'UTC')::date FROM book_snapshots ORDER BY 1")
        ).scalars().all()
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in days:
        if ranges and day - ranges[-1][1] == DAY:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def range_tags(first: dt.date, last: dt.date) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": f"{first}", "dagster/asset_partition_range_end": f"{last}"}


def _materialize_sample_days(runner: SampleRunner, assets: list, describe) -> list[str]:
    lines = []
    for first, last in book_day_ranges(runner.manager):
        result = runner.materialize(assets, tags=range_tags(first, last))
        metadata = result.asset_materializations_for_node(assets[0].key.to_user_string())[0].metadata
        checks = result.get_asset_check_evaluations()
        failed = [c.check_name for c in checks if not c.passed]
        verdict = f"checks: {len(checks) - len(failed)} passed" + (f", FAILED {', '.join(failed)}" if failed else "")
        lines.append(f"{first}..{last}: {describe(metadata)}" + (f"; {verdict}" if checks else ""))
    return lines or ["no book snapshots stored: nothing to do"]


@sample_step(20, "Microstructure features for the days with book snapshots")
def sample_features(runner: SampleRunner) -> list[str]:
    return _materialize_sample_days(
        runner, [microstructure_features, features_required_not_null, features_in_range, features_no_look_ahead],
        lambda m: f"{m['rows'].value:,} feature rows ({m['inserted'].value:,} new), {m['symbols'].value}; "
        f"{m['skipped_crossed_books'].value} crossed and {m['skipped_one_sided_books'].value} one-sided books skipped",
    )


@sample_step(30, "Triple-barrier labels for the same days")
def sample_labels(runner: SampleRunner) -> list[str]:
    return _materialize_sample_days(
        runner, [triple_barrier_labels, labels_consistent],
        lambda m: f"{m['labelled'].value:,} labelled ({m['labels'].value}), "
        f"{m['pending_next_day'].value} pending the next day",
    )


@sample_step(40, "Training dataset (Parquet, Hive-partitioned by date)")
def sample_dataset(runner: SampleRunner) -> list[str]:
    return _materialize_sample_days(
        runner, [training_dataset],
        lambda m: f"{m['rows'].value:,} rows to {m['dataset'].value}",
    )
