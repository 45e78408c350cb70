"""One history reader: hot rows from PostgreSQL and archived rows from cold storage, as one frame.

Archived objects are read in place, not downloaded: only the days the manifest lists for the range
are opened, and inside each object pyarrow reads the footer and only the row groups whose min/max
statistics can hold the time range and the symbols (each object is ordered by symbol, then time),
which on S3 / R2 are ranged GETs. Hot and cold rows share the table's Arrow schema, so the frame
has the same columns and dtypes whichever tier a row came from.

A key present in both tiers (rows written again after archival, e.g. labels of an archived day) is
returned once, merged by the archive's rule: the hot value wins, and a column the hot row holds as
NULL takes the archived value. Restore and the archiver's merge-back apply the same rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from winiswin_pipelines.archive import repository
from winiswin_pipelines.archive.tables import ArchivedTable, archived_table
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.factories import cold_store, database_manager


def _utc(value: dt.datetime | dt.date, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time(), dt.UTC)
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value!r}")
    return value.astimezone(dt.UTC)


def _time_range(start: dt.datetime | dt.date, end: dt.datetime | dt.date) -> tuple[dt.datetime, dt.datetime]:
    start, end = _utc(start, "start"), _utc(end, "end")
    if end <= start:
        raise ValueError(f"empty time range: start {start} is not before end {end}")
    return start, end


def _with_key(table: ArchivedTable, columns: Sequence[str] | None) -> list[str] | None:
    """The columns to read: those asked for plus the key the tiers are merged on."""
    if columns is None:
        return None
    unknown = sorted(set(columns) - set(table.columns))
    if unknown:
        raise ValueError(f"{table.name} has no column {', '.join(unknown)}")
    return list(dict.fromkeys([*table.natural_key, table.day_column, *columns]))


def archived_days(manager: DatabaseManager, table: str, start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """The days of `table` in [start, end) whose rows are in cold storage."""
    start, end = _time_range(start, end)
    last_day = (end - dt.timedelta(microseconds=1)).date()
    return [entry.day for entry in repository.manifest_entries(manager, table, start.date(), last_day, {repository.ARCHIVED})]


def read_cold(
    manager: DatabaseManager, store: ColdStore, table: ArchivedTable, start: dt.datetime, end: dt.datetime,
    symbols: Sequence[str] | None = None, columns: Sequence[str] | None = None,
) -> pa.Table:
    """The archived rows of `table` in [start, end) for `symbols` (all when None), read in place."""
    last_day = (end - dt.timedelta(microseconds=1)).date()
    entries = repository.manifest_entries(manager, table.name, start.date(), last_day, {repository.ARCHIVED})
    keys = [part["key"] for entry in entries for part in entry.parts]
    if not keys:
        empty = table.schema.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    column = ds.field(table.day_column)
    timestamp = pa.timestamp("us", "UTC")
    condition = (column >= pa.scalar(start, timestamp)) & (column < pa.scalar(end, timestamp))
    if symbols is not None:
        condition &= ds.field("symbol").isin(list(symbols))
    filesystem, paths = store.arrow_paths(keys)
    dataset = ds.dataset(paths, schema=table.schema, format="parquet", filesystem=filesystem)
    return dataset.to_table(columns=list(columns) if columns is not None else None, filter=condition)


def read_archived(
    table: str,
    start: dt.datetime | dt.date,
    end: dt.datetime | dt.date,
    columns: Sequence[str] | None = None,
    *,
    manager: DatabaseManager | None = None,
    store: ColdStore | None = None,
) -> pd.DataFrame:
    """Only the archived rows of `table` whose day column lies in [start, end), only `columns`
    (all when None): what left PostgreSQL, read from cold storage."""
    spec = archived_table(table)
    start, end = _time_range(start, end)
    return read_cold(manager or database_manager(), store or cold_store(), spec, start, end, None, columns).to_pandas()


def read_history(
    table: str,
    start: dt.datetime | dt.date,
    end: dt.datetime | dt.date,
    symbols: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    *,
    manager: DatabaseManager | None = None,
    store: ColdStore | None = None,
) -> pd.DataFrame:
    """Rows of `table` whose day column lies in [start, end) for `symbols` (all when None), hot and
    archived together, ordered by time then symbol; only `columns` (all when None) and the key."""
    spec = archived_table(table)
    start, end = _time_range(start, end)
    manager = manager or database_manager()
    read = _with_key(spec, columns)
    hot = repository.hot_rows(manager, spec, start, end, symbols, read)
    cold = read_cold(manager, store or cold_store(), spec, start, end, symbols, read)
    frame = merge_tiers(hot.to_pandas(), cold.to_pandas(), spec.natural_key)
    order = [spec.day_column] + (["symbol"] if "symbol" in frame.columns else [])
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def merge_tiers(hot: pd.DataFrame, cold: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Hot and cold rows with each key once: a key in both tiers keeps its hot values and takes the
    cold value of every column the hot row holds as NULL."""
    if hot.empty or cold.empty:
        return cold if hot.empty else hot
    rows = pd.concat([hot, cold], ignore_index=True)
    in_both = rows.duplicated(key, keep=False)
    if not in_both.any():
        return rows
    # Hot rows come first, and `first` takes each column's first non-null value.
    merged = rows[in_both].groupby(key, sort=False, dropna=False).first().reset_index()
    return pd.concat([rows[~in_both], merged[rows.columns]], ignore_index=True)
