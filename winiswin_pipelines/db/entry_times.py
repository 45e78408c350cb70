"""`position_entry_times`: when each open position was filled, so the time stop survives restarts.

Helpers for sync (`Connection`) and async (`AsyncConnection`) callers; they take and return
timezone-aware UTC datetimes and refuse naive ones.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from winiswin_pipelines.db.models import PositionEntryTime

_table = PositionEntryTime.__table__


def _aware_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"entry_time must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(dt.UTC)


def _upsert(symbol: str, entry_time: dt.datetime):
    statement = insert(_table).values(symbol=symbol, entry_time=_aware_utc(entry_time), updated_at=func.now())
    return statement.on_conflict_do_update(
        index_elements=[_table.c.symbol],
        set_={"entry_time": statement.excluded.entry_time, "updated_at": func.now()},
    )


def upsert_entry_time(conn: Connection, symbol: str, entry_time: dt.datetime) -> None:
    conn.execute(_upsert(symbol, entry_time))


def get_all_entry_times(conn: Connection) -> dict[str, dt.datetime]:
    rows = conn.execute(select(_table.c.symbol, _table.c.entry_time))
    return {symbol: entry_time.astimezone(dt.UTC) for symbol, entry_time in rows}


async def async_upsert_entry_time(conn: AsyncConnection, symbol: str, entry_time: dt.datetime) -> None:
    await conn.execute(_upsert(symbol, entry_time))


async def async_delete_entry_time(conn: AsyncConnection, symbol: str) -> bool:
    return (await conn.execute(delete(_table).where(_table.c.symbol == symbol))).rowcount > 0
