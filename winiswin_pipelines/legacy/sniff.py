"""Find the legacy trade stores in a folder, telling each file's real format from its content.

File names changed between eras (`data/trades.json` held JSON lines in winiswin2 and a JSON array
in the sibling repo), so the format comes from the bytes; a known store name only matters when the
content is unrecognisable: such a file is still migrated, every piece of it into quarantine.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sqlite3
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson

from winiswin_pipelines.legacy.records import LegacySourceError
from winiswin_pipelines.legacy.variants import classify, is_trade_variant

_HEAD_BYTES = 64 * 1024
_SNIFF_LINES = 20
_DOCUMENT_SNIFF_LIMIT = 256 * 1024 * 1024
_SOURCE_MAX = 64  # trades.source is VARCHAR(64)
SQLITE_MAGIC = b"SQLite format 3\x00"
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
SQLITE_TRADE_TABLES = ("current_positions", "trade_history")  # read in this order: history wins
KNOWN_STORE_NAMES = (
    "trades.json", "trades.jsonl", "trades_*.jsonl.gz", "trades_*.jsonl", "ml_training_data.json",
    "ml_pending_entries.json", "pending_entries.json", "partial_exits.json", "virtual_positions.json",
    "trading_data.db", "positions.csv", "*positions*.csv",
)
POSITIONS_CSV_FIRST_FIELDS = frozenset({"event", "OPEN", "CLOSE", "open", "close"})
NON_TRADE_CSV_HEADERS = {
    "timestamp,symbol,direction,confidence,accepted": "signals CSV (signals, not trades)",
    "trend_alignment_score,market_structure_score": "XGBoost training CSV (features, not trades)",
}


class StoreFormat(StrEnum):
    JSONL = "jsonl"
    JSONL_GZ = "jsonl.gz"
    JSON_ARRAY = "json-array"
    JSON_OBJECT = "json-object"
    SQLITE = "sqlite"
    POSITIONS_CSV = "positions-csv"
    EMPTY = "empty"
    UNRECOGNISED = "unrecognised"


@dataclass(frozen=True)
class Store:
    """One legacy trade store: a file under `root`, its format, and its `source` name in the database."""

    root: Path
    relpath: str
    format: StoreFormat

    @property
    def path(self) -> Path:
        return self.root / self.relpath

    @property
    def source(self) -> str:
        return source_name(self.relpath)


@dataclass(frozen=True)
class SkippedFile:
    """A file in the legacy folder that holds no trades, with why (reported, never silently ignored)."""

    relpath: str
    reason: str


def source_name(relpath: str) -> str:
    """`legacy:<path>`; long paths keep their tail and a hash so the name stays unique and fits."""
    name = f"legacy:{relpath}"
    if len(name) <= _SOURCE_MAX:
        return name
    digest = hashlib.sha1(relpath.encode()).hexdigest()[:8]
    return f"legacy:{digest}:{relpath[-(_SOURCE_MAX - 17):]}"


def legacy_files(legacy_dir: Path | str) -> tuple[Path, list[Path]]:
    """The resolved folder and every file under it (recursively, sorted by path), without reading them."""
    root = Path(legacy_dir).resolve()
    if not root.is_dir():
        raise LegacySourceError(f"legacy folder not found: {root} (set --legacy-dir or WINISWIN_LEGACY_DIR)")
    return root, sorted(p for p in root.rglob("*") if p.is_file())


def discover_stores(legacy_dir: Path | str) -> tuple[list[Store], list[SkippedFile]]:
    """Every trade store under `legacy_dir` (recursively, sorted by path) and the files skipped."""
    root, paths = legacy_files(legacy_dir)
    stores: list[Store] = []
    skipped: list[SkippedFile] = []
    for path in paths:
        found = sniff_file(root, path)
        (stores if isinstance(found, Store) else skipped).append(found)
    return stores, skipped


def store_for(legacy_dir: Path | str, relpath: str) -> Store:
    """The store at `relpath` under `legacy_dir`; a clear error when it is missing or holds no trades."""
    root = Path(legacy_dir).resolve()
    path = root / relpath
    if not path.is_file():
        raise LegacySourceError(f"legacy store not found: {path}")
    found = sniff_file(root, path)
    if isinstance(found, SkippedFile):
        raise LegacySourceError(f"{path} is not a legacy trade store: {found.reason}")
    return found


def sniff_file(root: Path, path: Path) -> Store | SkippedFile:
    relpath = path.relative_to(root).as_posix()
    fmt, reason = _sniff_content(path)
    if fmt is not None:
        return Store(root, relpath, fmt)
    if _is_known(path):
        return Store(root, relpath, StoreFormat.UNRECOGNISED)
    return SkippedFile(relpath, reason)


def _sniff_content(path: Path) -> tuple[StoreFormat | None, str]:
    for suffix in ("-wal", "-shm", "-journal"):
        if path.name.endswith(suffix):
            return None, f"part of the SQLite database {path.name.removesuffix(suffix)}"
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES)
    if head.startswith(SQLITE_MAGIC):
        return _sniff_sqlite(path)
    if head.startswith(GZIP_MAGIC):
        fmt, reason = _sniff_text(_gunzip_head(path), path, allow_document=False)
        return (StoreFormat.JSONL_GZ if fmt is StoreFormat.JSONL else None), f"gzip: {reason}"
    if not head.strip():
        return StoreFormat.EMPTY if _is_known(path) else None, "empty file"
    return _sniff_text(head, path, allow_document=True)


def _is_known(path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in KNOWN_STORE_NAMES)


def _gunzip_head(path: Path) -> bytes:
    # A decompressor, not gzip.open: a truncated stream still yields its readable beginning.
    with path.open("rb") as handle:
        compressed = handle.read(_HEAD_BYTES)
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(compressed, _HEAD_BYTES)
    except zlib.error:
        return b""


def _sniff_sqlite(path: Path) -> tuple[StoreFormat | None, str]:
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        return StoreFormat.SQLITE, "corrupt SQLite database"  # the reader quarantines it, with the error
    if tables & set(SQLITE_TRADE_TABLES):
        return StoreFormat.SQLITE, "SQLite trade database"
    return None, f"SQLite database without trade tables (tables: {', '.join(sorted(tables)) or 'none'})"


def _sniff_text(head: bytes, path: Path, *, allow_document: bool) -> tuple[StoreFormat | None, str]:
    text = head.removeprefix(BOM).lstrip()
    if not text:
        return None, "empty"
    first_line = text.split(b"\n", 1)[0].strip()
    if text[:1] == b"[" and allow_document:
        return _sniff_json_array(path, text)
    if text[:1] == b"{":
        return _sniff_json_lines_or_object(text, first_line, path, allow_document)
    if b"," in first_line:
        return _sniff_csv(first_line.decode("utf-8", "replace"))
    return None, "not a legacy trade store (plain text)"


def _sniff_json_lines_or_object(text: bytes, first_line: bytes, path: Path, allow_document: bool):
    variants = [classify(_loads_or_none(line)) for line in text.split(b"\n")[:_SNIFF_LINES] if line.strip()]
    if any(is_trade_variant(v) for v in variants):
        return StoreFormat.JSONL, "JSON lines"
    if any(v is not None for v in variants):
        return None, f"JSON lines of {next(v for v in variants if v is not None)} records (not trades)"
    if allow_document:
        document = _load_document(path)
        if isinstance(document, dict) and _is_keyed_trade_object(document):
            return StoreFormat.JSON_OBJECT, "JSON object keyed by id or symbol"
    return None, "JSON with no known trade record shape"


def _sniff_json_array(path: Path, head: bytes) -> tuple[StoreFormat | None, str]:
    first = _first_array_item(head)
    if first == [] or is_trade_variant(classify(first)):
        return StoreFormat.JSON_ARRAY, "JSON array"
    document = _load_document(path)  # the first item may be the damaged one: look further
    if isinstance(document, list) and any(is_trade_variant(classify(item)) for item in document[:_SNIFF_LINES]):
        return StoreFormat.JSON_ARRAY, "JSON array"
    return None, "JSON array with no known trade record shape"


def _is_keyed_trade_object(document: dict) -> bool:
    values = list(document.values())[:_SNIFF_LINES]
    return all(isinstance(v, dict) for v in values) and (not values or any(is_trade_variant(classify(v)) for v in values))


def _sniff_csv(first_line: str) -> tuple[StoreFormat | None, str]:
    header = first_line.lstrip("\ufeff")
    for prefix, reason in NON_TRADE_CSV_HEADERS.items():
        if header.startswith(prefix):
            return None, reason
    if header.split(",", 1)[0].strip() in POSITIONS_CSV_FIRST_FIELDS:
        return StoreFormat.POSITIONS_CSV, "positions CSV"
    return None, "text or CSV with no known trade layout"


def _loads_or_none(line: bytes):
    try:
        return orjson.loads(line.strip())
    except orjson.JSONDecodeError:
        return None


def _load_document(path: Path):
    if path.stat().st_size > _DOCUMENT_SNIFF_LIMIT:  # JSON documents of the legacy bot are small
        return None
    try:
        return orjson.loads(path.read_bytes().removeprefix(BOM))
    except orjson.JSONDecodeError:
        return None


def _first_array_item(head: bytes):
    """The first item of the array `head` starts ([] when empty, None when unreadable)."""
    text = head.decode("utf-8", "replace").lstrip()[1:].lstrip()
    if text.startswith("]"):
        return []
    try:
        return json.JSONDecoder().raw_decode(text)[0]
    except ValueError:
        return None
