"""The legacy files themselves, kept in cold storage byte for byte (no database, no Dagster).

A store goes to cold storage as it is, zstd-compressed, under `legacy/<sha256>.zst`, where
`sha256` is the digest of the original bytes: the same bytes are stored once, wherever they were
found. A copy only counts once it has been read back, decompressed and found to have the original's
SHA-256 and size. Rows keep a pointer into that copy (`origin`), and `record_bytes` reads a record
back out of it exactly as the legacy file held it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from winiswin_pipelines.coldstore import ColdStore, sha256_file

PREFIX = "legacy/"
_CODEC = "zstd"  # at Arrow's default level 1, the fastest: JSON lines still shrink ~13x
_CHUNK = 8 * 1024 * 1024


class ColdCopyError(Exception):
    """A cold copy that is missing or does not give back the original bytes."""


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    size: int


@dataclass(frozen=True)
class ColdCopy:
    """An original in cold storage, read back and found identical."""

    sha256: str
    size: int
    key: str
    uri: str


def original_key(sha256: str) -> str:
    return f"{PREFIX}{sha256}.zst"


def fingerprint(path: Path) -> Fingerprint:
    """SHA-256 and size of a file's bytes, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Fingerprint(digest.hexdigest(), size)


def keep_original(cold: ColdStore, path: Path, expected: Fingerprint) -> ColdCopy:
    """Put `path` (whose bytes are `expected`) into cold storage unless it is there already, then
    read the copy back and check it. Raises ColdCopyError when the copy does not give `expected` back
    (the file changed since it was fingerprinted, or the upload was damaged)."""
    key = original_key(expected.sha256)
    if cold.head(key) is None:
        with tempfile.TemporaryDirectory(prefix="legacy_original_") as folder:
            packed = Path(folder) / "original.zst"
            _compress(path, packed)
            cold.put_file(packed, key, sha256_file(packed))
    return check_cold_copy(cold, expected)


def check_cold_copy(cold: ColdStore, expected: Fingerprint) -> ColdCopy:
    """Read the cold copy of `expected` back (download, decompress) and compare SHA-256 and size."""
    key = original_key(expected.sha256)
    stored = cold.head(key)
    if stored is None:
        raise ColdCopyError(f"no cold copy {key}")
    with tempfile.TemporaryDirectory(prefix="legacy_original_") as folder:
        packed = Path(folder) / "original.zst"
        cold.download(key, packed)
        digest, size = hashlib.sha256(), 0
        try:
            for chunk in _decompressed_chunks(packed):
                digest.update(chunk)
                size += len(chunk)
        except OSError as exc:  # not a zstd stream, or a damaged one
            raise ColdCopyError(f"cold copy {stored.uri} does not decompress: {exc}") from exc
    if (digest.hexdigest(), size) != (expected.sha256, expected.size):
        raise ColdCopyError(f"cold copy {stored.uri} gives back {size:,} bytes with SHA-256 {digest.hexdigest()}, "
                            f"not the original's {expected.size:,} bytes with SHA-256 {expected.sha256}")
    return ColdCopy(expected.sha256, expected.size, key, stored.uri)


def _compress(path: Path, target: Path) -> None:
    with open(path, "rb") as source, pa.CompressedOutputStream(str(target), _CODEC) as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)


def _decompressed_chunks(packed: Path) -> Iterator[bytes]:
    with pa.CompressedInputStream(pa.OSFile(str(packed), "rb"), _CODEC) as stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


def restore_original(cold: ColdStore, sha256: str, target: Path) -> None:
    """The original bytes of `sha256`, decompressed from cold storage into `target`."""
    key = original_key(sha256)
    if cold.head(key) is None:
        raise ColdCopyError(f"no cold copy {key}")
    with tempfile.TemporaryDirectory(prefix="legacy_original_") as folder:
        packed = Path(folder) / "original.zst"
        cold.download(key, packed)
        with open(target, "wb") as out:
            for chunk in _decompressed_chunks(packed):
                out.write(chunk)


# one record out of the original -----------------------------------------------------------------


def record_bytes(original: Path, fmt: str, pointer: dict[str, Any]) -> bytes:
    """The exact bytes of the record `pointer` (an `origin`'s pointer, see `normalize`) names in the
    original file `original` of format `fmt`. A pair of records (an OPEN row and its CLOSE row) gives
    both, one per line. SQLite rows have no bytes of their own: the row's values as JSON."""
    parts = pointer.get("parts") or [pointer]
    return b"\n".join(_one_record(original, fmt, part) for part in parts)


def _one_record(original: Path, fmt: str, part: dict[str, Any]) -> bytes:
    if "offset" in part:  # JSON lines, plain or inside a gzip file, and CSV lines
        return _slice(original, fmt, part["offset"], part["length"])
    if "item" in part:
        return _json_array_item(original.read_bytes(), part["item"])
    if "key" in part:
        return _json_object_value(original.read_bytes(), part["key"])
    if "row" in part:
        return _sqlite_row(original, part["table"], part["row"])
    raise ValueError(f"origin names no record: {part}")


def _slice(original: Path, fmt: str, offset: int, length: int) -> bytes:
    if fmt == "jsonl.gz":  # the offset is into the decompressed lines
        with gzip.open(original, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    with open(original, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _json_array_item(document: bytes, index: int) -> bytes:
    for number, (start, end) in enumerate(json_array_spans(document)):
        if number == index:
            return document[start:end]
    raise ValueError(f"the array has no item {index}")


def json_array_spans(document: bytes) -> Iterator[tuple[int, int]]:
    """Byte (start, end) of each item of a JSON array document, as written."""
    text = document.decode("utf-8", "surrogateescape")
    decoder, pos = json.JSONDecoder(), text.find("[") + 1
    while True:
        pos = _skip(text, pos)
        if pos >= len(text) or text[pos] == "]":
            return
        _, end = decoder.raw_decode(text, pos)
        yield _byte_offset(text, pos), _byte_offset(text, end)
        pos = end


def _json_object_value(document: bytes, key: str) -> bytes:
    text = document.decode("utf-8", "surrogateescape")
    decoder, pos = json.JSONDecoder(), text.find("{") + 1
    while (pos := _skip(text, pos)) < len(text) and text[pos] != "}":
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos) + 1  # past the colon
        start = _skip(text, pos)
        _, end = decoder.raw_decode(text, start)
        if name == key:
            return document[_byte_offset(text, start):_byte_offset(text, end)]
        pos = end
    raise ValueError(f"the object has no key {key!r}")


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n,\ufeff":
        pos += 1
    return pos


def _byte_offset(text: str, char_offset: int) -> int:
    return len(text[:char_offset].encode("utf-8", "surrogateescape"))


def _sqlite_row(original: Path, table: str, rowid: int) -> bytes:
    with sqlite3.connect(f"{original.resolve().as_uri()}?mode=ro&immutable=1", uri=True) as conn:
        cursor = conn.execute(f'SELECT * FROM "{table}" WHERE rowid = ?', (rowid,))
        values = cursor.fetchone()
        if values is None:
            raise ValueError(f"{table} has no row {rowid}")
        names = [d[0] for d in cursor.description]
    row = {name: value.hex() if isinstance(value, bytes) else value for name, value in zip(names, values, strict=True)}
    return orjson.dumps(row)
