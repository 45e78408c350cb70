"""Which hot tables are archived, by which column a row falls into a UTC day, and each table's
Parquet schema (the SQL that selects a day's rows is in `archive.repository`).

The Parquet schema is derived from the SQLAlchemy model, so the cold copy has exactly the columns
and types of the hot table: TIMESTAMPTZ becomes `timestamp[us, UTC]`, JSONB a JSON string (field
metadata `pg_type=jsonb`), `double precision[]` a list of doubles, NOT NULL columns required.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
from sqlalchemy import BigInteger, Boolean, Date, DateTime, Float, Integer, SmallInteger, String, Table, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from winiswin_pipelines.db.models import DAILY_PARTITIONED_TABLES, TIME_SERIES_TABLES, Base

# Child tables first: deleting a trade cascades to its partial exits, which must be archived already.
_ARCHIVE_ORDER = ["trade_partial_exits", "trades"]
_EXTRA_TABLES = {"trade_partial_exits": "exit_time"}


def _arrow_type(column_type) -> pa.DataType:
    if isinstance(column_type, ARRAY):
        return pa.list_(pa.field("element", _arrow_type(column_type.item_type)))
    if isinstance(column_type, DateTime):
        return pa.timestamp("us", tz="UTC")
    for sql_type, arrow in (
        (JSONB, pa.string()), (Boolean, pa.bool_()), (SmallInteger, pa.int16()), (BigInteger, pa.int64()),
        (Integer, pa.int32()), (Float, pa.float64()), (Date, pa.date32()), (String, pa.string()), (Text, pa.string()),
    ):
        if isinstance(column_type, sql_type):
            return arrow
    raise TypeError(f"no Parquet type for column type {column_type!r}")


@dataclass(frozen=True)
class ArchivedTable:
    """A hot table that grows with time, archived one UTC day at a time."""

    name: str
    day_column: str

    @property
    def table(self) -> Table:
        return Base.metadata.tables[self.name]

    @property
    def partitioned(self) -> bool:
        return self.name in DAILY_PARTITIONED_TABLES

    @property
    def columns(self) -> list[str]:
        return [column.name for column in self.table.columns]

    @cached_property
    def natural_key(self) -> list[str]:
        """The key restores upsert on: the primary key, or the unique business key behind a serial id."""
        primary = [column.name for column in self.table.primary_key.columns]
        if primary != ["id"]:
            return primary
        return [column.name for column in self.table.columns if column.unique] or primary

    @cached_property
    def schema(self) -> pa.Schema:
        fields = []
        for column in self.table.columns:
            metadata = {"pg_type": "jsonb"} if isinstance(column.type, JSONB) else None
            fields.append(pa.field(column.name, _arrow_type(column.type), nullable=column.nullable, metadata=metadata))
        return pa.schema(fields, metadata={"winiswin.table": self.name, "winiswin.day_column": self.day_column})

    @property
    def json_columns(self) -> list[str]:
        return [column.name for column in self.table.columns if isinstance(column.type, JSONB)]


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return start, start + dt.timedelta(days=1)


def _ordered_names() -> list[str]:
    names = list(TIME_SERIES_TABLES) + [name for name in _EXTRA_TABLES if name not in TIME_SERIES_TABLES]
    return sorted(names, key=lambda name: _ARCHIVE_ORDER.index(name) if name in _ARCHIVE_ORDER else -1)


ARCHIVED_TABLES: dict[str, ArchivedTable] = {
    name: ArchivedTable(name, {**TIME_SERIES_TABLES, **_EXTRA_TABLES}[name]) for name in _ordered_names()
}


def archived_table(name: str) -> ArchivedTable:
    try:
        return ARCHIVED_TABLES[name]
    except KeyError:
        raise ValueError(f"table {name!r} is not archived; archived tables: {', '.join(ARCHIVED_TABLES)}") from None
