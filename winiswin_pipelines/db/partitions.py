"""Daily range partitions of the high-volume time-series tables.

An archived day leaves PostgreSQL by detaching and dropping its partition, which gives the disk
space back at once (a bulk DELETE only marks rows dead).
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Iterable

from sqlalchemy import Connection, text

_PARTITION_SUFFIX = re.compile(r"_p(\d{8})$")


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def is_partition_name(name: str) -> bool:
    return bool(_PARTITION_SUFFIX.search(name))


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic filter: daily partitions are data created at run time, not schema to compare."""
    return not (type_ == "table" and name is not None and is_partition_name(name))


def _lock(conn: Connection, table: str) -> None:
    # Serialises partition DDL per table across processes, until the transaction ends.
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(f"partitions:{table}".encode())})


def existing_partitions(conn: Connection, table: str) -> list[dt.date]:
    """Days that have a partition attached to `table`, in order."""
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :table"
        ),
        {"table": table},
    ).scalars()
    days = [dt.datetime.strptime(m.group(1), "%Y%m%d").date() for name in names if (m := _PARTITION_SUFFIX.search(name))]
    return sorted(days)


def ensure_daily_partitions(conn: Connection, table: str, days: Iterable[dt.date]) -> list[dt.date]:
    """Create the missing daily partitions of `table` for `days`; returns the days created."""
    wanted = sorted(set(days))
    if not wanted:
        return []
    _lock(conn, table)
    missing = sorted(set(wanted) - set(existing_partitions(conn, table)))
    for day in missing:
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        conn.execute(
            text(
                f'CREATE TABLE IF NOT EXISTS "{partition_name(table, day)}" PARTITION OF "{table}" '
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
        )
    return missing


def drop_daily_partition(conn: Connection, table: str, day: dt.date) -> bool:
    """Detach and drop the partition of `table` for `day`; False when there was none."""
    _lock(conn, table)
    if day not in existing_partitions(conn, table):
        return False
    name = partition_name(table, day)
    conn.execute(text(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"'))
    conn.execute(text(f'DROP TABLE "{name}"'))
    return True
