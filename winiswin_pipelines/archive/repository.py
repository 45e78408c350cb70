"""The archive area's SQL: every statement that archival, restores and the history reader run.

- `archive_manifest`: one row per table and UTC day, recording where its cold copy is and how far
  archival got. Statuses, in order: `exported` (Parquet written locally, object keys reserved),
  `uploaded`, `verified` (the stored objects were read back and match), `archived` (the hot rows
  are gone; set in the same transaction that removed them), `restored` (the cold rows were copied
  back into PostgreSQL), `failed` (the last attempt stopped with `error`; the hot rows are
  untouched). Every status but `archived` means PostgreSQL still holds every row of that day; a
  failure on an `archived` day (merging late rows) records its error and keeps the status.
- The day's rows of an archived table: which days still have hot rows, the advisory lock of a
  table and day, the transaction that exports its snapshot (count and digest of the rows in it),
  the queries the Arrow reader streams, and the removal (drop the partition, or delete with a
  digest behind the cascade guard).
- Table sizes, VACUUM, and the upsert of restored rows.

A function taking a `DatabaseManager` owns its transactions; one taking a `Connection` runs inside
the caller's (the manifest's writes commit at once on the autocommit connection of `locked_day`).
SQL literals are built from dates, datetimes and the models' names, never from input, except the
history reader's symbols, which are quoted.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import Connection, case, select, text
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.exc import DBAPIError

from winiswin_pipelines.archive.export import arrow_reader, read_arrow
from winiswin_pipelines.archive.tables import ArchivedTable, day_bounds
from winiswin_pipelines.db.bulk import EMPTY_RESULT, UpsertResult, copy_upsert
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import ArchiveManifest, Base, final_trade_sql
from winiswin_pipelines.db.partitions import drop_daily_partition, existing_partitions, partition_name

# --- archive_manifest ---------------------------------------------------------------------------

EXPORTED, UPLOADED, VERIFIED, ARCHIVED, RESTORED, FAILED = (
    "exported", "uploaded", "verified", "archived", "restored", "failed",
)
_MANIFEST = ArchiveManifest.__table__


@dataclass(frozen=True)
class ManifestEntry:
    table_name: str
    day: dt.date
    status: str
    uri: str | None
    object_uris: list[str]
    rows: int | None
    bytes: int | None
    checksum: str | None
    fingerprint: str | None
    error: str | None
    details: dict[str, Any]

    @property
    def parts(self) -> list[dict[str, Any]]:
        """Per object: key, uri, rows, size, sha256, fingerprint."""
        return list(self.details.get("parts", []))


def _entry(row) -> ManifestEntry:
    return ManifestEntry(
        table_name=row["table_name"], day=row["day"], status=row["status"], uri=row["uri"],
        object_uris=list(row["object_uris"] or []), rows=row["rows"], bytes=row["bytes"], checksum=row["checksum"],
        fingerprint=row["fingerprint"], error=row["error"], details=dict(row["details"] or {}),
    )


def load_entry(conn: Connection, table: str, day: dt.date) -> ManifestEntry | None:
    row = conn.execute(
        select(_MANIFEST).where(_MANIFEST.c.table_name == table, _MANIFEST.c.day == day)
    ).mappings().first()
    return _entry(row) if row else None


def manifest_entry(manager: DatabaseManager, table: str, day: dt.date) -> ManifestEntry | None:
    with manager.engine.connect() as conn:
        return load_entry(conn, table, day)


def manifest_entries(
    manager: DatabaseManager, table: str, first: dt.date, last: dt.date, statuses: Iterable[str]
) -> list[ManifestEntry]:
    """Entries of `table` for the days in [first, last] whose status is one of `statuses`, by day."""
    with manager.engine.connect() as conn:
        rows = conn.execute(
            select(_MANIFEST)
            .where(_MANIFEST.c.table_name == table, _MANIFEST.c.day.between(first, last),
                   _MANIFEST.c.status.in_(set(statuses)))
            .order_by(_MANIFEST.c.day)
        ).mappings()
        return [_entry(row) for row in rows]


def record_status(conn: Connection, table: str, day: dt.date, status: str, **values: Any) -> None:
    """Insert or update the row of `table` and `day` (commits when `conn` is in autocommit)."""
    now = dt.datetime.now(dt.UTC)
    values = {"status": status, "updated_at": now, **values}
    if status in {ARCHIVED, FAILED, RESTORED}:
        values.setdefault("finished_at", now)
    if status != FAILED:
        values.setdefault("error", None)
    statement = insert(_MANIFEST).values(table_name=table, day=day, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["table_name", "day"], set_=values))


def record_failure(conn: Connection, table: str, day: dt.date, error: str) -> None:
    """Record why an attempt stopped. An `archived` day stays `archived`: its hot rows are gone, and
    only that status protects its cold copy from being replaced by a partial one."""
    now = dt.datetime.now(dt.UTC)
    statement = insert(_MANIFEST).values(table_name=table, day=day, status=FAILED, error=error, finished_at=now)
    keep_archived = case((_MANIFEST.c.status == ARCHIVED, ARCHIVED), else_=FAILED)
    conn.execute(statement.on_conflict_do_update(
        index_elements=["table_name", "day"],
        set_={"status": keep_archived, "error": error, "finished_at": now, "updated_at": now},
    ))


# --- the advisory lock of a table and day -------------------------------------------------------


def _lock_keys(table: str, day: dt.date) -> dict[str, int]:
    # Two-int advisory key: a namespace for archival, then table and day folded into one int4.
    return {"space": 0x41524348, "item": zlib.crc32(f"{table}:{day.isoformat()}".encode()) - 2**31}


@contextmanager
def locked_day(manager: DatabaseManager, table: str, day: dt.date) -> Iterator[Connection | None]:
    """Hold the session advisory lock of one table and day; yields None when another process holds it.

    Else yields the autocommit connection holding the lock, for the manifest's writes: the lock
    spans the transactions run while it is held, and a killed process loses its connection and
    with it the lock.
    """
    keys = _lock_keys(table, day)
    with manager.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        acquired = conn.execute(text("SELECT pg_try_advisory_lock(:space, :item)"), keys).scalar_one()
        try:
            yield conn if acquired else None
        finally:
            if acquired:
                conn.execute(text("SELECT pg_advisory_unlock(:space, :item)"), keys)


# --- the rows of an archived table and day ------------------------------------------------------

# Rows of a table that may leave for cold storage (open trades stay hot whatever their age).
_ROW_FILTERS = {"trades": final_trade_sql()}


def _quoted(name: str) -> str:
    return f'"{name}"'


def _day_predicate(table: ArchivedTable, day: dt.date) -> str:
    """The rows of `day` that may be archived (literals from the day's bounds, not input)."""
    start, end = day_bounds(day)
    column = _quoted(table.day_column)
    clauses = [f"{column} >= '{start.isoformat()}'::timestamptz", f"{column} < '{end.isoformat()}'::timestamptz"]
    if table.name in _ROW_FILTERS:
        clauses.append(_ROW_FILTERS[table.name])
    return " AND ".join(clauses)


def _eligible_days(conn: Connection, table: ArchivedTable, before: dt.date) -> list[dt.date]:
    if table.partitioned:
        return [day for day in existing_partitions(conn, table.name) if day < before]
    start = dt.datetime.combine(before, dt.time(), dt.UTC)
    extra = f" AND {_ROW_FILTERS[table.name]}" if table.name in _ROW_FILTERS else ""
    column, name = _quoted(table.day_column), _quoted(table.name)
    # A skip scan over the day column's index: one probe per day that has rows.
    days = conn.execute(
        text(
            f"WITH RECURSIVE d(day) AS ("
            f" SELECT (min({column}) AT TIME ZONE 'UTC')::date FROM {name} WHERE {column} < :start{extra}"
            f" UNION ALL SELECT (SELECT (min({column}) AT TIME ZONE 'UTC')::date FROM {name}"
            f"  WHERE {column} >= ((d.day + 1)::timestamp AT TIME ZONE 'UTC') AND {column} < :start{extra})"
            f" FROM d WHERE d.day IS NOT NULL) SELECT day FROM d WHERE day IS NOT NULL"
        ),
        {"start": start},
    ).scalars()
    return list(days)


def eligible_days(
    manager: DatabaseManager, tables: Iterable[ArchivedTable], before: dt.date
) -> dict[str, list[dt.date]]:
    """Per table: the days before `before` that still have hot rows (or an empty partition), in order."""
    with manager.engine.connect() as conn:
        return {table.name: _eligible_days(conn, table, before) for table in tables}


def hot_days(manager: DatabaseManager, table: ArchivedTable) -> list[dt.date]:
    """The days that hold hot rows of `table` (that could leave for cold storage), in order."""
    with manager.engine.connect() as conn:
        days = _eligible_days(conn, table, dt.date.max)
        # A partitioned table also has the empty partitions created ahead of time.
        return [day for day in days if not table.partitioned or has_hot_rows(conn, table, day)]


def has_partition(conn: Connection, table: ArchivedTable, day: dt.date) -> bool:
    return table.partitioned and day in existing_partitions(conn, table.name)


def has_hot_rows(conn: Connection, table: ArchivedTable, day: dt.date) -> bool:
    predicate = _day_predicate(table, day)
    return conn.execute(text(f'SELECT EXISTS (SELECT 1 FROM "{table.name}" WHERE {predicate})')).scalar_one()


@dataclass
class DayWork:
    """The open transaction that exported `snapshot`; it later removes the day's rows."""

    conn: Connection
    snapshot: str
    rows: int
    digest: int | None  # sum of the rows' text hashes, for tables whose rows may change meanwhile
    partition_locked: bool


@contextmanager
def work_transaction(manager: DatabaseManager, table: ArchivedTable, day: dt.date, partition: bool) -> Iterator[DayWork]:
    """Open the transaction that exports its snapshot for the export, and later removes the day's rows.

    With `partition`, the day's partition is first locked in SHARE mode: it cannot change until the
    commit. Other tables can, so the count and a digest of every row's text are taken in the
    exported snapshot, to be compared with those of the rows the delete actually removes. Commits
    when the block ends normally, rolls back when it raises.
    """
    predicate = _day_predicate(table, day)
    with manager.engine.connect() as conn, conn.begin():
        if partition:
            conn.execute(text(f'LOCK TABLE "{partition_name(table.name, day)}" IN SHARE MODE'))
            snapshot, rows = conn.execute(
                text(f'SELECT pg_export_snapshot(), (SELECT count(*) FROM "{table.name}" WHERE {predicate})')
            ).one()
            yield DayWork(conn, snapshot, rows, None, True)
            return
        # One statement, so the snapshot, the count and the digest describe the same rows.
        snapshot, rows, digest = conn.execute(
            text(
                f"SELECT pg_export_snapshot(), count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
                f'FROM "{table.name}" AS t WHERE {predicate}'
            )
        ).one()
        yield DayWork(conn, snapshot, rows, int(digest), False)


def _export_query(table: ArchivedTable, day: dt.date) -> str:
    """The day's rows, ordered by symbol then time so that each Parquet row group holds few symbols
    and a reader's symbol filter skips the others by their statistics; arrays travel as
    `array_send` bytes (see `export.decode_float8_arrays`)."""
    selected = [
        f'array_send("{column.name}") AS "{column.name}"' if isinstance(column.type, ARRAY) else _quoted(column.name)
        for column in table.table.columns
    ]
    order = (["symbol"] if "symbol" in table.columns else []) + [table.day_column]
    return (f'SELECT {", ".join(selected)} FROM "{table.name}" WHERE {_day_predicate(table, day)} '
            f'ORDER BY {", ".join(_quoted(name) for name in order)}')


@contextmanager
def exported_rows(manager: DatabaseManager, table: ArchivedTable, day: dt.date, snapshot: str) -> Iterator[pa.RecordBatchReader]:
    """Stream the day's rows as seen by the exported `snapshot` (a read-only transaction of its own)."""
    join_snapshot = ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", f"SET TRANSACTION SNAPSHOT '{snapshot}'"]
    with arrow_reader(manager, _export_query(table, day), setup=join_snapshot) as reader:
        yield reader


def hot_rows(
    manager: DatabaseManager, table: ArchivedTable, start: dt.datetime, end: dt.datetime,
    symbols: Sequence[str] | None, columns: Sequence[str] | None = None,
) -> pa.Table:
    """Every hot row (open trades included) whose day column lies in [start, end), for `symbols`
    (all when None), only `columns` (all when None), cast to the table's Arrow schema."""
    names = list(columns) if columns is not None else table.columns
    schema = pa.schema([table.schema.field(name) for name in names])
    column_list = ", ".join(_quoted(name) for name in names)
    column = _quoted(table.day_column)
    where = [f"{column} >= '{start.isoformat()}'", f"{column} < '{end.isoformat()}'"]
    if symbols is not None:
        quoted = ", ".join("'" + symbol.replace("'", "''") + "'" for symbol in symbols)
        where.append(f"symbol IN ({quoted})" if quoted else "false")
    return read_arrow(manager, f'SELECT {column_list} FROM "{table.name}" WHERE {" AND ".join(where)}', schema)


def drop_partition(conn: Connection, table: ArchivedTable, day: dt.date, *, lock_timeout: str | None = None) -> None:
    """Drop the day's partition, waiting at most `lock_timeout` (e.g. '30s') for its locks when given."""
    if lock_timeout is not None:
        conn.execute(text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
    drop_daily_partition(conn, table.name, day)


def hot_cascade_children(conn: Connection, table: ArchivedTable, day: dt.date) -> Iterator[tuple[str, int]]:
    """(child table, rows) for each ON DELETE CASCADE child whose hot rows reference the day's rows
    (deleting those would delete them too), one query per child as the caller goes on."""
    predicate = _day_predicate(table, day)
    for child in Base.metadata.tables.values():
        for fk in child.foreign_keys:
            if fk.column.table.name != table.name or (fk.ondelete or "").upper() != "CASCADE":
                continue
            count = conn.execute(
                text(
                    f'SELECT count(*) FROM "{child.name}" WHERE "{fk.parent.name}" IN '
                    f'(SELECT "{fk.column.name}" FROM "{table.name}" WHERE {predicate})'
                )
            ).scalar_one()
            if count:
                yield child.name, count


def delete_day(conn: Connection, table: ArchivedTable, day: dt.date) -> tuple[int, int]:
    """Delete the day's rows; returns how many went and the digest of their text (as in `work_transaction`)."""
    predicate = _day_predicate(table, day)
    deleted, digest = conn.execute(
        text(
            f'WITH gone AS (DELETE FROM "{table.name}" AS t WHERE {predicate} RETURNING hashtextextended(t::text, 0) AS h) '
            f"SELECT count(*), coalesce(sum(h::numeric), 0)::numeric FROM gone"
        )
    ).one()
    return deleted, int(digest)


# --- whole tables -------------------------------------------------------------------------------


def table_sizes(manager: DatabaseManager, tables: Iterable[str]) -> dict[str, int]:
    """On-disk size of each table with its indexes and, when partitioned, all its partitions."""
    statement = text(
        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(CAST(:t AS regclass))),"
        " pg_total_relation_size(CAST(:t AS regclass)))::bigint"  # a plain table has no partition tree
    )
    with manager.engine.connect() as conn:
        return {table: conn.execute(statement, {"t": table}).scalar_one() for table in tables}


def vacuum(manager: DatabaseManager, table: str) -> None:
    """Make the space of deleted rows reusable and refresh statistics (not possible in a transaction)."""
    with manager.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'VACUUM (ANALYZE) "{table}"'))


def restore_rows(
    manager: DatabaseManager, table: ArchivedTable, day: dt.date, batches: Iterable[Iterable[Sequence[Any]]]
) -> UpsertResult:
    """In one transaction: merge the rows of each batch (in `table.columns` order) into the hot table
    by the archive's merge rule, then mark the day `restored`. The rule goes column by column: a key
    not hot yet is inserted; a hot row keeps every value it holds and takes the archived value only
    where it holds NULL (a recomputed feature row does not lose the label the archived copy holds, a
    late partial row keeps the columns it does not carry). A row whose parent is missing raises the
    driver's `IntegrityError`; anything raised, by the batches too, rolls everything back."""
    result = EMPTY_RESULT
    with manager.engine.begin() as conn:
        for rows in batches:
            result += copy_upsert(conn, table.name, table.columns, rows, conflict_columns=table.natural_key,
                                  fill_only=True)
        record_status(conn, table.name, day, RESTORED)
    return result


def data_directory(manager: DatabaseManager) -> Path | None:
    """PostgreSQL's data directory when the server runs on this machine and says where it is (the
    setting needs superuser or pg_read_all_settings); None otherwise."""
    if manager.url.host not in (None, "", "localhost", "127.0.0.1", "::1"):
        return None
    with manager.engine.connect() as conn:
        try:
            return Path(conn.execute(text("SHOW data_directory")).scalar_one())
        except DBAPIError:
            return None
