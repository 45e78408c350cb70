"""Copy archived days back from cold storage into PostgreSQL, idempotently.

Each object is downloaded, its SHA-256 checked against the manifest, and its rows merged with the
hot ones by the archive's merge rule (`repository.restore_rows`): a key not hot is inserted, a hot
row keeps every value it holds and takes the archived value only where it holds NULL. Restoring
twice changes nothing.
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

from winiswin_pipelines.archive import repository
from winiswin_pipelines.archive.parquet import iter_file_batches
from winiswin_pipelines.archive.repository import ManifestEntry
from winiswin_pipelines.archive.tables import ArchivedTable
from winiswin_pipelines.coldstore import ColdStore, sha256_file
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
    filled: int = 0  # hot rows whose NULLs the archived copy filled


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


def _batches(store: ColdStore, table: ArchivedTable, entry: ManifestEntry, folder: Path) -> Iterator[Iterator[tuple]]:
    """The rows of each record batch of the day's objects, each object downloaded and verified first."""
    for part in entry.parts:
        path = download_verified(store, part, folder)
        for batch in iter_file_batches(path, table.schema):
            yield _python_rows(batch, table.json_columns)
        path.unlink()


def restore_day(manager: DatabaseManager, store: ColdStore, table: ArchivedTable, entry: ManifestEntry) -> RestoredDay:
    """Insert the rows of one archived day and mark it `restored`, in one transaction (the caller
    holds the day's lock)."""
    with tempfile.TemporaryDirectory(prefix="winiswin-restore-") as folder:
        try:
            merged = repository.restore_rows(manager, table, entry.day, _batches(store, table, entry, Path(folder)))
        except psycopg.errors.IntegrityError as exc:  # the COPY talks to the driver directly
            raise RestoreError(
                f"{table.name} {entry.day}: {describe(exc)}; restore the rows it "
                "references first (trades before trade_partial_exits)"
            ) from exc
    return RestoredDay(table.name, entry.day, entry.rows or 0, merged.inserted, merged.updated)


def restore_days(
    manager: DatabaseManager, store: ColdStore, table: ArchivedTable, first: dt.date, last: dt.date,
    on_day: Callable[[RestoredDay], None] | None = None, *, again: bool = True,
) -> list[RestoredDay]:
    """Restore every archived day of `table` in [first, last]; one transaction per day. With
    `again=False`, days restored before (their rows are hot already) are left as they are."""
    statuses = {repository.ARCHIVED, repository.RESTORED} if again else {repository.ARCHIVED}
    entries = repository.manifest_entries(manager, table.name, first, last, statuses)
    restored = []
    for entry in entries:
        with repository.locked_day(manager, table.name, entry.day) as lock:
            if lock is None:
                raise RestoreError(f"{table.name} {entry.day}: another run is archiving this day; try again later")
            day = restore_day(manager, store, table, entry)
        restored.append(day)
        if on_day:
            on_day(day)
    return restored

