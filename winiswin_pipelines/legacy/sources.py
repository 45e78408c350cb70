"""`legacy_sources`: each legacy file's bytes, their cold copy, and how far their migration got.

One row per SHA-256 of a file's bytes. The migration writes it when the cold copy has been read back
(`verified_at`) and again when the rows are in (`migrated_at`); the accounting check stamps
`checked_at` when it passes; retiring the file stamps `retired_at`. `show_record` reads a row's
record back out of the cold copy.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert

from winiswin_pipelines.archive import read_archived
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import LegacySource
from winiswin_pipelines.legacy.accounting import SourceReport
from winiswin_pipelines.legacy.originals import ColdCopy, record_bytes, restore_original
from winiswin_pipelines.legacy.sniff import Store


@dataclass(frozen=True)
class SourceRow:
    sha256: str
    path: str
    source: str
    size: int
    format: str
    records: int | None
    first_time: dt.datetime | None
    last_time: dt.datetime | None
    cold_uri: str | None
    migrated_at: dt.datetime | None
    verified_at: dt.datetime | None
    checked_at: dt.datetime | None
    retired_at: dt.datetime | None
    retired_to: str | None


_FIELDS = [getattr(LegacySource, name) for name in SourceRow.__dataclass_fields__]


def find(manager: DatabaseManager, sha256: str) -> SourceRow | None:
    with manager.engine.connect() as conn:
        row = conn.execute(select(*_FIELDS).where(LegacySource.sha256 == sha256)).one_or_none()
    return SourceRow(*row) if row else None


def all_sources(manager: DatabaseManager) -> list[SourceRow]:
    with manager.engine.connect() as conn:
        return [SourceRow(*row) for row in conn.execute(select(*_FIELDS).order_by(LegacySource.path, LegacySource.id))]


def record_cold_copy(manager: DatabaseManager, store: Store, copy: ColdCopy) -> None:
    """The file's bytes are in cold storage and were read back identical (now)."""
    values = {"sha256": copy.sha256, "path": str(store.path.resolve()), "source": store.source, "size": copy.size,
              "format": store.format.value, "cold_uri": copy.uri, "verified_at": dt.datetime.now(dt.UTC)}
    statement = insert(LegacySource).values(**values)
    kept = {name: statement.excluded[name] for name in ("path", "source", "format", "cold_uri", "verified_at")}
    with manager.engine.begin() as conn:
        conn.execute(statement.on_conflict_do_update(index_elements=["sha256"], set_={**kept, "updated_at": text("now()")}))


def record_migrated(manager: DatabaseManager, sha256: str, report: SourceReport) -> None:
    first, last = report.time_range
    _update(manager, sha256, records=report.read, first_time=first, last_time=last,
            migrated_at=dt.datetime.now(dt.UTC), checked_at=None)


def record_checked(manager: DatabaseManager, sha256: str) -> None:
    _update(manager, sha256, checked_at=dt.datetime.now(dt.UTC))


def record_verified(manager: DatabaseManager, sha256: str) -> None:
    _update(manager, sha256, verified_at=dt.datetime.now(dt.UTC))


def record_retired(manager: DatabaseManager, sha256: str, moved_to: Path | None) -> None:
    _update(manager, sha256, retired_at=dt.datetime.now(dt.UTC), retired_to=str(moved_to) if moved_to else None)


def _update(manager: DatabaseManager, sha256: str, **values) -> None:
    with manager.engine.begin() as conn:
        conn.execute(LegacySource.__table__.update().where(LegacySource.sha256 == sha256)
                     .values(**values, updated_at=text("now()")))


# a record's original bytes ----------------------------------------------------------------------

_ORIGIN = text("SELECT origin FROM trades WHERE trade_uid = :uid "
               "UNION ALL SELECT origin FROM trade_partial_exits WHERE exit_uid = :uid LIMIT 1")
_KEYS = {"trades": "trade_uid", "trade_partial_exits": "exit_uid"}


def archived_span() -> tuple[dt.date, dt.datetime]:
    """Every day the archive can hold: from the epoch to tomorrow."""
    return dt.date(1970, 1, 1), dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


def show_record(manager: DatabaseManager, cold: ColdStore, uid: str) -> bytes:
    """The exact bytes of the legacy record behind a trade (or partial exit) uid, hot or archived to
    cold storage, read out of the cold copy of its file (the file itself may be gone)."""
    with manager.engine.connect() as conn:
        origin = conn.execute(_ORIGIN, {"uid": uid}).scalar_one_or_none()
    if origin is None:
        origin = archived_origin(manager, cold, uid)
    if origin is None:
        raise LookupError(f"no trade or partial exit {uid!r}, hot or archived")
    sha256 = origin.get("sha256")
    known = find(manager, sha256) if sha256 else None
    if known is None:
        raise LookupError(f"{uid} points to no file kept in cold storage (origin: {origin})")
    with tempfile.TemporaryDirectory(prefix="legacy_show_") as folder:
        original = Path(folder) / "original"
        restore_original(cold, sha256, original)
        return record_bytes(original, known.format, origin)


def archived_origin(manager: DatabaseManager, cold: ColdStore, uid: str) -> dict | None:
    """The `origin` of an archived trade (or partial exit): its row read back from the cold tier over
    the archived days (the uid does not say which day holds it)."""
    for table, key in _KEYS.items():
        rows = read_archived(table, *archived_span(), [key, "origin"], manager=manager, store=cold)
        found = rows.loc[rows[key] == uid, "origin"]
        if len(found):
            origin = found.iloc[0]
            return orjson.loads(origin) if isinstance(origin, str | bytes) else origin
    return None
