"""One history reader: hot rows from PostgreSQL and archived rows from cold storage, as one frame.

Only the archived days overlapping the range are opened (the manifest says which objects hold
them), and inside each file pyarrow skips the row groups whose min/max statistics fall outside the
time range or the symbols. Hot and cold rows share the table's Arrow schema, so the frame has the
same columns and dtypes whichever tier a row came from; a key present in both tiers (rows written
again after archival) is returned once, the hot version winning.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from winiswin_pipelines.archive import repository
from winiswin_pipelines.archive.restore import download_verified
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


def _cold(
    manager: DatabaseManager, store: ColdStore, table: ArchivedTable, start, end, symbols, folder: Path,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    last_day = (end - dt.timedelta(microseconds=1)).date()
    entries = repository.manifest_entries(manager, table.name, start.date(), last_day, {repository.ARCHIVED})
    paths = []
    for entry in entries:
        day_folder = folder / entry.day.isoformat()
        day_folder.mkdir()
        paths += [str(download_verified(store, part, day_folder)) for part in entry.parts]
    if not paths:
        empty = table.schema.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    column = ds.field(table.day_column)
    condition = (column >= pa.scalar(start, pa.timestamp("us", "UTC"))) & (column < pa.scalar(end, pa.timestamp("us", "UTC")))
    if symbols is not None:
        condition &= ds.field("symbol").isin(list(symbols))
    dataset = ds.dataset(paths, schema=table.schema, format="parquet")
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
    (all when None): what left PostgreSQL, read back from cold storage."""
    spec = archived_table(table)
    start, end = _utc(start, "start"), _utc(end, "end")
    with tempfile.TemporaryDirectory(prefix="winiswin-archived-") as folder:
        return _cold(manager or database_manager(), store or cold_store(), spec, start, end, None, Path(folder),
                     columns).to_pandas()


def read_history(
    table: str,
    start: dt.datetime | dt.date,
    end: dt.datetime | dt.date,
    symbols: Sequence[str] | None = None,
    *,
    manager: DatabaseManager | None = None,
    store: ColdStore | None = None,
) -> pd.DataFrame:
    """Rows of `table` whose day column lies in [start, end) for `symbols` (all when None), hot and
    archived together, ordered by time then symbol."""
    spec = archived_table(table)
    start, end = _utc(start, "start"), _utc(end, "end")
    if end <= start:
        raise ValueError(f"empty time range: start {start} is not before end {end}")
    manager = manager or database_manager()
    store = store or cold_store()
    hot = repository.hot_rows(manager, spec, start, end, symbols)
    with tempfile.TemporaryDirectory(prefix="winiswin-history-") as folder:
        cold = _cold(manager, store, spec, start, end, symbols, Path(folder))
    # Hot first, so a key in both tiers keeps its hot version.
    frame = pa.concat_tables([hot, cold]).to_pandas()
    if len(hot) and len(cold):
        frame = frame.drop_duplicates(spec.natural_key, keep="first")
    order = [spec.day_column] + (["symbol"] if "symbol" in spec.columns else [])
    return frame.sort_values(order, kind="stable").reset_index(drop=True)
