"""Training data in PostgreSQL: reading book snapshots and mid prices, writing features and labels
of a UTC day to `training_features`, and the day's labelled rows to Parquet.

The Dagster assets in `winiswin_pipelines.defs.features` call these; the computations themselves
are the pure modules `winiswin_pipelines.features` and `winiswin_pipelines.labels`.
"""

import datetime as dt
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from sqlalchemy import Connection, text

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


def symbols_between(conn: Connection, table: str, column: str, start: dt.datetime, end: dt.datetime) -> list[str]:
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
        symbols = symbols_between(conn, "book_snapshots", "exchange_time", day, day + DAY)
    # PostgreSQL does most of the work (reading, upserting): two symbols at once keep two backends busy.
    with ThreadPoolExecutor(max_workers=_PARALLEL_SYMBOLS) as pool:
        results = list(pool.map(lambda symbol: write_symbol_features(manager, symbol, day), symbols))
    return FeatureDayResult(
        written=sum((r.written for r in results), EMPTY_RESULT),
        states={state: sum(r.states[state] for r in results) for state in BOOK_STATES},
        symbols=symbols,
    )


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
        symbols = symbols_between(conn, "training_features", "ts", day - DAY, day + DAY)
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


def look_ahead_difference(book: BookArrays, day: dt.datetime, row) -> str:
    """The features of `row` that differ when computed from the book cut right after its timestamp."""
    cut = int(np.searchsorted(book.ts, pd.Timestamp(row.ts).value, side="right"))
    if cut == 0 or book.ts[cut - 1] != pd.Timestamp(row.ts).value:
        return "no book snapshot at this time"
    recomputed = day_features(book.head(cut), day).iloc[-1]
    return ", ".join(c for c in FEATURE_COLUMNS if not _same(getattr(row, c), recomputed[c]))


def stored_features(conn: Connection, symbol: str, day: dt.datetime) -> pd.DataFrame:
    return pd.read_sql_query(
        text(f"SELECT ts, {', '.join(FEATURE_COLUMNS)} FROM training_features WHERE symbol = :symbol "
             "AND ts >= :start AND ts < :end AND features_computed_at IS NOT NULL ORDER BY ts"),
        conn, params={"symbol": symbol, "start": day, "end": day + DAY},
    )


def _same(stored: float | None, recomputed: float) -> bool:
    if stored is None or pd.isna(stored):
        return bool(pd.isna(recomputed))
    return bool(np.isclose(stored, recomputed, rtol=1e-9, atol=1e-12))


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
