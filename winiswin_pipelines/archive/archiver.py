"""Hot-to-cold archival of one table and UTC day, and of every eligible day (`archive_old_data`).

For a day older than the retention, in this order (a crash anywhere leaves every row in
PostgreSQL, or a verified copy recorded in `archive_manifest`, never neither):

1. take the advisory lock of the table and day (another run holding it: the day is skipped);
2. open the transaction that will remove the rows (a day's partition is first locked in SHARE
   mode, which stops writers) and export its snapshot, taking in the same statement the count of
   the day's rows and, for unpartitioned tables, a digest of every row's text;
3. stream the day's rows inside that snapshot (ADBC, binary COPY) into zstd Parquet parts;
4. upload each part with its SHA-256, then read it back from storage: size, stored and
   recomputed SHA-256, footer row count and content fingerprint must equal the export's;
5. in the transaction of step 2, drop the day's partition when it holds exactly the exported
   rows, else delete the day's rows, whose count and digest must equal the snapshot's (a row
   added or changed meanwhile rolls the delete back), and mark the manifest `archived`: one commit.

Rows that arrive for a day already archived are merged back first (the cold copy is restored,
hot rows winning) and the whole day is archived again, so the cold copy stays one set of rows.

Every statement is in `archive.repository`; this module is the procedure and its checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from winiswin_pipelines.archive import repository
from winiswin_pipelines.archive.export import decode_sent_arrays
from winiswin_pipelines.archive.parquet import (
    DayWriter,
    WrittenPart,
    combined_fingerprint,
    day_prefix,
    part_key,
    prefetched,
    read_content,
)
from winiswin_pipelines.archive.restore import restore_day
from winiswin_pipelines.archive.tables import ARCHIVED_TABLES, ArchivedTable, archived_table
from winiswin_pipelines.coldstore import ColdStore, LocalColdStore, sha256_file
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.errors import describe
from winiswin_pipelines.factories import cold_store, database_manager

DEFAULT_DAYS_TO_KEEP = 30  # what `WINISWIN_RETENTION_DAYS` defaults to
VACUUM_MIN_ROWS = 10_000
_DETACH_LOCK_TIMEOUT = "30s"

ARCHIVED, ALREADY_ARCHIVED, EMPTY, BUSY, FAILED = "archived", "already archived", "empty", "busy", "failed"

# progress(step, table, day, details): steps "exported", "uploaded", "verified", "deleting" (inside
# the delete transaction, before it commits) and "archived". An exception raised by it aborts the day.
Progress = Callable[[str, str, dt.date, dict[str, Any]], None]


class ArchiveError(RuntimeError):
    """A day could not be archived; its rows are still in PostgreSQL."""


class VerificationError(ArchiveError):
    """The copy read back from cold storage differs from what was exported."""


@dataclass(frozen=True)
class DayResult:
    table: str
    day: dt.date
    status: str
    rows: int = 0
    bytes: int = 0
    arrow_bytes: int = 0
    uri: str | None = None
    object_uris: tuple[str, ...] = ()
    checksum: str | None = None
    fingerprint: str | None = None
    removed_by: str | None = None
    duration_s: float = 0.0
    error: str | None = None

    @property
    def compression_ratio(self) -> float | None:
        return round(self.arrow_bytes / self.bytes, 2) if self.bytes else None


@dataclass
class ArchiveSummary:
    as_of: dt.datetime
    days_to_keep: int
    first_kept_day: dt.date
    results: list[DayResult] = field(default_factory=list)
    size_before: dict[str, int] = field(default_factory=dict)
    size_after: dict[str, int] = field(default_factory=dict)

    @property
    def archived(self) -> list[DayResult]:
        return [r for r in self.results if r.status == ARCHIVED]

    @property
    def failed(self) -> list[DayResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def rows_archived(self) -> int:
        return sum(r.rows for r in self.archived)

    def lines(self) -> list[str]:
        out = [f"retention {self.days_to_keep} days as of {self.as_of:%Y-%m-%d %H:%M} UTC: days before "
               f"{self.first_kept_day} are archived"]
        for r in self.results:
            detail = f"{r.rows:>9,} rows  {r.bytes:>11,} B  x{r.compression_ratio}  {r.uri}" if r.rows else r.error or ""
            out.append(f"{r.table:<20} {r.day}  {r.status:<16} {detail}")
        for name, before in self.size_before.items():
            out.append(f"{name:<20} on disk {before:>13,} B -> {self.size_after.get(name, before):>13,} B")
        return out


def frees_no_disk(store: ColdStore, manager: DatabaseManager) -> bool:
    """Whether the cold store is a local folder on PostgreSQL's own filesystem: archiving then moves
    bytes from one folder of the disk to another and frees no space on it."""
    if not isinstance(store, LocalColdStore):
        return False
    data_dir = repository.data_directory(manager)
    if data_dir is None or not data_dir.exists():
        return False
    store.root.mkdir(parents=True, exist_ok=True)
    return os.stat(store.root).st_dev == os.stat(data_dir).st_dev


def first_kept_day(days_to_keep: int, as_of: dt.datetime | None = None) -> dt.date:
    """Days before this one are older than the retention: they end at or before `as_of - days_to_keep`."""
    as_of = as_of or dt.datetime.now(dt.UTC)
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware UTC, got naive {as_of!r}")
    return (as_of.astimezone(dt.UTC) - dt.timedelta(days=days_to_keep)).date()


def days_to_archive(manager: DatabaseManager, before: dt.date) -> list[dt.date]:
    """Days before `before` that still have hot rows in any archived table, in order."""
    eligible = repository.eligible_days(manager, ARCHIVED_TABLES.values(), before)
    return sorted({day for days in eligible.values() for day in days})


def _notify(progress: Progress | None, step: str, table: ArchivedTable, day: dt.date, **details: Any) -> None:
    if progress:
        progress(step, table.name, day, details)


def _export(manager: DatabaseManager, table: ArchivedTable, day: dt.date, snapshot: str, folder: Path) -> list[WrittenPart]:
    writer = DayWriter(folder, table.schema)
    with repository.exported_rows(manager, table, day, snapshot) as reader:
        # Reading and decoding run on a background thread, writing and hashing on this one.
        for batch in prefetched(decode_sent_arrays(batch, table.schema) for batch in reader):
            writer.write(batch)
    return writer.close()


def verify_part(store: ColdStore, key: str, part: WrittenPart, table: ArchivedTable, folder: Path) -> None:
    """Read one uploaded object back from storage and compare it with what was exported."""
    uri = store.uri(key)
    stored = store.head(key)
    if stored is None:
        raise VerificationError(f"{uri}: object missing after upload")
    if stored.size != part.size:
        raise VerificationError(f"{uri}: stored size {stored.size} B, exported {part.size} B")
    if stored.sha256 != part.sha256:
        raise VerificationError(f"{uri}: stored SHA-256 {stored.sha256} differs from the exported {part.sha256}")
    copy = folder / f"verify-{part.part:05d}.parquet"
    store.download(key, copy)
    try:
        if sha256_file(copy) != part.sha256:
            raise VerificationError(f"{uri}: the downloaded bytes do not match the exported SHA-256")
        try:
            content = read_content(copy, table.schema)
        except Exception as exc:  # a damaged file fails verification, whatever pyarrow raises
            raise VerificationError(f"{uri}: not a readable Parquet file ({describe(exc)})") from exc
        if content.footer_rows != part.rows:
            raise VerificationError(f"{uri}: footer says {content.footer_rows} rows, exported {part.rows}")
        if content.fingerprint != part.fingerprint:
            raise VerificationError(f"{uri}: content fingerprint {content.fingerprint} != exported {part.fingerprint}")
    finally:
        copy.unlink(missing_ok=True)


def _remove_rows(work: repository.DayWork, table: ArchivedTable, day: dt.date, rows: int) -> str:
    if work.partition_locked and work.rows == rows:
        # Locked against writers since before the snapshot, whose rows were all exported: the
        # partition holds exactly the exported rows, so it goes whole.
        repository.drop_partition(work.conn, table, day, lock_timeout=_DETACH_LOCK_TIMEOUT)
        return "drop partition"
    # Refuse to delete parents whose ON DELETE CASCADE children are still hot (they would vanish).
    blocking = next(repository.hot_cascade_children(work.conn, table, day), None)
    if blocking:
        child, count = blocking
        raise ArchiveError(f"{count} {child} rows still reference {table.name} of {day}; archive {child} first")
    # Rows added since the snapshot are deleted too and break the count; rows changed break the digest.
    deleted, digest = repository.delete_day(work.conn, table, day)
    if deleted != rows or (work.digest is not None and digest != work.digest):
        raise ArchiveError(
            f"the delete matched {deleted} rows where {rows} were exported, or their content differs: "
            "the day changed since the export; rolled back"
        )
    return "delete"


def _upload(store: ColdStore, table: ArchivedTable, day: dt.date, parts: list[WrittenPart]) -> list[str]:
    keys = []
    for part in parts:
        key = part_key(table.name, day, part.part)
        store.put_file(part.path, key, part.sha256)
        keys.append(key)
    return keys


def _remove_stale_objects(store: ColdStore, table: ArchivedTable, day: dt.date, keep: list[str]) -> list[str]:
    """Objects of earlier attempts for this day (the rows are still hot, so none is needed)."""
    stale = [key for key in store.list_keys(day_prefix(table.name, day) + "/") if key not in keep]
    for key in stale:
        store.delete(key)
    return stale


def _archive_locked(
    manager: DatabaseManager, store: ColdStore, table: ArchivedTable, day: dt.date, meta: Connection,
    progress: Progress | None, started: float,
) -> DayResult:
    entry = repository.load_entry(meta, table.name, day)
    if entry and entry.status == repository.ARCHIVED:
        if not repository.has_hot_rows(meta, table, day):
            return DayResult(table.name, day, ALREADY_ARCHIVED, rows=entry.rows or 0, uri=entry.uri)
        restore_day(manager, store, table, entry)  # late rows: merge the cold copy back, hot rows winning
    has_partition = repository.has_partition(meta, table, day)
    with repository.work_transaction(manager, table, day, has_partition) as work, tempfile.TemporaryDirectory(
        prefix="winiswin-archive-"
    ) as folder:
        if work.rows == 0:
            if has_partition:
                repository.drop_partition(work.conn, table, day)
            return DayResult(table.name, day, EMPTY, removed_by="drop partition" if has_partition else None)
        parts = _export(manager, table, day, work.snapshot, Path(folder))
        exported = sum(part.rows for part in parts)
        if exported != work.rows:
            raise ArchiveError(f"exported {exported} rows but the snapshot holds {work.rows}")
        keys = [part_key(table.name, day, part.part) for part in parts]
        fingerprint = combined_fingerprint(part.fingerprint for part in parts)
        details = {
            "parts": [
                {"key": key, "uri": store.uri(key), "rows": part.rows, "size": part.size, "sha256": part.sha256,
                 "fingerprint": part.fingerprint}
                for key, part in zip(keys, parts, strict=True)
            ],
            "arrow_bytes": sum(part.arrow_bytes for part in parts),
        }
        values = {
            "uri": store.uri(day_prefix(table.name, day) + "/"), "object_uris": [store.uri(k) for k in keys],
            "rows": exported, "bytes": sum(part.size for part in parts), "fingerprint": fingerprint,
            "checksum": parts[0].sha256 if len(parts) == 1 else combined_sha256(part.sha256 for part in parts),
            "details": details, "started_at": dt.datetime.now(dt.UTC), "finished_at": None,
        }
        repository.record_status(meta, table.name, day, repository.EXPORTED, **values)
        _notify(progress, "exported", table, day, rows=exported)
        _upload(store, table, day, parts)
        repository.record_status(meta, table.name, day, repository.UPLOADED)
        _notify(progress, "uploaded", table, day, keys=keys)
        for key, part in zip(keys, parts, strict=True):
            verify_part(store, key, part, table, Path(folder))
        repository.record_status(meta, table.name, day, repository.VERIFIED)
        stale = _remove_stale_objects(store, table, day, keys)
        _notify(progress, "verified", table, day, stale_objects_removed=stale)
        removed_by = _remove_rows(work, table, day, exported)
        duration = round(time.perf_counter() - started, 3)
        details = {**details, "removed_by": removed_by, "duration_s": duration}
        _notify(progress, "deleting", table, day, removed_by=removed_by)
        repository.record_status(work.conn, table.name, day, repository.ARCHIVED, details=details)
    result = DayResult(
        table.name, day, ARCHIVED, rows=exported, bytes=values["bytes"], arrow_bytes=details["arrow_bytes"],
        uri=values["uri"], object_uris=tuple(values["object_uris"]), checksum=values["checksum"],
        fingerprint=fingerprint, removed_by=removed_by, duration_s=duration,
    )
    _notify(progress, "archived", table, day, rows=exported)
    return result


def combined_sha256(checksums: Iterable[str]) -> str:
    """The day's checksum when it has several parts: SHA-256 of the parts' hex digests in order."""
    return hashlib.sha256("".join(checksums).encode()).hexdigest()


def archive_day(
    manager: DatabaseManager, store: ColdStore, table: ArchivedTable | str, day: dt.date,
    *, progress: Progress | None = None,
) -> DayResult:
    """Archive one table and day; failures are recorded in the manifest and returned, not raised."""
    table = archived_table(table) if isinstance(table, str) else table
    started = time.perf_counter()
    with repository.locked_day(manager, table.name, day) as meta:
        if meta is None:
            return DayResult(table.name, day, BUSY, error="another run is archiving this table and day")
        try:
            return _archive_locked(manager, store, table, day, meta, progress, started)
        except Exception as exc:
            message = describe(exc)
            repository.record_failure(meta, table.name, day, message)
            return DayResult(table.name, day, FAILED, error=message, duration_s=time.perf_counter() - started)


def archive_old_data(
    days_to_keep: int = DEFAULT_DAYS_TO_KEEP,
    *,
    manager: DatabaseManager | None = None,
    store: ColdStore | None = None,
    as_of: dt.datetime | None = None,
    tables: Iterable[str] | None = None,
    days: Iterable[dt.date] | None = None,
    progress: Progress | None = None,
) -> ArchiveSummary:
    """Archive every day older than `days_to_keep` days (from `as_of`, default now) of every growing
    table to cold storage, deleting hot rows only after their copy is verified.

    `tables` and `days` narrow the work (days inside the retention are never touched). Returns a
    summary; failed days keep their rows and are listed with the reason.
    """
    if days_to_keep < 0:
        raise ValueError(f"days_to_keep must be >= 0, got {days_to_keep}")
    manager = manager or database_manager()
    store = store or cold_store()
    as_of = as_of or dt.datetime.now(dt.UTC)
    keep_from = first_kept_day(days_to_keep, as_of)
    selected = [archived_table(name) for name in tables] if tables is not None else list(ARCHIVED_TABLES.values())
    wanted = set(days) if days is not None else None
    summary = ArchiveSummary(as_of, days_to_keep, keep_from)
    names = [t.name for t in selected]
    summary.size_before = repository.table_sizes(manager, names)
    eligible = repository.eligible_days(manager, selected, keep_from)
    work = [(t, day) for t in selected for day in eligible[t.name] if wanted is None or day in wanted]
    work.sort(key=lambda item: (item[1], list(ARCHIVED_TABLES).index(item[0].name)))
    for table, day in work:
        summary.results.append(archive_day(manager, store, table, day, progress=progress))
    for table in selected:
        if not table.partitioned and sum(r.rows for r in summary.archived if r.table == table.name) >= VACUUM_MIN_ROWS:
            repository.vacuum(manager, table.name)
    summary.size_after = repository.table_sizes(manager, names)
    return summary
