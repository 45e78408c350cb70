"""`archive_manifest`: one row per table and UTC day, recording where its cold copy is and how far
archival got.

Statuses, in order: `exported` (Parquet written locally, object keys reserved), `uploaded`,
`verified` (the stored objects were read back and match), `archived` (the hot rows are gone; set
in the same transaction that removed them), `restored` (the cold rows were copied back into
PostgreSQL), `failed` (the last attempt stopped with `error`; the hot rows are untouched).
Every status but `archived` means PostgreSQL still holds every row of that day; a failure on an
`archived` day (merging late rows) records its error and keeps the status.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, select, text
from sqlalchemy.dialects.postgresql import insert

from winiswin_pipelines.db.models import ArchiveManifest

EXPORTED, UPLOADED, VERIFIED, ARCHIVED, RESTORED, FAILED = (
    "exported", "uploaded", "verified", "archived", "restored", "failed",
)
_TABLE = ArchiveManifest.__table__


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


def load(conn: Connection, table: str, day: dt.date) -> ManifestEntry | None:
    row = conn.execute(select(_TABLE).where(_TABLE.c.table_name == table, _TABLE.c.day == day)).mappings().first()
    return _entry(row) if row else None


def load_range(conn: Connection, table: str, first: dt.date, last: dt.date, statuses: set[str]) -> list[ManifestEntry]:
    rows = conn.execute(
        select(_TABLE)
        .where(_TABLE.c.table_name == table, _TABLE.c.day.between(first, last), _TABLE.c.status.in_(statuses))
        .order_by(_TABLE.c.day)
    ).mappings()
    return [_entry(row) for row in rows]


def _entry(row) -> ManifestEntry:
    return ManifestEntry(
        table_name=row["table_name"], day=row["day"], status=row["status"], uri=row["uri"],
        object_uris=list(row["object_uris"] or []), rows=row["rows"], bytes=row["bytes"], checksum=row["checksum"],
        fingerprint=row["fingerprint"], error=row["error"], details=dict(row["details"] or {}),
    )


def record(conn: Connection, table: str, day: dt.date, status: str, **values: Any) -> None:
    """Insert or update the row of `table` and `day` (commits when `conn` is in autocommit)."""
    now = dt.datetime.now(dt.UTC)
    values = {"status": status, "updated_at": now, **values}
    if status in {ARCHIVED, FAILED, RESTORED}:
        values.setdefault("finished_at", now)
    if status != FAILED:
        values.setdefault("error", None)
    statement = insert(_TABLE).values(table_name=table, day=day, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["table_name", "day"], set_=values))


def _lock_keys(table: str, day: dt.date) -> dict[str, int]:
    # Two-int advisory key: a namespace for archival, then table and day folded into one int4.
    return {"space": 0x41524348, "item": zlib.crc32(f"{table}:{day.isoformat()}".encode()) - 2**31}


@contextmanager
def day_lock(conn: Connection, table: str, day: dt.date) -> Iterator[bool]:
    """Session advisory lock on one table and day; yields False when another process holds it.

    `conn` must be in autocommit so the lock spans the transactions run while it is held; a
    killed process loses its connection and with it the lock.
    """
    keys = _lock_keys(table, day)
    acquired = conn.execute(text("SELECT pg_try_advisory_lock(:space, :item)"), keys).scalar_one()
    try:
        yield acquired
    finally:
        if acquired:
            conn.execute(text("SELECT pg_advisory_unlock(:space, :item)"), keys)


def record_failure(conn: Connection, table: str, day: dt.date, error: str) -> None:
    """Record why an attempt stopped. An `archived` day stays `archived`: its hot rows are gone, and
    only that status protects its cold copy from being replaced by a partial one."""
    now = dt.datetime.now(dt.UTC)
    statement = insert(_TABLE).values(table_name=table, day=day, status=FAILED, error=error, finished_at=now)
    keep_archived = case((_TABLE.c.status == ARCHIVED, ARCHIVED), else_=FAILED)
    conn.execute(statement.on_conflict_do_update(
        index_elements=["table_name", "day"],
        set_={"status": keep_archived, "error": error, "finished_at": now, "updated_at": now},
    ))
