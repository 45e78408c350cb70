"""Readers: every legacy store as a stream of raw records, each with its position in the file.

A record that cannot even be parsed comes out as `Rejected` (with the reason and its raw text) and
the stream goes on; only a missing file raises. Inputs are opened read-only; SQLite files are read
from a temporary copy, so not even a `-shm` file appears next to them.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import json
import re
import shutil
import sqlite3
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from winiswin_pipelines.legacy.records import LegacySourceError, RawRecord, Rejected, safe_text
from winiswin_pipelines.legacy.sniff import BOM, SQLITE_TRADE_TABLES, Store, StoreFormat

_NAN_TOKEN = re.compile(rb"(?<![\w\"])-?(NaN|Infinity)(?![\w\"])")
_WHOLE_FILE_LIMIT = 16 * 1024 * 1024  # raw text kept for a whole unreadable file

# ml_data/positions.csv: the full layout (the committed examples' header) and the layout of a flush
# that held only OPEN events, written without a header (DataArchiver appends with header=False).
POSITIONS_COLUMNS: tuple[str, ...] = (
    "event", "timestamp", "position_id", "is_virtual", "symbol", "direction", "entry_price",
    "exit_price", "stop_loss", "take_profit", "quantity", "leverage", "confidence", "pnl", "pnl_pct",
    "close_reason", "won", "trend_alignment_score", "market_structure_score", "price_position_score",
    "momentum_score", "volatility_score", "rsi", "macd", "atr", "bb_width_pct", "order_blocks_count",
    "liquidity_zones_count", "holding_duration_minutes",
)
_CLOSE_ONLY_COLUMNS = frozenset({"exit_price", "pnl", "pnl_pct", "close_reason", "won", "holding_duration_minutes"})
POSITIONS_OPEN_COLUMNS = tuple(c for c in POSITIONS_COLUMNS if c not in _CLOSE_ONLY_COLUMNS)

SQLITE_VARIANTS = {"trade_history": ("sqlite-v1", "sqlite-v2"), "current_positions": ("sqlite-v2-current",) * 2}


def read_records(store: Store) -> Iterator[RawRecord | Rejected]:
    """Every record of `store`, in file order."""
    if not store.path.is_file():
        raise LegacySourceError(f"legacy store not found: {store.path}")
    readers = {
        StoreFormat.JSONL: _read_jsonl_file,
        StoreFormat.JSONL_GZ: _read_jsonl_gz,
        StoreFormat.JSON_ARRAY: _read_json_array,
        StoreFormat.JSON_OBJECT: _read_json_object,
        StoreFormat.SQLITE: _read_sqlite,
        StoreFormat.POSITIONS_CSV: _read_positions_csv,
        StoreFormat.EMPTY: lambda path: iter(()),
        StoreFormat.UNRECOGNISED: _read_unrecognised,
    }
    return readers[store.format](store.path)


def count_records(store: Store) -> int:
    """How many records `store` holds, counted independently of the parsers (lines for JSON lines)."""
    if store.format is StoreFormat.JSONL:
        with store.path.open("rb") as handle:
            return _count_lines(handle)
    if store.format is StoreFormat.JSONL_GZ:
        try:
            with gzip.open(store.path, "rb") as handle:
                return _count_lines(handle)
        except (OSError, EOFError, zlib.error):
            pass  # damaged stream: count the way the reader reads it
    return sum(1 for _ in read_records(store))


def _count_lines(handle: IO[bytes]) -> int:
    count, last = 0, b"\n"
    while chunk := handle.read(1 << 20):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    return count + (last != b"\n")


# JSON lines -------------------------------------------------------------------------------------


def _read_jsonl_file(path: Path) -> Iterator[RawRecord | Rejected]:
    with path.open("rb") as handle:
        yield from read_jsonl_lines(handle)


def _read_jsonl_gz(path: Path) -> Iterator[RawRecord | Rejected]:
    number = 0
    try:
        with gzip.open(path, "rb") as handle:
            for record in read_jsonl_lines(handle):
                number += 1
                yield record
    except (OSError, EOFError, zlib.error) as exc:
        yield Rejected(f"after line {number}", f"damaged gzip stream: {exc}", "")


def read_jsonl_lines(lines: Iterable[bytes], first_number: int = 1, first_offset: int = 0) -> Iterator[RawRecord | Rejected]:
    """JSON lines (each with its newline) numbered from `first_number`, the first at byte `first_offset`."""
    offset = first_offset
    for number, line in enumerate(lines, first_number):
        yield jsonl_record(number, offset, line)
        offset += len(line)


def jsonl_record(number: int, offset: int, line: bytes) -> RawRecord | Rejected:
    """Line `number` of a JSON lines file (with its newline), at byte `offset`."""
    pointer = {"line": number, "offset": offset, "length": len(line.removesuffix(b"\n"))}
    body = line.strip()
    flags: tuple[str, ...] = ()
    if body.startswith(BOM):
        body, flags = body[3:].lstrip(), ("byte order mark removed",)
    if not body:
        return Rejected(f"line {number}", "empty line", safe_text(line), size=len(line))
    return _parse_json(f"line {number}", body, flags, len(line), pointer)


def _parse_json(
    position: str, body: bytes, flags: tuple[str, ...], size: int, pointer: dict[str, int]
) -> RawRecord | Rejected:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Rejected(position, json_error_reason(body, exc), safe_text(body), size=size)
    if type(data) is not dict:
        return Rejected(position, f"not a JSON object but {_json_type(data)}", safe_text(body), size=size)
    if b"\\u0000" in body:
        return Rejected(position, "contains a \\u0000 character, which PostgreSQL cannot store", safe_text(body), size=size)
    return RawRecord(position, data, body, size, flags, pointer=pointer)


def json_error_reason(body: bytes | str, exc: Exception) -> str:
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"bad encoding: not UTF-8 ({bad.reason} at byte {bad.start})"
    if _NAN_TOKEN.search(raw):
        return "NaN or Infinity value (not valid JSON)"
    return f"invalid or truncated JSON: {exc}"


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")


# JSON documents ---------------------------------------------------------------------------------


def _read_json_array(path: Path) -> Iterator[RawRecord | Rejected]:
    content = path.read_bytes()
    try:
        items = orjson.loads(content.removeprefix(BOM))
    except orjson.JSONDecodeError:
        yield from _salvage_json_array(content.removeprefix(BOM).decode("utf-8", "surrogateescape"))
        return
    if not isinstance(items, list):
        yield Rejected("file", f"expected a JSON array, found {_json_type(items)}", safe_text(content))
        return
    for index, item in enumerate(items):
        yield _document_item(f"item {index}", item, {"item": index})


def _salvage_json_array(text: str) -> Iterator[RawRecord | Rejected]:
    """Items of a damaged array one by one: the good ones migrate, the damaged rest is kept in quarantine."""
    decoder = json.JSONDecoder()  # lenient on NaN only to find item boundaries; orjson re-checks each item
    pos, index = _skip(text, text.find("[") + 1), 0
    while pos < len(text) and text[pos] != "]":
        try:
            _, end = decoder.raw_decode(text, pos)
        except ValueError as exc:
            yield Rejected(f"item {index} to end", f"truncated or invalid JSON array: {exc}", safe_text(text[pos:]))
            return
        chunk = text[pos:end]
        try:
            yield _document_item(f"item {index}", orjson.loads(chunk), {"item": index})
        except orjson.JSONDecodeError as exc:
            yield Rejected(f"item {index}", json_error_reason(chunk, exc), safe_text(chunk))
        pos, index = _skip(text, end), index + 1


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n,":
        pos += 1
    return pos


def _read_json_object(path: Path) -> Iterator[RawRecord | Rejected]:
    content = path.read_bytes()
    try:
        document = orjson.loads(content.removeprefix(BOM))
    except orjson.JSONDecodeError as exc:
        yield Rejected("file", json_error_reason(content.removeprefix(BOM), exc), safe_text(content))
        return
    if not isinstance(document, dict):
        yield Rejected("file", f"expected a JSON object, found {_json_type(document)}", safe_text(content))
        return
    for key, item in document.items():
        yield _document_item(_key_position(key), item, {"key": key})


def _key_position(key: str) -> str:
    # legacy_quarantine.position is VARCHAR(64) text: odd or long keys are named by their hash.
    if len(key) <= 56 and key.isprintable():
        return f"key {key}"
    return f"key sha1:{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


def _document_item(position: str, item: object, pointer: dict[str, Any]) -> RawRecord | Rejected:
    raw = orjson.dumps(item)
    if not isinstance(item, dict):
        return Rejected(position, f"not a JSON object but {_json_type(item)}", safe_text(raw))
    if b"\\u0000" in raw:
        return Rejected(position, "contains a \\u0000 character, which PostgreSQL cannot store", safe_text(raw))
    return RawRecord(position, item, raw, pointer=pointer)


# SQLite -----------------------------------------------------------------------------------------


def _read_sqlite(path: Path) -> Iterator[RawRecord | Rejected]:
    with tempfile.TemporaryDirectory(prefix="legacy_sqlite_") as folder:
        copy = Path(folder) / path.name
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.is_file():  # uncommitted pages of a WAL database live there
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        try:
            conn = sqlite3.connect(copy)
        except sqlite3.DatabaseError as exc:
            yield _unreadable_file(path, f"corrupt SQLite database: {exc}")
            return
        try:
            yield from _read_sqlite_tables(conn, path)
        finally:
            conn.close()


def _read_sqlite_tables(conn: sqlite3.Connection, path: Path) -> Iterator[RawRecord | Rejected]:
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        yield _unreadable_file(path, f"corrupt SQLite database: {exc}")
        return
    for table in (t for t in SQLITE_TRADE_TABLES if t in tables):
        yield from _read_sqlite_table(conn, table, path)


def _read_sqlite_table(conn: sqlite3.Connection, table: str, path: Path) -> Iterator[RawRecord | Rejected]:
    last_id = None
    try:
        cursor = conn.execute(f'SELECT rowid AS "_rowid", * FROM "{table}" ORDER BY rowid')
        names = [d[0] for d in cursor.description]
        variant = SQLITE_VARIANTS[table]["trade_uid" in names]
        for values in cursor:
            row = {name: _sqlite_value(v) for name, v in zip(names, values, strict=True)}
            last_id = row.pop("_rowid")
            yield RawRecord(f"{table} row {last_id}", row, orjson.dumps(row), variant=variant,
                            pointer={"table": table, "row": last_id})
    except sqlite3.DatabaseError as exc:
        where = f"{table} after row {last_id}" if last_id is not None else table
        yield Rejected(where, f"corrupt SQLite table {table}: {exc}", _file_text(path))


def _sqlite_value(value: object) -> object:
    return value.hex() if isinstance(value, bytes) else value


def _unreadable_file(path: Path, reason: str) -> Rejected:
    return Rejected("file", reason, _file_text(path))


def _file_text(path: Path) -> str:
    """A binary file as text for quarantine: base64, so nothing is lost (capped for huge files)."""
    with path.open("rb") as handle:
        content = handle.read(_WHOLE_FILE_LIMIT + 1)
    note = "" if len(content) <= _WHOLE_FILE_LIMIT else f" (first {_WHOLE_FILE_LIMIT} bytes)"
    return f"base64{note}:" + base64.b64encode(content[:_WHOLE_FILE_LIMIT]).decode()


# positions CSV ----------------------------------------------------------------------------------


def _read_positions_csv(path: Path) -> Iterator[RawRecord | Rejected]:
    header = POSITIONS_COLUMNS
    offset = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            position = f"line {number}"
            pointer = {"line": number, "offset": offset, "length": len(line.removesuffix(b"\n"))}
            offset += len(line)
            try:
                text = line.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
            except UnicodeDecodeError as bad:
                yield Rejected(position, f"bad encoding: not UTF-8 ({bad.reason} at byte {bad.start})", safe_text(line))
                continue
            if not text.strip():
                yield Rejected(position, "empty line", text, size=len(line))
                continue
            fields = next(csv.reader([text]))
            if number == 1 and fields[0].strip() == "event":
                header = tuple(f.strip() for f in fields)
                continue
            yield _positions_row(position, fields, header, text, len(line), pointer)


def _positions_row(
    position: str, fields: list[str], header: tuple[str, ...], text: str, size: int, pointer: dict[str, int]
) -> RawRecord | Rejected:
    layout = next((cols for cols in (header, POSITIONS_COLUMNS, POSITIONS_OPEN_COLUMNS) if len(cols) == len(fields)), None)
    if layout is None:
        return Rejected(
            position,
            f"misaligned row: {len(fields)} fields, expected {len(POSITIONS_COLUMNS)} "
            f"(or {len(POSITIONS_OPEN_COLUMNS)} for an open event)",
            text, size=size,
        )
    row = dict(zip(layout, fields, strict=True))
    event = row.get("event", "").strip().upper()
    if event not in ("OPEN", "CLOSE"):
        return Rejected(position, f"unknown event {row.get('event', '')[:40]!r} (expected OPEN or CLOSE)", text, size=size)
    return RawRecord(position, row, None, size, variant=f"positions-{event.lower()}", pointer=pointer)


# unrecognised content ---------------------------------------------------------------------------


def _read_unrecognised(path: Path) -> Iterator[Rejected]:
    yield _unreadable_file(path, "unrecognised content: not JSON lines, JSON, SQLite or a positions CSV")
