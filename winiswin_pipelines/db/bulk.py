"""Bulk writes: binary COPY into a staging table, de-duplicate, one INSERT ... ON CONFLICT.

This is the one bulk writer of the project; every importer upserts through `copy_upsert`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import pandas as pd
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert

from winiswin_pipelines.db.models import DAILY_PARTITIONED_TABLES, Base
from winiswin_pipelines.db.partitions import ensure_daily_partitions


@dataclass(frozen=True)
class UpsertResult:
    """What one upsert did: staged = inserted + updated + unchanged + duplicates."""

    staged: int
    inserted: int
    updated: int
    unchanged: int
    duplicates: int

    def __add__(self, other: UpsertResult) -> UpsertResult:
        return UpsertResult(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[int, ...]:
        return (self.staged, self.inserted, self.updated, self.unchanged, self.duplicates)

    @property
    def rows(self) -> int:
        """Distinct rows written (a key repeated in the input counts once)."""
        return self.staged - self.duplicates

    def counts(self) -> dict[str, int]:
        return {"inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged}


EMPTY_RESULT = UpsertResult(0, 0, 0, 0, 0)
_JSONB_OID = 3802


def copy_upsert(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    conflict_columns: Sequence[str],
    update_columns: Sequence[str] | None = None,
    update_where: str | None = None,
    fill_only: bool = False,
) -> UpsertResult:
    """Upsert `rows` (tuples in `columns` order) into `table` inside the caller's transaction.

    Within the batch the last row of a key wins (earlier ones count as duplicates). Rows equal to
    what is stored are left untouched (counted as unchanged), so re-running a load changes nothing.
    `update_columns` defaults to every non-key column; `updated_at` is refreshed on real updates.
    `update_where` is an extra SQL condition on the stored row `t` and `EXCLUDED` that a conflicting
    row must meet to be updated (the rows it keeps count as unchanged). With `fill_only`, the merge
    goes column by column: a stored value is never replaced, only a stored NULL is filled from the
    incoming row (how an archived copy merges with the hot rows of its day: nothing erases what
    either holds). A `bytes` value in a JSONB column is taken as already-serialised JSON text.
    Daily partitions of partitioned tables are created for the days the rows fall on.
    """
    raw = conn.connection.driver_connection
    stage = f"_stage_{table}"  # the rows plus `_ord`, their position in `rows`
    table_columns = Base.metadata.tables[table].columns
    updates = list(update_columns if update_columns is not None else [c for c in columns if c not in conflict_columns])
    ident = sql.Identifier
    col_list = sql.SQL(", ").join(map(ident, columns))
    with raw.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(stage)))
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {}, 0::bigint AS _ord FROM {} WITH NO DATA").format(
                ident(stage), col_list, ident(table)
            )
        )
    keys = _KeyTracker([columns.index(c) for c in conflict_columns])
    copy_rows(conn, stage, [*columns, "_ord"], keys.numbered(rows))
    if table in DAILY_PARTITIONED_TABLES:
        _ensure_partitions_for_stage(conn, table, stage)
    existing, affected = _merge(
        conn, table, stage, columns, conflict_columns, updates, table_columns, update_where,
        deduplicate=keys.duplicates > 0, fill_only=fill_only,
    )
    distinct = keys.staged - keys.duplicates
    inserted = distinct - existing
    return UpsertResult(
        staged=keys.staged, inserted=inserted, updated=affected - inserted,
        unchanged=distinct - affected, duplicates=keys.duplicates,
    )


class _KeyTracker:
    """Numbers rows (`_ord`: the last row of a key wins) and counts repeated keys on the way to the
    staging table, so a batch without duplicates skips the de-duplicating sort."""

    def __init__(self, positions: list[int]):
        self._key = itemgetter(*positions)
        self._seen: set = set()
        self.staged = 0
        self.duplicates = 0

    def numbered(self, rows: Iterable[Sequence[Any]]) -> Iterator[tuple[Any, ...]]:
        seen, key = self._seen, self._key
        for row in rows:
            k = key(row)
            if k in seen:
                self.duplicates += 1
            else:
                seen.add(k)
            self.staged += 1
            yield (*row, self.staged)


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Binary COPY of `rows` (tuples in `columns` order) into `table` as they are, no conflict
    handling; returns how many. A `bytes` value in a JSONB column is taken as JSON text."""
    ident = sql.Identifier
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        ident(table), sql.SQL(", ").join(map(ident, columns))
    )
    count = 0
    with conn.connection.driver_connection.cursor() as cur:
        oids = _column_oids(cur, table, columns)
        with cur.copy(statement) as copy:
            copy.set_types(oids)
            for row in _wrap_json(rows, [i for i, oid in enumerate(oids) if oid == _JSONB_OID]):
                copy.write_row(row)
                count += 1
    return count


def _column_oids(cur, table: str, columns: Sequence[str]) -> list[int]:
    # Binary COPY needs each column's exact type: read it from the table itself.
    found = dict(
        cur.execute(
            "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
            (table,),
        ).fetchall()
    )
    return [found[c] for c in columns]


def _wrap_json(rows: Iterable[Sequence[Any]], positions: list[int]) -> Iterator[Sequence[Any]]:
    if not positions:
        yield from rows
        return
    for row in rows:
        row = list(row)
        for i in positions:
            if row[i] is not None:
                row[i] = Jsonb(row[i], dumps=_as_is) if isinstance(row[i], bytes) else Jsonb(row[i])
        yield row


def _as_is(data: bytes) -> bytes:
    return data


def _ensure_partitions_for_stage(conn: Connection, table: str, stage: str) -> None:
    column = DAILY_PARTITIONED_TABLES[table]
    days = conn.execute(text(f'SELECT DISTINCT ("{column}" AT TIME ZONE \'UTC\')::date FROM "{stage}"')).scalars()
    ensure_daily_partitions(conn, table, [d for d in days if d is not None])


def _merge(
    conn, table, stage, columns, conflict_columns, updates, table_columns, update_where=None, *, deduplicate=True,
    fill_only=False,
) -> tuple[int, int]:
    """(keys already stored, rows inserted or updated) of one INSERT ... ON CONFLICT from the staging table."""
    ident = sql.Identifier
    cols = sql.SQL(", ").join(map(ident, columns))
    keys = sql.SQL(", ").join(map(ident, conflict_columns))
    if updates:
        template = "COALESCE(t.{0}, EXCLUDED.{0})" if fill_only else "EXCLUDED.{0}"
        new_values = [sql.SQL(template).format(ident(c)) for c in updates]
        assignments = [sql.SQL("{} = {}").format(ident(c), value) for c, value in zip(updates, new_values, strict=True)]
        if "updated_at" in table_columns and "updated_at" not in updates:
            assignments.append(sql.SQL("updated_at = now()"))
        changed = sql.SQL("({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in updates), sql.SQL(", ").join(new_values),
        )
        if update_where:
            changed = sql.SQL("{} AND ({})").format(changed, sql.SQL(update_where))
        action = sql.SQL("DO UPDATE SET {} WHERE {}").format(sql.SQL(", ").join(assignments), changed)
    else:
        action = sql.SQL("DO NOTHING")
    source = ident(stage)
    prelude = sql.SQL("")
    if deduplicate:  # the last staged row of a key wins
        source = ident("batch")
        prelude = sql.SQL("batch AS (SELECT DISTINCT ON ({keys}) {cols} FROM {stage} ORDER BY {keys}, _ord DESC), ").format(
            keys=keys, cols=cols, stage=ident(stage)
        )
    # All CTEs see one snapshot: `existing` counts the keys already stored before this insert.
    statement = sql.SQL(
        "WITH {prelude}existing AS (SELECT count(*) AS n FROM {source} JOIN {table} USING ({keys})), "
        "merged AS (INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {source} ON CONFLICT ({keys}) {action} "
        "RETURNING 1) "
        "SELECT (SELECT n FROM existing), (SELECT count(*) FROM merged)"
    ).format(prelude=prelude, keys=keys, cols=cols, source=source, table=ident(table), action=action)
    with conn.connection.driver_connection.cursor() as cur:
        existing, affected = cur.execute(statement).fetchone()
    return existing, affected


def replace_row(conn: Connection, model: type, values: dict[str, Any]) -> None:
    """Insert `values` as a row of `model`'s table, or replace the columns given of the row with the
    same primary key (a session or capture started again starts afresh)."""
    keys = [column.name for column in model.__table__.primary_key]
    statement = insert(model).values(**values)
    conn.execute(statement.on_conflict_do_update(
        index_elements=keys, set_={name: statement.excluded[name] for name in values if name not in keys},
    ))


def upsert_frame(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    frame: pd.DataFrame,
    *,
    conflict_columns: Sequence[str],
    batch_size: int = 100_000,
    **merge: Any,
) -> UpsertResult:
    """`copy_upsert` of a DataFrame's `columns`, `batch_size` rows at a time (so memory stays flat),
    inside the caller's transaction; `merge` takes copy_upsert's `update_columns` and `update_where`."""
    result = EMPTY_RESULT
    for begin in range(0, len(frame), batch_size):
        rows = dataframe_rows(frame.iloc[begin : begin + batch_size], columns)
        result += copy_upsert(conn, table, columns, rows, conflict_columns=conflict_columns, **merge)
    return result


def dataframe_rows(frame: pd.DataFrame, columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """Rows of `frame` as tuples for `copy_upsert`: NaN/NaT become NULL, timestamps aware datetimes."""
    converted = []
    for name in columns:
        series = frame[name]
        if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(series):
            # One conversion for the column: a Timestamp per value costs ~3 µs, 10x more.
            values = [None if v is pd.NaT else v for v in series.dt.to_pydatetime().tolist()]
        elif pd.api.types.is_float_dtype(series):
            values = series.tolist()
            if series.isna().any():  # the per-value pass only where a NULL is needed
                values = [None if math.isnan(v) else v for v in values]
        else:
            values = [None if _is_missing(v) else v for v in series.tolist()]
        converted.append(values)
    return zip(*converted, strict=True)


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NaT:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return False
