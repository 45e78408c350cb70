"""Raw capture files written by the live capture: the format `capture.read_capture` reads.

One gzip file per symbol and UTC day (of the local receive time), one message per line,
`<receive time in µs> <message as received>`: the combined-stream messages exactly as the
websocket delivered them, and each REST depth snapshot (as JSON) at the point where the book
applied it. Replayed through the import (`book_snapshots` asset, `BookSnapshotter`), a file
rebuilds the very rows the capture wrote, receive times included.

Names end with `_<symbol>_<YYYYMMDD>.gz` as the import expects (`samples.scan_market_folder`),
after a prefix `capture-<start>Z-<capture id>` that sorts a day's files of successive runs in time
order. A file is written as `<name>.gz.part` in the spool folder, as a series of complete gzip
members (one per flush), so a crash loses at most the last flush: `recover_partial_files` cuts a
crashed run's file at its last complete member and finishes it. A finished file moves to the cold
store (key `market_captures/<name>`) when one is given; it is deleted from the spool once the
store reports the same SHA-256.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import gzip
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from winiswin_pipelines.coldstore import ColdStore, sha256_file

log = logging.getLogger(__name__)

COLD_STORE_PREFIX = "market_captures"
PART_SUFFIX = ".part"
_DAY_US = 86_400_000_000
_EPOCH_DAY = dt.date(1970, 1, 1)
_UNSAFE = re.compile(r"[^a-z0-9-]")


@dataclass
class _OpenFile:
    day: int  # days since the epoch (UTC) of the receive times it holds
    path: Path
    pieces: list[bytes] = field(default_factory=list)
    pending: int = 0  # bytes in `pieces`
    written: int = 0  # messages written


class CaptureFileWriter:
    """Per-symbol, per-day capture files in `folder`; `write` buffers, `flush` writes a gzip member."""

    def __init__(self, folder: Path, capture_id: str, started_at: dt.datetime, *, cold_store: ColdStore | None = None,
                 compresslevel: int = 6, member_bytes: int = 4 << 20):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        tag = _UNSAFE.sub("-", capture_id.lower())[-24:].strip("-") or "capture"
        self.prefix = f"capture-{started_at.astimezone(dt.UTC):%Y%m%dT%H%M%S}Z-{tag}"
        self.cold_store = cold_store
        self.compresslevel, self.member_bytes = compresslevel, member_bytes
        self._files: dict[str, _OpenFile] = {}
        self._uploads: list[concurrent.futures.Future] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="capture-upload")
        self.finished: list[str] = []  # file names (or cold-store keys) finished so far
        self.messages = 0

    def write(self, symbol: str, receive_us: int, raw: str | bytes) -> None:
        """Append one message of `symbol` received at `receive_us` (µs since the epoch)."""
        day = receive_us // _DAY_US
        current = self._files.get(symbol)
        if current is None or current.day != day:
            if current is not None:
                self._finish(symbol, current)
            current = self._files[symbol] = self._open(symbol, day)
        line = b"%d %s\n" % (receive_us, raw.encode() if isinstance(raw, str) else raw)
        current.pieces.append(line)
        current.pending += len(line)
        current.written += 1
        self.messages += 1
        if current.pending >= self.member_bytes:
            self._write_member(current)

    def flush(self) -> None:
        """Everything written so far onto disk (one more gzip member per file)."""
        for current in self._files.values():
            self._write_member(current)

    def close(self) -> list[str]:
        """Finish every open file and wait for the uploads; returns the names (keys) finished."""
        for symbol, current in list(self._files.items()):
            self._finish(symbol, current)
        self._files.clear()
        for upload in self._uploads:
            upload.result()
        self._pool.shutdown(wait=True)
        return list(self.finished)

    def _open(self, symbol: str, day: int) -> _OpenFile:
        date = _EPOCH_DAY + dt.timedelta(days=day)
        name = f"{self.prefix}_{symbol.lower()}_{date:%Y%m%d}.gz"
        return _OpenFile(day, self.folder / (name + PART_SUFFIX))

    def _write_member(self, current: _OpenFile) -> None:
        if not current.pieces:
            return
        member = gzip.compress(b"".join(current.pieces), self.compresslevel, mtime=0)
        with current.path.open("ab") as handle:
            handle.write(member)
        current.pieces, current.pending = [], 0

    def _finish(self, symbol: str, current: _OpenFile) -> None:
        self._write_member(current)
        if not current.path.exists():
            return
        final = current.path.with_name(current.path.name.removesuffix(PART_SUFFIX))
        current.path.replace(final)
        self._uploads.append(self._pool.submit(self._store, final))

    def _store(self, path: Path) -> None:
        self.finished.append(store_capture_file(path, self.cold_store))


def store_capture_file(path: Path, cold_store: ColdStore | None) -> str:
    """Put a finished capture file into the cold store (verified, then removed from the spool); its key,
    or its local path when there is no cold store (or the upload failed: it stays for the next run)."""
    if cold_store is None:
        return str(path)
    key = f"{COLD_STORE_PREFIX}/{path.name}"
    checksum = sha256_file(path)
    try:
        stored = cold_store.put_file(path, key, checksum)
    except Exception as error:  # noqa: BLE001 - the file stays in the spool and is uploaded by the next run
        log.warning("capture file %s could not be stored as %s (%s: %s); kept in %s", path.name, key,
                    type(error).__name__, error, path.parent)
        return str(path)
    if stored is None or stored.sha256 != checksum:
        log.warning("capture file %s: the cold store reports a different checksum for %s; kept locally", path.name, key)
        return str(path)
    path.unlink()
    return key


def complete_members_length(path: Path) -> int:
    """Bytes of `path` made of complete gzip members (what a crash mid-write leaves readable)."""
    good = offset = 0
    decompressor = zlib.decompressobj(31)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            data = chunk
            while data:
                try:
                    decompressor.decompress(data)  # the output is not needed, only where members end
                except zlib.error:
                    return good
                if decompressor.eof:
                    used = len(data) - len(decompressor.unused_data)
                    offset += used
                    good = offset
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(31)
                else:
                    offset += len(data)
                    data = b""
    return good


def recover_partial_files(folder: Path, cold_store: ColdStore | None = None) -> list[str]:
    """Finish the files a crashed capture left in the spool `folder` (cut at their last complete gzip
    member) and store them, with any finished file a failed upload left behind; returns the names (keys)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stored = []
    for part in sorted(folder.glob(f"*.gz{PART_SUFFIX}")):
        length = complete_members_length(part)
        if length == 0:
            log.warning("capture file %s holds no complete gzip member: removed", part.name)
            part.unlink()
            continue
        with part.open("r+b") as handle:
            handle.truncate(length)
        final = part.with_name(part.name.removesuffix(PART_SUFFIX))
        part.replace(final)
        log.warning("capture file %s recovered after a crash (%d bytes kept)", final.name, length)
    if cold_store is not None:
        for finished in sorted(folder.glob("capture-*.gz")):
            stored.append(store_capture_file(finished, cold_store))
    return stored
