"""Copy archived days back from cold storage into PostgreSQL, idempotently.

Each object is downloaded, its SHA-256 checked against the manifest, and its rows upserted through
`copy_upsert` keyed on the table's natural key with "do nothing" on conflict: a row already hot
(possibly newer) wins, so restoring twice changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
from sqlalchemy import Connection

from winiswin_pipelines.archive import manifest
from winiswin_pipelines.archive.manifest import ManifestEntry
from winiswin_pipelines.archive.parquet import iter_file_batches
from winiswin_pipelines.archive.tables import ArchivedTable
from winiswin_pipelines.coldstore import ColdStore, sha256_file
from winiswin_pipelines.db.bulk import copy_upsert
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.errors import describe


class RestoreError(RuntimeError):
    """A cold copy could not be restored; nothing of it was written."""


@dataclass(frozen=True)
class RestoredDay:
    table: str
    day: dt.date
    rows_in_copy: int
    inserted: int


def download_verified(store: ColdStore, part: dict[str, Any], folder: Path) -> Path:
    """Download one manifest part and check its SHA-256 against the manifest."""
    path = folder / Path(part["key"]).name
    store.download(part["key"], path)
    if sha256_file(path) != part["sha256"]:
        raise RestoreError(f"{part['uri']}: SHA-256 differs from the manifest; the object is corrupted")
    return path


def _python_rows(batch: pa.RecordBatch, json_columns: list[str]) -> Iterator[tuple[Any, ...]]:
    columns = []
    for name in batch.schema.names:
        values = batch.column(name).to_pylist()
        if name in json_columns:
            values = [None if value is None else json.loads(value) for value in values]
        columns.append(values)
    return zip(*columns, strict=True)


def restore_entry(conn: Connection, store: ColdStore, table: ArchivedTable, entry: ManifestEntry) -> RestoredDay:
    """Upsert the rows of one archived day inside the caller's transaction and mark it `restored`."""
    inserted = 0
    with tempfile.TemporaryDirectory(prefix="winiswin-restore-") as folder:
        for part in entry.parts:
            path = download_verified(store, part, Path(folder))
            for batch in iter_file_batches(path, table.schema):
                try:
                    result = copy_upsert(
                        conn, table.name, table.columns, _python_rows(batch, table.json_columns),
                        conflict_columns=table.natural_key, update_columns=[],
                    )
                except psycopg.errors.IntegrityError as exc:  # copy_upsert talks to the driver directly
                    raise RestoreError(
                        f"{table.name} {entry.day}: {describe(exc)}; restore the rows it "
                        "references first (trades before trade_partial_exits)"
                    ) from exc
                inserted += result.inserted
            path.unlink()
    manifest.record(conn, table.name, entry.day, manifest.RESTORED)
    return RestoredDay(table.name, entry.day, entry.rows or 0, inserted)


def restore_days(
    manager: DatabaseManager, store: ColdStore, table: ArchivedTable, first: dt.date, last: dt.date,
    on_day: Callable[[RestoredDay], None] | None = None,
) -> list[RestoredDay]:
    """Restore every archived day of `table` in [first, last]; one transaction per day."""
    engine = manager.engine
    with engine.connect() as conn:
        entries = manifest.load_range(conn, table.name, first, last, {manifest.ARCHIVED, manifest.RESTORED})
    restored = []
    for entry in entries:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock_conn:
            with manifest.day_lock(lock_conn, table.name, entry.day) as acquired:
                if not acquired:
                    raise RestoreError(f"{table.name} {entry.day}: another run is archiving this day; try again later")
                with engine.begin() as conn:
                    day = restore_entry(conn, store, table, entry)
        restored.append(day)
        if on_day:
            on_day(day)
    return restored
