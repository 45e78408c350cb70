"""Training data in PostgreSQL: every statement on `book_snapshots` and `training_features` that the
features, labels, dataset and their checks run.

A function taking a `DatabaseManager` owns its transaction; one taking a `Connection` runs inside
the caller's.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from psycopg import sql
from sqlalchemy import Connection, text

from winiswin_pipelines.db.bulk import UpsertResult, upsert_frame
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.features.microstructure import FEATURE_COLUMNS, BookArrays, usable_mid
from winiswin_pipelines.labels.days import GAP, LABEL_COLUMNS

# The features every usable book has (the flow features need a window of history first).
REQUIRED_FEATURES = (
    "mid", "microprice", "obi", "obi_depth", "spread_pct", "hour_sin", "hour_cos", "dow_sin", "dow_cos",
)
_WRITE_BATCH = 100_000


# --- book_snapshots ---------------------------------------------------------------------------------


def book_symbols(conn: Connection, start: dt.datetime, end: dt.datetime) -> list[str]:
    """Symbols with book snapshots in [start, end)."""
    return _symbols(conn, "book_snapshots", "exchange_time", start, end)


_PG_EPOCH_MICROS = 946_684_800_000_000
_SIDE_ARRAYS = ("bid_prices", "bid_sizes", "ask_prices", "ask_sizes")
_BEST_COLUMNS = ("best_bid", "best_bid_qty", "best_ask", "best_ask_qty")


def read_book(conn: Connection, symbol: str, start: dt.datetime, end: dt.datetime, *, levels: int) -> BookArrays:
    """The stored snapshots of `symbol` in [start, end) as BookArrays of `levels` levels (level 1
    from the best_* columns).

    The values are aggregated server-side into arrays sent as raw bytes (`array_send`), which numpy
    reads without a Python object per value: fetching the level arrays row by row as Python lists
    would cost more than everything else the features asset does.
    """
    with conn.connection.driver_connection.cursor(binary=True) as cur:
        times, *best_and_sides = cur.execute(_book_query(levels), (symbol, start, end)).fetchone()
    micros = _array_values(times, ">i8") + _PG_EPOCH_MICROS  # binary timestamptz: µs since 2000-01-01 UTC
    order = np.argsort(micros, kind="stable")  # one aggregation pass: every array has the same row order
    best = [_array_values(blob, ">f8") for blob in best_and_sides[:4]]
    sides = [_array_values(blob, ">f8").reshape(-1, levels) for blob in best_and_sides[4:]]
    for matrix, top in zip(sides, best, strict=True):
        matrix[:, 0] = top
    return BookArrays(micros[order] * 1000, *(matrix[order] for matrix in sides))


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


# A usable book (not crossed, both sides priced), as `microstructure` decides it; NaN is greater
# than every number in PostgreSQL, so it is excluded explicitly.
_USABLE_BOOK = "best_bid > 0 AND best_ask >= best_bid AND best_bid <> 'NaN' AND best_ask <> 'NaN'"


def read_book_prices(conn: Connection, symbol: str, start: dt.datetime, reach: dt.datetime) -> pd.DataFrame:
    """Mid and relative spread of `symbol`'s usable book snapshots from `start` up to `reach`
    (inclusive), and of the first usable one after `reach` however late (it shows whether the prices
    go on after a gap): the labels' price path (the same numbers as the `mid` feature) and costs."""
    query = (
        "SELECT array_send(array_agg(exchange_time)), array_send(array_agg(coalesce(best_bid, 'NaN'))), "
        "array_send(array_agg(coalesce(best_ask, 'NaN'))) FROM book_snapshots WHERE symbol = %(symbol)s "
        "AND exchange_time >= %(start)s AND exchange_time <= coalesce((SELECT min(exchange_time) FROM "
        f"book_snapshots WHERE symbol = %(symbol)s AND exchange_time > %(reach)s AND {_USABLE_BOOK}), %(reach)s)"
    )
    with conn.connection.driver_connection.cursor(binary=True) as cur:
        times, bids, asks = cur.execute(query, {"symbol": symbol, "start": start, "reach": reach}).fetchone()
    micros = _array_values(times, ">i8") + _PG_EPOCH_MICROS
    order = np.argsort(micros, kind="stable")
    return book_prices(micros[order] * 1000, _array_values(bids, ">f8")[order], _array_values(asks, ">f8")[order])


def book_prices(nanoseconds: np.ndarray, bid: np.ndarray, ask: np.ndarray) -> pd.DataFrame:
    """`mid` and relative `spread` of the usable books among these, indexed by their UTC times."""
    mid = usable_mid(bid, ask)
    usable = ~np.isnan(mid)
    index = pd.DatetimeIndex(nanoseconds[usable].view("M8[ns]")).tz_localize("UTC")
    return pd.DataFrame({"mid": mid[usable], "spread": (ask[usable] - bid[usable]) / mid[usable]}, index=index)


def last_usable_snapshot(conn: Connection, symbol: str, before: dt.datetime) -> dt.datetime | None:
    """Exchange time of `symbol`'s last usable book snapshot before `before`, None if there is none."""
    return conn.execute(
        text(f"SELECT max(exchange_time) FROM book_snapshots WHERE symbol = :symbol AND exchange_time < :before "
             f"AND {_USABLE_BOOK}"),
        {"symbol": symbol, "before": before},
    ).scalar_one()


def _symbols(conn: Connection, table: str, column: str, start: dt.datetime, end: dt.datetime) -> list[str]:
    query = text(f'SELECT DISTINCT symbol FROM "{table}" WHERE "{column}" >= :start AND "{column}" < :end ORDER BY 1')
    return list(conn.execute(query, {"start": start, "end": end}).scalars())


# --- training_features: writes ------------------------------------------------------------------------


def write_features(manager: DatabaseManager, frame: pd.DataFrame) -> UpsertResult:
    """Upsert the FEATURE_COLUMNS of `frame`'s (symbol, ts) rows, in one transaction."""
    return _upsert(manager, frame, FEATURE_COLUMNS, "features_computed_at")


def write_labels(manager: DatabaseManager, frame: pd.DataFrame) -> UpsertResult:
    """Upsert the LABEL_COLUMNS of `frame`'s (symbol, ts) rows, in one transaction."""
    return _upsert(manager, frame, LABEL_COLUMNS, "labels_computed_at")


def _upsert(manager: DatabaseManager, frame: pd.DataFrame, values: tuple[str, ...], computed_at: str) -> UpsertResult:
    """Upsert `values` and `computed_at` (now) by (symbol, ts); a row whose values did not change keeps its time."""
    columns = ("symbol", "ts", *values, computed_at)
    values_changed = sql.SQL("({}) IS DISTINCT FROM ({}) OR t.{} IS NULL").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in values),
        sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in values),
        sql.Identifier(computed_at),
    )
    frame = frame.assign(**{computed_at: dt.datetime.now(dt.UTC)})
    with manager.engine.begin() as conn:
        return upsert_frame(
            conn, "training_features", columns, frame, conflict_columns=("symbol", "ts"), batch_size=_WRITE_BATCH,
            update_columns=columns[2:], update_where=values_changed.as_string(conn.connection.driver_connection),
        )


# --- the asset checks' counts -------------------------------------------------------------------------


def count_missing_required(manager: DatabaseManager, start: dt.datetime, end: dt.datetime) -> tuple[int, dict[str, int]]:
    """(rows with features in [start, end), NULLs per REQUIRED_FEATURES column that has any)."""
    nulls = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL)" for c in REQUIRED_FEATURES)
    with manager.engine.connect() as conn:
        total, *counts = conn.execute(
            text(f"SELECT count(*), {nulls} FROM training_features WHERE ts >= :start AND ts < :end "
                 "AND features_computed_at IS NOT NULL"),
            {"start": start, "end": end},
        ).one()
    return total, {c: n for c, n in zip(REQUIRED_FEATURES, counts, strict=True) if n}


def count_out_of_range(manager: DatabaseManager, start: dt.datetime, end: dt.datetime) -> tuple[int, int, int]:
    """(rows in [start, end), rows with obi or obi_depth outside [-1, 1], rows with spread_pct < 0)."""
    with manager.engine.connect() as conn:
        total, bad_obi, bad_spread = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE obi NOT BETWEEN -1 AND 1 OR obi_depth NOT BETWEEN -1 AND 1), "
                 "count(*) FILTER (WHERE spread_pct < 0) FROM training_features WHERE ts >= :start AND ts < :end"),
            {"start": start, "end": end},
        ).one()
    return total, bad_obi, bad_spread


def count_labels(manager: DatabaseManager, start: dt.datetime, end: dt.datetime) -> tuple[dict[str, int], int]:
    """(rows with features in [start, end) per label barrier, GAP for those blocked by a gap and
    "pending" for none; rows whose label contradicts its barrier or whose path ends before its event)."""
    with manager.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(label_barrier, 'pending'), count(*), count(*) FILTER (WHERE NOT ("
                "(label_barrier = 'upper' AND label = 1) OR (label_barrier = 'lower' AND label = -1) OR "
                "(label_barrier = 'vertical' AND label = 0) OR (label_barrier IS NULL AND label IS NULL) OR "
                "(label_barrier = :gap AND label IS NULL AND label_ret IS NULL AND label_t1 IS NULL)) "
                "OR label_t1 < ts) FROM training_features WHERE ts >= :start AND ts < :end "
                "AND features_computed_at IS NOT NULL GROUP BY 1"
            ),
            {"start": start, "end": end, "gap": GAP},
        ).all()
    return {barrier: n for barrier, n, _ in rows}, sum(bad for _, _, bad in rows)
