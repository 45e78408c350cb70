"""Parquet files of one table and UTC day, and the content fingerprint that proves a copy is whole.

Pure logic: pyarrow, numpy and pandas, no database and no Dagster. Files are zstd-compressed with
row groups of `ROW_GROUP_ROWS` rows, timestamps stay `timestamp[us, UTC]`, and a day larger than
`rows_per_file` rolls over to the next `part-NNNNN.parquet`.

The fingerprint hashes every value of every row (position in a list included) into one 64-bit
word per row and adds the words up modulo 2**64, twice with different mixing. It depends on the
content only, not on row order, batch or row-group boundaries, so the rows exported from
PostgreSQL and the rows read back from storage compare equal exactly when they are the same rows.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from winiswin_pipelines.coldstore import sha256_file

ROW_GROUP_ROWS = 128 * 1024
ROWS_PER_FILE = 8_000_000
COMPRESSION = "zstd"
_MASK = (1 << 64) - 1
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL_WORD = np.uint64(0x6E756C6C6E756C6C)
_SECOND_PASS = np.uint64(0xD6E8FEB86659FD93)


def prefetched(items: Iterable, depth: int = 3) -> Iterator:
    """Iterate `items` produced by a background thread, at most `depth` ahead.

    Reading (a COPY stream, Parquet decoding) releases the GIL, so it overlaps with the caller's
    writing and hashing on the other core; the bounded queue bounds the memory.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            buffer.put(exc)

    worker = threading.Thread(target=produce, name="winiswin-prefetch", daemon=True)
    worker.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def day_prefix(table: str, day: dt.date) -> str:
    """The Hive-style folder of one table and day: `table=<name>/date=YYYY-MM-DD`."""
    return f"table={table}/date={day.isoformat()}"


def part_key(table: str, day: dt.date, part: int) -> str:
    return f"{day_prefix(table, day)}/part-{part:05d}.parquet"


def _mix(words: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser; uint64 array arithmetic wraps modulo 2**64 as intended.
    words = words ^ (words >> np.uint64(30))
    words = words * _M1
    words = words ^ (words >> np.uint64(27))
    words = words * _M2
    return words ^ (words >> np.uint64(31))


def _with_nulls(array: pa.Array, words: np.ndarray) -> np.ndarray:
    if array.null_count == 0:
        return words
    return np.where(array.is_valid().to_numpy(zero_copy_only=False), words, _NULL_WORD)


def _scalar_words(array: pa.Array) -> np.ndarray:
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        encoded = array.dictionary_encode()
        uniques = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
        hashes = pd.util.hash_array(uniques, categorize=False) if len(uniques) else np.zeros(0, np.uint64)
        indices = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
        return _with_nulls(array, hashes[indices] if len(hashes) else np.zeros(len(array), np.uint64))
    if pa.types.is_timestamp(kind) or pa.types.is_date64(kind):
        array = array.view(pa.int64())
    elif pa.types.is_date32(kind):
        array = array.view(pa.int32())
    # Nulls filled first, so a column converts to the same numpy dtype with or without them.
    filled = array.fill_null(False if pa.types.is_boolean(array.type) else 0) if array.null_count else array
    values = filled.to_numpy(zero_copy_only=False)
    words = values.view(np.uint64) if values.dtype == np.float64 else values.astype(np.int64).view(np.uint64)
    return _with_nulls(array, words)


def _position_weights(count: int) -> np.ndarray:
    # Odd 64-bit multipliers, one per position in a list, so equal values at different positions differ.
    return _mix(np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN) | np.uint64(1)


def _list_words(array: pa.ListArray) -> np.ndarray:
    """Per row: the values' words weighted by their position, summed, plus the list's length."""
    offsets = array.offsets.to_numpy().astype(np.int64)
    relative = offsets - offsets[0]
    lengths = np.diff(relative)
    value_words = _scalar_words(array.values.slice(offsets[0], relative[-1]))
    if len(lengths) and lengths[0] > 0 and (lengths == lengths[0]).all():  # fixed depth (book levels): a matrix product
        width = int(lengths[0])
        sums = (value_words.reshape(-1, width) * _position_weights(width)).sum(axis=1, dtype=np.uint64)
    else:
        positions = np.arange(relative[-1], dtype=np.int64) - np.repeat(relative[:-1], lengths)
        weighted = value_words * _position_weights(int(lengths.max(initial=0)))[positions]
        running = np.concatenate((np.zeros(1, np.uint64), np.cumsum(weighted, dtype=np.uint64)))
        sums = running[relative[1:]] - running[relative[:-1]]
    return _with_nulls(array, sums + lengths.astype(np.uint64) * _M1)


def row_hashes(batch: pa.RecordBatch) -> np.ndarray:
    """One 64-bit word per row, from every column's value (column position included)."""
    combined = np.zeros(batch.num_rows, np.uint64)
    for position, column in enumerate(batch.columns):
        words = _list_words(column) if pa.types.is_list(column.type) else _scalar_words(column)
        combined += _mix(words ^ _mix(np.full(1, position + 1, np.uint64)))
    return _mix(combined)


@dataclass
class Fingerprint:
    """Order-independent digest of a set of rows: `<rows>:<two 64-bit sums in hex>`."""

    rows: int = 0
    first: int = 0
    second: int = 0

    def add(self, batch: pa.RecordBatch) -> None:
        hashes = row_hashes(batch)
        self.rows += batch.num_rows
        self.first = (self.first + int(hashes.sum(dtype=np.uint64))) & _MASK
        self.second = (self.second + int(_mix(hashes ^ _SECOND_PASS).sum(dtype=np.uint64))) & _MASK

    def merge(self, other: Fingerprint) -> Fingerprint:
        return Fingerprint(self.rows + other.rows, (self.first + other.first) & _MASK, (self.second + other.second) & _MASK)

    def __str__(self) -> str:
        return f"{self.rows}:{self.first:016x}{self.second:016x}"


@dataclass(frozen=True)
class WrittenPart:
    """One Parquet file as written: what verification must find again in storage."""

    part: int
    path: Path
    rows: int
    size: int
    sha256: str
    fingerprint: str
    arrow_bytes: int


@dataclass
class DayWriter:
    """Streams record batches of one table and day into zstd Parquet parts under `folder`."""

    folder: Path
    schema: pa.Schema
    rows_per_file: int = ROWS_PER_FILE
    row_group_rows: int = ROW_GROUP_ROWS
    parts: list[WrittenPart] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _pending: list[pa.RecordBatch] = field(default_factory=list)
    _pending_rows: int = 0
    _part_rows: int = 0
    _part_arrow_bytes: int = 0
    _fingerprint: Fingerprint = field(default_factory=Fingerprint)

    def write(self, batch: pa.RecordBatch) -> None:
        batch = batch.select(self.schema.names).cast(self.schema)
        while batch.num_rows:
            room = min(self.rows_per_file - self._part_rows - self._pending_rows, batch.num_rows)
            self._pending.append(batch.slice(0, room))
            self._pending_rows += room
            batch = batch.slice(room)
            if self._pending_rows >= self.row_group_rows or self._part_rows + self._pending_rows >= self.rows_per_file:
                self._flush()
            if self._part_rows >= self.rows_per_file:
                self._close_part()

    def close(self) -> list[WrittenPart]:
        self._flush()
        self._close_part()
        return self.parts

    def _path(self, part: int) -> Path:
        return self.folder / f"part-{part:05d}.parquet"

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        table = pa.Table.from_batches(self._pending, self.schema)
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Dictionaries pay off for the few distinct strings, not for prices and sizes; min/max
            # statistics (what readers prune row groups by) are kept for the scalar columns only.
            strings = [f.name for f in self.schema if pa.types.is_string(f.type)]
            scalars = [f.name for f in self.schema if not pa.types.is_list(f.type)]
            self._writer = pq.ParquetWriter(
                self._path(len(self.parts)), self.schema, compression=COMPRESSION, use_dictionary=strings,
                write_statistics=scalars,
            )
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        for batch in table.to_batches():
            self._fingerprint.add(batch)
        self._part_rows += table.num_rows
        self._part_arrow_bytes += table.nbytes
        self._pending, self._pending_rows = [], 0

    def _close_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        path = self._path(len(self.parts))
        self.parts.append(
            WrittenPart(
                part=len(self.parts), path=path, rows=self._part_rows, size=path.stat().st_size,
                sha256=sha256_file(path), fingerprint=str(self._fingerprint), arrow_bytes=self._part_arrow_bytes,
            )
        )
        self._writer, self._part_rows, self._part_arrow_bytes = None, 0, 0
        self._fingerprint = Fingerprint()


def combined_fingerprint(fingerprints: Iterable[str]) -> str:
    total = Fingerprint()
    for text in fingerprints:
        rows, sums = text.split(":")
        total = total.merge(Fingerprint(int(rows), int(sums[:16], 16), int(sums[16:], 16)))
    return str(total)


def iter_file_batches(path: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    parquet = pq.ParquetFile(path)
    for batch in prefetched(parquet.iter_batches(batch_size=ROW_GROUP_ROWS)):
        yield conform(batch, schema)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch`, written under an earlier schema of its table, in the table's `schema` now: a column
    added since is NULL, a column dropped since is left out, every other one cast to its type."""
    columns = [
        batch.column(field.name).cast(field.type) if field.name in batch.schema.names else pa.nulls(len(batch), field.type)
        for field in schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class FileContent:
    """What a Parquet file holds according to its footer and to its rows."""

    footer_rows: int
    fingerprint: str


def _row_group_fingerprint(path: Path, group: int, schema: pa.Schema) -> Fingerprint:
    fingerprint = Fingerprint()
    rows = pq.ParquetFile(path).read_row_group(group)
    # A file written under an earlier schema of its table is checked in its own columns, as it was written.
    if rows.schema.names == schema.names:
        rows = rows.cast(schema)
    for batch in rows.to_batches():
        fingerprint.add(batch)
    return fingerprint


def read_content(path: Path, schema: pa.Schema) -> FileContent:
    """Footer row count and the fingerprint of every row, read with the table's explicit schema.

    Row groups are decoded and hashed on two threads (both release the GIL), one file handle each.
    """
    metadata = pq.ParquetFile(path).metadata
    fingerprint = Fingerprint()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="winiswin-verify") as pool:
        for part in pool.map(lambda group: _row_group_fingerprint(path, group, schema), range(metadata.num_row_groups)):
            fingerprint = fingerprint.merge(part)
    return FileContent(metadata.num_rows, str(fingerprint))
