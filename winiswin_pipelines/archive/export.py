"""Streaming reads from PostgreSQL straight into Arrow record batches.

The ADBC PostgreSQL driver (Apache Arrow) runs the query as a binary `COPY ... TO STDOUT` and
decodes it in C++ into record batches of bounded size, so a day of a million rows never sits in
Python objects. Only the mechanics live here: the statements (the query, and the ones that join a
snapshot exported by another transaction, which lets the archiver delete exactly the rows it
exported) are built in `archive.repository`. Exports select arrays as `array_send` bytes and
decode them with numpy (`decode_float8_arrays`), which costs half the CPU of the driver's
element-by-element decoding of the ten-level book arrays.
"""

from __future__ import annotations

import atexit
import math
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import pyarrow as pa
from sqlalchemy.engine import URL

from winiswin_pipelines.db.manager import DatabaseManager

# Bounds the size of each record batch read from the COPY stream.
BATCH_BYTES = 16 * 1024 * 1024


def libpq_uri(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def arrow_reader(manager: DatabaseManager, query: str, *, setup: Sequence[str] = ()) -> Iterator[pa.RecordBatchReader]:
    """A streaming reader of `query`'s rows, on a connection of its own that first runs `setup`
    (e.g. the statements that open a transaction in an exported snapshot)."""
    with adbc.connect(libpq_uri(manager.url), autocommit=True) as conn, conn.cursor() as cursor:
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
        for statement in setup:
            cursor.execute(statement)
        cursor.execute(query)  # any transaction `setup` opened ends with the connection
        yield cursor.fetch_record_batch()


# Bounded reads (history windows) reuse idle connections: connecting and authenticating costs more
# than reading an hour of rows, and a backtest reads one window at a time. Closed at exit.
_idle: dict[str, list[adbc.Connection]] = {}
_idle_lock = threading.Lock()


@contextmanager
def _idle_connection(uri: str) -> Iterator[tuple[adbc.Connection, bool]]:
    """An idle connection to `uri` (or a new one), and whether it was used before; it goes back to
    the idle ones after a success, and is closed after a failure (its state is unknown)."""
    with _idle_lock:
        idle = _idle.get(uri)
        conn = idle.pop() if idle else None
    reused = conn is not None
    conn = conn or adbc.connect(uri, autocommit=True)
    try:
        yield conn, reused
    except BaseException:
        with suppress(Exception):
            conn.close()
        raise
    with _idle_lock:
        _idle.setdefault(uri, []).append(conn)


@atexit.register
def _close_idle_connections() -> None:
    with _idle_lock:
        for conn in (conn for idle in _idle.values() for conn in idle):
            with suppress(Exception):
                conn.close()
        _idle.clear()


def read_arrow(manager: DatabaseManager, query: str, schema: pa.Schema) -> pa.Table:
    """All rows of `query` as one table cast to `schema` (for bounded reads such as a history window)."""
    reused = False
    try:
        with _idle_connection(libpq_uri(manager.url)) as (conn, reused), conn.cursor() as cursor:
            cursor.execute(query)
            table = cursor.fetch_arrow_table()
    except adbc.OperationalError:
        if not reused:
            raise
        return read_arrow(manager, query, schema)  # the idle connection had gone stale: once more, anew
    return table.select(schema.names).cast(schema)


# `array_send(float8[])`: ndim, has-null flag, element type, (length, lower bound) per dimension,
# then each element as a 4-byte length (-1: NULL) and 8 big-endian bytes.
_FLOAT8_OID = 701
_HEADER_1D = 20
_ELEMENT = 12


def _be_int32(data: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return data[positions[:, None] + np.arange(4)].view(">i4").ravel().astype(np.int64)


def _parse_array(raw: bytes) -> list[float | None]:
    """Any float8[] (NULL elements, several dimensions, flattened) the slow, general way."""
    ndim, _, element_type = struct.unpack_from(">iii", raw, 0)
    if element_type != _FLOAT8_OID:
        raise ValueError(f"expected a float8[] value, got element type oid {element_type}")
    count = math.prod(struct.unpack_from(f">{2 * ndim}i", raw, 12)[0::2]) if ndim else 0
    position, values = 12 + 8 * ndim, []
    for _ in range(count):
        (length,) = struct.unpack_from(">i", raw, position)
        position += 4
        if length == -1:
            values.append(None)
        else:
            values.append(struct.unpack_from(">d", raw, position)[0])
            position += 8
    return values


def _decode_same_depth(offsets: np.ndarray, data: np.ndarray, count: int) -> pa.ListArray | None:
    """Every row a 1-D array of the same depth without NULLs (the book levels): one strided copy."""
    lengths = np.diff(offsets)
    size = int(lengths[0])
    if (lengths != size).any() or size < _HEADER_1D or (size - _HEADER_1D) % _ELEMENT:
        return None
    width = (size - _HEADER_1D) // _ELEMENT
    rows = data[offsets[0]:offsets[-1]].reshape(count, size)
    header = rows[:, :_HEADER_1D].copy().view(">i4")  # ndim, has-null, element type, length, lower bound
    if (header[:, 0] != 1).any() or header[:, 1].any() or (header[:, 2] != _FLOAT8_OID).any() or (
        header[:, 3] != width
    ).any():
        return None
    values = rows[:, _HEADER_1D:].reshape(count, width, _ELEMENT)[:, :, 4:].copy().view(">f8").astype(np.float64)
    return pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * width), pa.array(values.ravel()))


def decode_float8_arrays(sent: pa.Array) -> pa.ListArray:
    """`array_send(<float8[] column>)` values as list<double>, vectorised with numpy.

    ADBC decodes arrays one element at a time, which made it the slowest step of an export; a
    bytea is copied whole. Batches of same-depth 1-D arrays (every book level array) take one
    strided copy, other 1-D arrays a numpy gather, and arrays with NULL elements or several
    dimensions (flattened) `_parse_array`.
    """
    _, offset_buffer, data_buffer = sent.buffers()
    offsets = np.frombuffer(offset_buffer, np.int32, len(sent) + 1, sent.offset * 4).astype(np.int64)
    data = np.frombuffer(data_buffer or b"", np.uint8)
    if len(sent) and not sent.null_count:
        same_depth = _decode_same_depth(offsets, data, len(sent))
        if same_depth is not None:
            return same_depth
    valid = sent.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(valid)
    ndim, has_null = _be_int32(data, offsets[rows]), _be_int32(data, offsets[rows] + 4)
    fast = rows[(ndim == 1) & (has_null == 0)]
    slow = rows[(ndim > 1) | ((ndim == 1) & (has_null != 0))]
    counts = np.zeros(len(sent), np.int64)
    counts[fast] = _be_int32(data, offsets[fast] + 12)
    if (np.diff(offsets)[fast] != _HEADER_1D + _ELEMENT * counts[fast]).any():
        raise ValueError("unexpected array_send layout for a float8[] column")
    slow_values = {int(row): _parse_array(sent[int(row)].as_py()) for row in slow}
    for row, values in slow_values.items():
        counts[row] = len(values)
    list_offsets = np.concatenate(([0], np.cumsum(counts)))
    values = np.empty(list_offsets[-1], np.float64)
    element_null = np.zeros(len(values), bool)
    widths = counts[fast]
    index = np.arange(widths.sum()) - np.repeat(np.cumsum(widths) - widths, widths)
    source = np.repeat(offsets[fast] + _HEADER_1D + 4, widths) + _ELEMENT * index
    values[np.repeat(list_offsets[fast], widths) + index] = data[source[:, None] + np.arange(8)].view(">f8").ravel()
    for row, row_values in slow_values.items():
        for position, value in enumerate(row_values, start=int(list_offsets[row])):
            values[position] = 0.0 if value is None else value
            element_null[position] = value is None
    return pa.ListArray.from_arrays(
        pa.array(list_offsets, pa.int32()), pa.array(values, mask=element_null if element_null.any() else None),
        mask=pa.array(~valid),
    )


def decode_sent_arrays(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Turn the `array_send(...)` columns of a batch back into the list<double> columns of `schema`."""
    columns = [
        decode_float8_arrays(column) if pa.types.is_binary(column.type) and pa.types.is_list(schema.field(name).type)
        else column
        for name, column in zip(batch.schema.names, batch.columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
