"""Write a store's normalised records to PostgreSQL through `copy_upsert`, and prove the result.

Streaming: batches of `batch_size` records; while batches are written (in worker threads, each on
its own connection, so PostgreSQL works on both cores) the next ones are read and normalised, so
memory stays flat. A1 JSON lines come as blocks normalised with Arrow (`a1_blocks`); a block none of
whose keys is stored goes in by one CSV COPY of its rows, no Python object per value. Other batches:
a bare COPY when all their keys are new, else COPY + one INSERT ... ON CONFLICT. A batch PostgreSQL
refuses is split until the refused rows are isolated; they go to quarantine with the database's
reason and the run goes on.

Before any row is written, the file itself goes to cold storage (zstd, content-addressed by the
SHA-256 of its bytes) and is read back identical; `legacy_sources` records it. That copy is made on
its own thread while the first blocks are read (up to READ_AHEAD_BYTES of the file). Rows keep a
pointer to their record in those bytes, not a copy. Bytes migrated once are recognised by their
SHA-256 and skipped at once (unless `force`).

Every migration leaves a ledger (the keys of every record: trade uid, partial-exit uid, quarantine
position) and its report under the state folder; `verify_store` checks them against the tables.

Both tiers count: a migrated trade may since have been archived to cold storage. Its key is then
looked up in the archived copies (`ArchivedKeys`): the conflict rule below is applied against the
archived row as it would be against a hot one, so re-running a migration after archival writes
nothing again, and verification finds the record in the tier that holds it.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql
from sqlalchemy import Connection, text

from winiswin_pipelines import settings
from winiswin_pipelines.archive import read_archived
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.bulk import EMPTY_RESULT, UpsertResult, copy_rows, copy_upsert
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import TradeStatus, final_trade_sql, open_trade_sql
from winiswin_pipelines.errors import describe
from winiswin_pipelines.factories import cold_store
from winiswin_pipelines.legacy import sources
from winiswin_pipelines.legacy import variants as v
from winiswin_pipelines.legacy.a1_blocks import A1Block
from winiswin_pipelines.legacy.accounting import SourceReport
from winiswin_pipelines.legacy.links import LinkSummary, PartialExit, choose_trade
from winiswin_pipelines.legacy.originals import Fingerprint, fingerprint, keep_original
from winiswin_pipelines.legacy.pipeline import Batch, confidence_scale, iter_batches
from winiswin_pipelines.legacy.readers import count_records
from winiswin_pipelines.legacy.records import (
    PARTIAL_EXIT_COLUMNS,
    PARTIAL_EXITS,
    QUARANTINE_COLUMNS,
    TRADE_COLUMNS,
    TRADES,
    Outcome,
    Rejected,
    Row,
    safe_text,
)
from winiswin_pipelines.legacy.sniff import Store

BATCH_SIZE = 20_000
READ_AHEAD_BYTES = 512 * 1024 * 1024  # of the file read and normalised (held as ~45 % of it) while its cold copy is made
# Batches written at once, each on its own connection; safe because a batch upserts in key order
# (no lock-order deadlock) and the update rule below does not depend on which batch lands first.
WRITERS = 2
QUEUED = 2 * WRITERS  # batches handed to the writers at once: each finds the next one ready, not being read
# A stored trade takes a conflicting record of its own store when that record comes later in the
# store (so a trade held twice settles on the last record, whatever the batch boundaries, and a
# re-run changes nothing) and does not reopen it; and a record of any store when it closes a trade
# still OPEN (an entry left OPEN by an earlier run is closed when its exit arrives, wherever the
# pair lands in the store; a pending entry never reopens a closed trade; the same closed trade in
# two files stays with the first).
UPDATE_RULES = {
    TRADES: "(t.source = EXCLUDED.source"
    " AND COALESCE((t.origin->>'seq')::bigint, 0) <= (EXCLUDED.origin->>'seq')::bigint"
    f" AND NOT ({final_trade_sql('t')} AND {open_trade_sql('EXCLUDED')}))"
    f" OR ({open_trade_sql('t')} AND {final_trade_sql('EXCLUDED')})",
    PARTIAL_EXITS: "t.source = EXCLUDED.source",  # the uid is the content: only the source can differ
}
_COLUMNS = {TRADES: TRADE_COLUMNS, PARTIAL_EXITS: PARTIAL_EXIT_COLUMNS}
_KEYS = {TRADES: "trade_uid", PARTIAL_EXITS: "exit_uid"}
_LEDGER_KINDS = {TRADES: "T", PARTIAL_EXITS: "P"}
_LEDGER_TABLES = {kind: table for table, kind in _LEDGER_KINDS.items()}
_SOURCE, _ORIGIN = TRADE_COLUMNS.index("source"), TRADE_COLUMNS.index("origin")
_STATUS = TRADE_COLUMNS.index("status")
_COPY_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_REFUSALS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)

Progress = Callable[[int, int], None]  # (records, bytes) done since the last call


def _seq(origin: object) -> int:
    """A record's position in its store, from its `origin` (JSON text or already parsed; 0 for trades
    with none: they were not migrated)."""
    if isinstance(origin, str | bytes) and origin:
        origin = orjson.loads(origin)
    return origin.get("seq", 0) if isinstance(origin, dict) else 0


@dataclass(frozen=True)
class ArchivedKeys:
    """The keys of the trades and partial exits in cold storage: what the hot tables no longer hold.

    trades: trade_uid -> (source, seq of the record in its store); partial exits: their uids.
    """

    trades: dict[str, tuple[str, int]]
    partial_exits: frozenset[str]

    @classmethod
    def load(cls, manager: DatabaseManager, cold: ColdStore) -> ArchivedKeys:
        everything = sources.archived_span()
        trades = read_archived(TRADES, *everything, ["trade_uid", "source", "origin"], manager=manager, store=cold)
        exits = read_archived(PARTIAL_EXITS, *everything, ["exit_uid"], manager=manager, store=cold)
        seqs = [_seq(origin) for origin in trades["origin"]]
        return cls(dict(zip(trades["trade_uid"], zip(trades["source"], seqs, strict=True), strict=True)),
                   frozenset(exits["exit_uid"]))

    def settled(self, row: Row) -> bool:
        """Whether the archived copy of `row`'s key stays as it is (the conflict rule of a hot row):
        a record of another store never replaces an archived trade (archived trades are final), and
        a record of the same store replaces it only when it comes later in the store and is final."""
        if row.table == PARTIAL_EXITS:
            return row.key in self.partial_exits
        archived = self.trades.get(row.key)
        if archived is None:
            return False
        source, seq = archived
        reopens = row.values[_STATUS] == TradeStatus.OPEN
        return source != row.values[_SOURCE] or _seq(row.values[_ORIGIN]) <= seq or reopens

    def as_copy_text(self) -> Iterator[str]:
        """`kind<TAB>key<TAB>source` lines, for verification's join."""
        for key, (source, _) in self.trades.items():
            yield f"T\t{key.translate(_COPY_TEXT_ESCAPES)}\t{source.translate(_COPY_TEXT_ESCAPES)}\n"
        for key in self.partial_exits:
            yield f"P\t{key.translate(_COPY_TEXT_ESCAPES)}\t\\N\n"


@dataclass
class BatchResult:
    rows: UpsertResult = EMPTY_RESULT
    refused: list[Row] = field(default_factory=list)
    outcomes: list[Outcome] | None = None  # what an `A1Block` was written as when it went record by record

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(self.rows + other.rows, self.refused + other.refused)


def migrate_store(
    manager: DatabaseManager | None, store: Store, *, naive_timezone: str = "UTC", dry_run: bool = False,
    batch_size: int = BATCH_SIZE, progress: Progress | None = None, cold: ColdStore | None = None,
    force: bool = False, vectorised: bool = True,
) -> SourceReport:
    """Migrate one store (or only read and normalise it with `dry_run`); returns its accounting.

    `cold` is the cold store that keeps the originals and whose archived trades count as stored
    (default: the environment's). Bytes already migrated are skipped, unless `force`.
    `vectorised=False` reads A1 JSON lines record by record too (same rows, slower)."""
    started = time.perf_counter()
    report = SourceReport(store.source, store.relpath, store.format.value, naive_timezone, dry_run=dry_run)
    original = fingerprint(store.path)
    report.sha256 = original.sha256
    if not dry_run:
        cold = cold or cold_store()
        if not force and (known := _already_migrated(manager, original)):
            report.skipped, report.cold_uri = known
            report.seconds = time.perf_counter() - started
            return report
    # Before any row is written, the original is in cold storage and reads back identical. The copy is
    # made on its own thread (SHA-256 and zstd release the GIL) while the first blocks are read.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="legacy-cold-copy") as copier:
        keeping = None if dry_run else copier.submit(_keep_original, manager, store, cold, original, report, started)
        _migrate_records(manager, store, report, original, batch_size, progress, cold, vectorised, keeping)
    report.seconds = time.perf_counter() - started
    if not dry_run:
        sources.record_migrated(manager, original.sha256, report)
    return report


def _keep_original(
    manager: DatabaseManager, store: Store, cold: ColdStore, original: Fingerprint, report: SourceReport, started: float,
) -> None:
    copy = keep_original(cold, store.path, original)
    sources.record_cold_copy(manager, store, copy)
    report.cold_uri = copy.uri
    report.cold_seconds = time.perf_counter() - started


def _already_migrated(manager: DatabaseManager, original: Fingerprint) -> tuple[str, str | None] | None:
    """(why the store is skipped, its cold copy) when these bytes were migrated already."""
    known = sources.find(manager, original.sha256)
    if known is None or known.migrated_at is None:
        return None
    why = (f"its bytes (SHA-256 {original.sha256[:12]}…) were migrated from {known.path} "
           f"at {known.migrated_at:%Y-%m-%d %H:%M:%S} UTC")
    return why, known.cold_uri


def _migrate_records(
    manager: DatabaseManager | None, store: Store, report: SourceReport, original: Fingerprint, batch_size: int,
    progress: Progress | None, cold: ColdStore | None, vectorised: bool, keeping: Future[None] | None,
) -> None:
    """Read, normalise and (unless a dry run) write the store's records; `keeping`: the original's
    cold copy being made, which has to be kept before the first row is written."""
    dry_run = report.dry_run
    scale = confidence_scale(store)
    report.confidence_scale = scale
    batches = iter_batches(store, batch_size, report.naive_timezone, scale, original.sha256, vectorised=vectorised)
    if dry_run:
        for batch in batches:
            _count(report, batch)
            if progress:
                progress(*_records_and_bytes(batch))
        return
    ledger = Ledger.for_store(manager, store)
    previous = ledger.set_previous_aside()
    archived = ArchivedKeys.load(manager, cold)
    quarantined = QuarantineTrack(_quarantine_positions(manager, store.source))
    with _Writers(manager, store.source, archived, KnownKeys.load(manager, archived), report, ledger, quarantined) as writers:
        held, held_bytes = [], 0  # read while the cold copy is being made
        for batch in batches:
            _count(report, batch)
            records, size = _records_and_bytes(batch)
            if progress:
                progress(records, size)
            held.append(batch)
            held_bytes += size
            if keeping.done() or held_bytes >= READ_AHEAD_BYTES:
                keeping.result()  # raises when the copy does not give the original back: nothing is written
                writers.write_all(held)
                held, held_bytes = [], 0
        keeping.result()
        writers.write_all(held)
    _settle_quarantine(manager, store.source, quarantined, report)
    _note_gone_records(manager, previous, ledger, report)
    ledger.close(report)


class _Writers:
    """Batches being written on WRITERS connections at once, settled (accounting, ledger, quarantine
    track) in read order."""

    def __init__(
        self, manager: DatabaseManager, source: str, archived: ArchivedKeys, known: KnownKeys, report: SourceReport,
        ledger: Ledger, quarantined: QuarantineTrack,
    ):
        self.manager, self.source, self.archived, self.known = manager, source, archived, known
        self.report, self.ledger, self.quarantined = report, ledger, quarantined
        self.in_flight: deque[tuple[Future[BatchResult], Batch]] = deque()
        self.pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="legacy-writer")

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *failure: object) -> None:
        try:
            while self.in_flight and failure[0] is None:
                self._settle_oldest()
        finally:
            self.pool.shutdown()

    def write_all(self, batches: list[Batch]) -> None:
        for batch in batches:
            if len(self.in_flight) == QUEUED:
                self._settle_oldest()
            self.in_flight.append(_submit(self.pool, self.manager, self.source, batch, self.archived, self.known))

    def _settle_oldest(self) -> None:
        _settle(self.report, self.ledger, self.quarantined, *self.in_flight.popleft())


def _count(report: SourceReport, batch: Batch) -> None:
    if type(batch) is A1Block:
        report.add_rows(v.A1, batch.rows.num_rows, batch.first_time, batch.last_time)
        batch = batch.odd
    for outcome in batch:
        report.add(outcome)


def _records_and_bytes(batch: Batch) -> tuple[int, int]:
    if type(batch) is A1Block:
        return batch.records, batch.size
    return len(batch), sum(o.size for o in batch)


def _submit(
    writers: ThreadPoolExecutor, manager: DatabaseManager, source: str, batch: Batch, archived: ArchivedKeys,
    known: KnownKeys,
) -> tuple[Future[BatchResult], Batch]:
    """Hand `batch` to a writer: a block whose keys are all new goes in by a bare COPY of its rows."""
    if type(batch) is A1Block:
        if known.all_new(batch.keys(), distinct=True):
            return writers.submit(write_block, manager, source, batch, archived), batch
        batch = batch.outcomes()  # keys stored already, or repeated in the block: the upsert settles them
        return writers.submit(write_batch, manager, source, batch, archived), batch
    fresh = known.all_new([o.key for o in batch if type(o) is Row])
    return writers.submit(write_batch, manager, source, batch, archived, fresh), batch


@dataclass
class QuarantineTrack:
    """Quarantine positions: those of earlier runs, those of this run, and the earlier ones whose
    record now migrates (fixed: they leave the quarantine)."""

    earlier: set[str]
    now: list[str] = field(default_factory=list)
    released: set[str] = field(default_factory=set)

    def note(self, outcome: Outcome, refused: bool) -> None:
        if type(outcome) is Rejected or refused:
            self.now.append(outcome.position)
        elif self.earlier:
            self.released.update(p for p in _record_positions(outcome.position) if p in self.earlier)

    def note_rows(self, lines: np.ndarray) -> None:
        """Rows of a block (`A1Block.row_lines`): records of one line each."""
        if self.earlier:
            self.released.update(p for p in (f"line {n}" for n in lines.tolist()) if p in self.earlier)


def _record_positions(position: str) -> tuple[str, ...]:
    """The records a row was made of: `line 2+3` is lines 2 and 3."""
    head, plus, tail = position.partition("+")
    return (head, f"{head.rsplit(' ', 1)[0]} {tail}") if plus else (position,)


def _settle(
    report: SourceReport, ledger: Ledger, quarantined: QuarantineTrack, future: Future[BatchResult], batch: Batch,
) -> None:
    result = future.result()
    if result.outcomes is not None:
        batch = result.outcomes
    refused = {id(row) for row in result.refused}
    for row in result.refused:
        report.refused_by_database(row)
    report.add_upsert(result.rows.inserted, result.rows.updated, result.rows.unchanged, result.rows.duplicates)
    if type(batch) is A1Block:
        quarantined.note_rows(batch.row_lines)
        ledger.write_trade_keys(batch.rows.column("trade_uid"))
        batch = batch.odd
    for outcome in batch:
        quarantined.note(outcome, id(outcome) in refused)
    ledger.write(batch, refused)


class KnownKeys:
    """Hashes of the legacy keys stored in either tier, and of those this run has sent: a batch none
    of whose keys is among them (a first migration into empty tables) is inserted by a bare COPY,
    without the staging table and the upsert. A hash collision only costs the upsert."""

    def __init__(self, hashes: set[int]):
        self._hashes = hashes

    @classmethod
    def load(cls, manager: DatabaseManager, archived: ArchivedKeys) -> KnownKeys:
        hashes = {hash(key) for key in archived.trades} | {hash(key) for key in archived.partial_exits}
        with manager.engine.connect() as conn:
            for statement in _LEGACY_KEYS:
                hashes.update(hash(key) for key in conn.execute(statement).scalars())
        return cls(hashes)

    def all_new(self, keys: Sequence[str], *, distinct: bool = False) -> bool:
        """Whether no key of `keys` is known yet (and with `distinct`, none repeats); they are known from now on."""
        hashes = [hash(key) for key in keys]
        fresh = self._hashes.isdisjoint(hashes) and (not distinct or len(set(hashes)) == len(hashes))
        self._hashes.update(hashes)
        return fresh


# Legacy uids all start with `legacy:`; other writers' keys cannot meet them.
_LEGACY_KEYS = (text("SELECT trade_uid FROM trades WHERE trade_uid LIKE 'legacy:%'"),
                text("SELECT exit_uid FROM trade_partial_exits WHERE exit_uid LIKE 'legacy:%'"))


def write_batch(
    manager: DatabaseManager, source: str, batch: Sequence[Outcome], archived: ArchivedKeys | None = None,
    fresh: bool = False,
) -> BatchResult:
    """Upsert one batch in one transaction; isolate rows PostgreSQL refuses (they go to quarantine).

    Rows whose archived copy stays as it is are not written: they count as unchanged (the first of
    a key in the batch) or duplicates, as they would against a hot row. A `fresh` batch (no key of
    it stored) is COPYed straight in; should a key have arrived meanwhile, it is upserted after all."""
    if fresh:
        try:
            return _insert_fresh(manager, source, batch)
        except _REFUSALS:
            pass  # a key stored meanwhile, or a row refused: the upsert below settles them one by one
    rows, settled = [], []
    for row in (o for o in batch if type(o) is Row):
        (settled if archived is not None and archived.settled(row) else rows).append(row)
    rejected = [o for o in batch if type(o) is Rejected]
    keys = len({(row.table, row.key) for row in settled})
    kept = UpsertResult(len(settled), 0, 0, keys, len(settled) - keys)
    return _write(manager, source, rows, rejected) + BatchResult(kept)


def write_block(
    manager: DatabaseManager, source: str, block: A1Block, archived: ArchivedKeys | None = None,
) -> BatchResult:
    """A block none of whose keys is stored: its rows by one CSV COPY, its other lines' outcomes as
    `_insert_fresh` writes them, in one transaction. Should PostgreSQL refuse it (a key stored
    meanwhile, a row refused), the block is written record by record through the upsert instead."""
    try:
        return _insert_block(manager, source, block)
    except _REFUSALS:
        outcomes = block.outcomes()
        return replace(write_batch(manager, source, outcomes, archived), outcomes=outcomes)


def _insert_block(manager: DatabaseManager, source: str, block: A1Block) -> BatchResult:
    rows = [o for o in block.odd if type(o) is Row]
    with manager.engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        copy_arrow(conn, TRADES, block.rows)
        for table, columns in _COLUMNS.items():
            if values := [r.values for r in rows if r.table == table]:
                copy_rows(conn, table, columns, values)
        _upsert_quarantine(conn, source, [o for o in block.odd if type(o) is Rejected])
    written = block.rows.num_rows + len(rows)
    return BatchResult(UpsertResult(written, written, 0, 0, 0))


def copy_arrow(conn: Connection, table: str, rows: pa.Table) -> None:
    """A bare COPY of `rows` (columns named as `table`'s) through CSV: no Python object per value."""
    if not rows.num_rows:
        return
    for index, column in enumerate(rows.schema):
        if pa.types.is_timestamp(column.type) and column.type.tz == "UTC":  # Arrow writes them slowly (~1.5 µs)
            rows = rows.set_column(index, column.name, _utc_text(rows.column(index)))
    csv = pa.BufferOutputStream()
    pacsv.write_csv(rows, csv, pacsv.WriteOptions(include_header=False))
    columns = sql.SQL(", ").join(map(sql.Identifier, rows.column_names))
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(sql.Identifier(table), columns)
    with conn.connection.driver_connection.cursor() as cur, cur.copy(statement) as copy:
        copy.write(memoryview(csv.getvalue()))


def _utc_text(times: pa.ChunkedArray) -> pa.ChunkedArray:
    """UTC timestamps as PostgreSQL reads them (`2025-10-26 08:31:09.637214+00`), null kept."""
    naive = pc.cast(times, pa.timestamp(times.type.unit))  # a UTC timestamp's wall time is UTC
    return pc.binary_join_element_wise(pc.cast(naive, pa.string()), "+00", "")


def _insert_fresh(manager: DatabaseManager, source: str, batch: Sequence[Outcome]) -> BatchResult:
    """One COPY per table of the batch's rows (the last of a key wins, as in the upsert)."""
    latest: dict[tuple[str, str], Row] = {}
    rows = [o for o in batch if type(o) is Row]
    for row in rows:
        latest.pop((row.table, row.key), None)  # re-inserted last: keeps the read order of the winners
        latest[(row.table, row.key)] = row
    with manager.engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        for table, columns in _COLUMNS.items():
            copy_rows(conn, table, columns, (r.values for r in latest.values() if r.table == table))
        _upsert_quarantine(conn, source, [o for o in batch if type(o) is Rejected])
    inserted = len(latest)
    return BatchResult(UpsertResult(len(rows), inserted, 0, 0, len(rows) - inserted))


def _write(manager: DatabaseManager, source: str, rows: list[Row], rejected: list[Rejected]) -> BatchResult:
    try:
        with manager.engine.begin() as conn:
            # A batch's DISTINCT ON sort fits in memory; a crash loses at most the last batches, which
            # the next (idempotent) run writes again, so commits need not wait for the WAL flush.
            conn.execute(text("SET LOCAL work_mem = '256MB'; SET LOCAL synchronous_commit = off"))
            result = sum((_upsert_rows(conn, table, [r for r in rows if r.table == table]) for table in _COLUMNS),
                         EMPTY_RESULT)
            _upsert_quarantine(conn, source, rejected)
        return BatchResult(result)
    except _REFUSALS as exc:
        if len(rows) <= 1:
            refusals = [_refused(row, exc) for row in rows]
            with manager.engine.begin() as conn:
                _upsert_quarantine(conn, source, rejected + refusals)
            return BatchResult(EMPTY_RESULT, rows)
        half = len(rows) // 2
        return _write(manager, source, rows[:half], rejected) + _write(manager, source, rows[half:], [])


def _upsert_rows(conn: Connection, table: str, rows: list[Row]) -> UpsertResult:
    if not rows:
        return EMPTY_RESULT
    return copy_upsert(
        conn, table, _COLUMNS[table], (row.values for row in rows), conflict_columns=[_KEYS[table]],
        update_where=UPDATE_RULES[table],
    )


def _upsert_quarantine(conn: Connection, source: str, rejected: list[Rejected]) -> None:
    if rejected:
        positions, texts = [r.position for r in rejected], [r.raw_text for r in rejected]
        conn.execute(_SET_ASIDE, {"source": source, "positions": positions, "texts": texts})
        values = ((source, r.position, r.reason, r.raw_text, r.variant) for r in rejected)
        copy_upsert(conn, "legacy_quarantine", QUARANTINE_COLUMNS, values, conflict_columns=["source", "position"])


def _refused(row: Row, exc: Exception) -> Rejected:
    reason = describe(exc)
    raw = row.text if row.text is not None else row.values[_COLUMNS[row.table].index("origin")]
    return Rejected(row.position, f"refused by PostgreSQL: {reason}", safe_text(raw), row.variant, row.size)


# A quarantined record of an earlier run whose position now holds another record (the file changed)
# is set aside under `<position> (set aside <md5>)` instead of being overwritten: nothing is lost.
_ASIDE_NAME = "left(q.position, 40) || ' (set aside ' || left(md5(coalesce(q.raw_text, '')), 8) || ')'"
_SET_ASIDE = text(f"""
    WITH incoming AS (SELECT * FROM unnest(CAST(:positions AS text[]), CAST(:texts AS text[])) AS n(position, raw_text)),
    replaced AS (SELECT q.id, {_ASIDE_NAME} AS aside FROM legacy_quarantine q JOIN incoming n ON n.position = q.position
                 WHERE q.source = :source AND q.raw_text IS DISTINCT FROM n.raw_text),
    twins AS (DELETE FROM legacy_quarantine q USING replaced r WHERE q.id = r.id
              AND EXISTS (SELECT 1 FROM legacy_quarantine a WHERE a.source = :source AND a.position = r.aside))
    UPDATE legacy_quarantine q SET position = r.aside FROM replaced r
    WHERE q.id = r.id AND NOT EXISTS (SELECT 1 FROM legacy_quarantine a WHERE a.source = :source AND a.position = r.aside)""")


def _quarantine_positions(manager: DatabaseManager, source: str) -> set[str]:
    with manager.engine.connect() as conn:
        rows = conn.execute(text("SELECT position FROM legacy_quarantine WHERE source = :source"), {"source": source})
        return set(rows.scalars())


def _settle_quarantine(manager: DatabaseManager, source: str, track: QuarantineTrack, report: SourceReport) -> None:
    """Earlier quarantine rows this run did not quarantine again: a record that now migrates, or whose
    text is quarantined at another position (the file shifted), leaves; a record no longer in the
    file stays in place and is reported."""
    with manager.engine.begin() as conn:
        params = {"source": source, "now": track.now}
        stale = conn.execute(text("SELECT position, md5(coalesce(raw_text, '')) FROM legacy_quarantine "
                                  "WHERE source = :source AND NOT (position = ANY(:now))"), params).all()
        if not stale:
            return
        current = set(conn.execute(text("SELECT md5(coalesce(raw_text, '')) FROM legacy_quarantine "
                                        "WHERE source = :source AND position = ANY(:now)"), params).scalars())
        leaving = [position for position, digest in stale if position in track.released or digest in current]
        conn.execute(text("DELETE FROM legacy_quarantine WHERE source = :source AND position = ANY(:leaving)"),
                     {"source": source, "leaving": leaving})
    report.quarantine_released = sum(position in track.released for position, _ in stale)
    report.note_gone("legacy_quarantine", sorted(position for position, _ in stale if position not in leaving))


def _note_gone_records(manager: DatabaseManager, previous: Path | None, ledger: Ledger, report: SourceReport) -> None:
    """Trades and partial exits the previous migration of this store wrote that this one did not read:
    the record left the file. Their rows stay; the report names them, and the ledger keeps them (as
    `t`/`p` lines) so every later run reports them too until they come back."""
    if previous is None:
        return
    ledger.flush()
    with manager.engine.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE _previous_ledger (kind char(1), key text) ON COMMIT DROP; "
                          "CREATE TEMP TABLE _current_ledger (kind char(1), key text) ON COMMIT DROP"))
        with conn.connection.driver_connection.cursor() as cur:
            for table, path in (("_previous_ledger", previous), ("_current_ledger", ledger.path)):
                with cur.copy(f"COPY {table} FROM STDIN") as copy:
                    for chunk in _file_chunks(path):
                        copy.write(chunk)
        gone = conn.execute(text(
            "SELECT upper(kind), key FROM _previous_ledger WHERE upper(kind) IN ('T', 'P') "
            "EXCEPT SELECT kind, key FROM _current_ledger ORDER BY 1, 2"))
        for kind, key in gone:
            ledger.write_gone(kind, key)
            report.note_gone(_LEDGER_TABLES[kind], [key])
    previous.unlink()


def _file_chunks(path: Path) -> Iterator[bytes]:
    if path.is_file():
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk


# partial exits and their trades -----------------------------------------------------------------

_UNLINKED_EXITS = text("SELECT exit_uid, symbol, exit_time, origin FROM trade_partial_exits "
                       "WHERE trade_uid IS NULL AND source LIKE 'legacy:%' ORDER BY exit_time, exit_uid")
# Real trades only: the legacy bots closed part of a real position (the +60 % rule), never of a virtual one.
_HELD_TRADES = text("SELECT trade_uid, side FROM trades WHERE symbol = :symbol AND NOT is_virtual "
                    "AND entry_time <= :at AND (exit_time IS NULL OR exit_time >= :at) ORDER BY trade_uid LIMIT 20")
_TRADE_EXISTS = text("SELECT EXISTS (SELECT 1 FROM trades WHERE trade_uid = :uid)")
_LINK = text("UPDATE trade_partial_exits SET trade_uid = :trade WHERE exit_uid = :exit AND trade_uid IS NULL")
_LINKED = text("SELECT count(*) FROM trade_partial_exits WHERE trade_uid IS NOT NULL AND source LIKE 'legacy:%'")


def link_partial_exits(manager: DatabaseManager) -> LinkSummary:
    """Link every unlinked legacy partial exit whose trade the data identifies (see `links`).

    Run after migrating stores: the exits' file and their trades' files migrate in any order, so an
    exit left unlinked is tried again by the next run. Only hot trades can be linked (the foreign key)."""
    summary = LinkSummary(unlinked=[])
    with manager.engine.begin() as conn:
        for exit_uid, symbol, exit_time, origin in conn.execute(_UNLINKED_EXITS).all():
            exit_ = PartialExit.from_origin(exit_uid, symbol, exit_time, origin if isinstance(origin, dict) else None)
            named = bool(exit_.trade_uid) and conn.execute(_TRADE_EXISTS, {"uid": exit_.trade_uid}).scalar_one()
            held = [] if exit_.trade_uid else conn.execute(_HELD_TRADES, {"symbol": symbol, "at": exit_time}).all()
            link = choose_trade(exit_, named, [tuple(row) for row in held])
            if link.linked:
                conn.execute(_LINK, {"trade": link.trade_uid, "exit": exit_uid})
                summary.linked_now += 1
            else:
                summary.unlinked.append(link)
        summary.linked = conn.execute(_LINKED).scalar_one()
    return summary


# ledger and verification ------------------------------------------------------------------------


class Ledger:
    """The keys of every record a migration wrote (COPY text lines `kind<TAB>key`) and its report."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = None

    @classmethod
    def for_store(cls, manager: DatabaseManager, store: Store) -> Ledger:
        return cls.for_path(manager, store.path)

    @classmethod
    def for_path(cls, manager: DatabaseManager, path: Path) -> Ledger:
        url = manager.url
        identity = f"{url.host}:{url.port}/{url.database}|{Path(path).resolve()}"
        name = hashlib.sha256(identity.encode()).hexdigest()[:24]
        return cls(settings.state_dir() / "legacy_ledgers" / f"{name}.ledger")

    @property
    def report_path(self) -> Path:
        return self.path.with_suffix(".report.json")

    def set_previous_aside(self) -> Path | None:
        """Keep the previous migration's ledger (to find the records that left the file since)."""
        if not self.path.is_file():
            return None
        previous = self.path.with_suffix(".previous")
        self.path.replace(previous)
        return previous

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def write_gone(self, kind: str, key: str) -> None:
        """A record no longer in the file (lower-case kind: verification looks for the upper-case ones)."""
        if self._handle is None:
            self._handle = self.path.open("w", encoding="utf-8")
        self._handle.write(f"{kind.lower()}\t{key.translate(_COPY_TEXT_ESCAPES)}\n")

    def _open(self) -> TextIO:
        if self._handle is None:
            self.report_path.unlink(missing_ok=True)  # a report only ever describes a finished ledger
            self._handle = self.path.open("w", encoding="utf-8")
        return self._handle

    def write_trade_keys(self, uids: pa.ChunkedArray) -> None:
        """Trades of a block's rows, whose keys need no escaping (no backslash, tab or newline in them)."""
        self._open().write("".join(pc.binary_join_element_wise("T\t", uids, "\n", "").to_pylist()))

    def write(self, batch: Sequence[Outcome], refused: set[int]) -> None:
        self._open()
        lines = []
        for outcome in batch:
            if type(outcome) is Row and id(outcome) not in refused:
                lines.append(f"{_LEDGER_KINDS[outcome.table]}\t{outcome.key.translate(_COPY_TEXT_ESCAPES)}\n")
            elif type(outcome) is Rejected or id(outcome) in refused:
                lines.append(f"Q\t{outcome.position.translate(_COPY_TEXT_ESCAPES)}\n")
        self._handle.writelines(lines)

    def close(self, report: SourceReport) -> None:
        if self._handle is None:
            self.path.write_text("", encoding="utf-8")
        else:
            self._handle.close()
        self.report_path.write_bytes(report.to_json())

    def report(self) -> SourceReport | None:
        return SourceReport.from_json(self.report_path.read_bytes()) if self.report_path.is_file() else None

    def chunks(self) -> Iterator[bytes]:
        return _file_chunks(self.path)


@dataclass
class Verification:
    """What PostgreSQL actually holds for one store, against the store and the migration's accounting."""

    source: str
    report: SourceReport | None
    records_in_store: int
    missing: dict[str, int] = field(default_factory=dict)
    missing_examples: list[str] = field(default_factory=list)
    quarantine_rows: int = 0
    held_by_other_stores: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def verify_store(manager: DatabaseManager, store: Store, *, cold: ColdStore | None = None) -> Verification:
    """Prove read = inserted + updated + unchanged + duplicates + quarantined against PostgreSQL and
    the archived copies in `cold` (default: the environment's cold store). A store whose bytes were
    migrated from another path is verified against that migration. When the check passes,
    `legacy_sources` records it (`checked_at`) for the bytes the migration read."""
    ledger, source = Ledger.for_store(manager, store), store.source
    report = ledger.report()
    if report is None and (elsewhere := sources.find(manager, fingerprint(store.path).sha256)):
        ledger, source = Ledger.for_path(manager, Path(elsewhere.path)), elsewhere.source
        report = ledger.report()
    if report is None:
        result = Verification(source, report, count_records(store))
        result.problems.append(f"{store.relpath} has not been migrated into this database yet (no ledger)")
        return result
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="legacy-count") as counter:
        counting = counter.submit(count_records, store)  # the file is counted while PostgreSQL checks the keys
        presence = Verification(source, report, 0)
        archived = ArchivedKeys.load(manager, cold or cold_store())
        with manager.engine.begin() as conn:
            _load_ledger(conn, ledger, archived)
            _check_presence(conn, source, presence)
        result = replace(presence, records_in_store=counting.result(), problems=[])
    if result.records_in_store != report.read:
        result.problems.append(
            f"the store holds {result.records_in_store:,} records but the migration read {report.read:,}"
        )
    if not report.balanced:
        result.problems.append(f"read {report.read:,} != accounted {report.accounted:,}")
    result.problems += presence.problems
    kept = report.gone.get("legacy_quarantine", 0)  # records no longer in the file, left in place
    if result.quarantine_rows != report.quarantined + kept:
        result.problems.append(
            f"legacy_quarantine holds {result.quarantine_rows:,} rows for {source}, the migration quarantined "
            f"{report.quarantined:,}" + (f" and kept {kept:,} no longer in the file" if kept else "")
        )
    if result.passed and report.sha256:
        sources.record_checked(manager, report.sha256)
    return result


def _load_ledger(conn: Connection, ledger: Ledger, archived: ArchivedKeys) -> None:
    conn.execute(text("CREATE TEMP TABLE _legacy_ledger (kind char(1), key text) ON COMMIT DROP; "
                      "CREATE TEMP TABLE _archived_keys (kind char(1), key text, source text) ON COMMIT DROP"))
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy("COPY _legacy_ledger FROM STDIN") as copy:
            for chunk in ledger.chunks():
                copy.write(chunk)
        with cur.copy("COPY _archived_keys FROM STDIN") as copy:
            for line in archived.as_copy_text():
                copy.write(line)
    # A million keys want a hash join, not a million probes.
    conn.execute(text("ANALYZE _legacy_ledger; ANALYZE _archived_keys"))


# One pass per table: (missing count, first missing keys, keys now held by another store's record).
_PRESENCE_SQL = {
    "trades": """
        SELECT count(*) FILTER (WHERE t.trade_uid IS NULL),
               (array_agg(l.key) FILTER (WHERE t.trade_uid IS NULL))[1:5],
               count(DISTINCT l.key) FILTER (WHERE t.source <> :source)
        FROM _legacy_ledger l LEFT JOIN (SELECT trade_uid, source FROM trades
                                         UNION ALL SELECT key, source FROM _archived_keys WHERE kind = 'T') t
          ON t.trade_uid = l.key WHERE l.kind = 'T'""",
    "trade_partial_exits": """
        SELECT count(*) FILTER (WHERE p.exit_uid IS NULL), (array_agg(l.key) FILTER (WHERE p.exit_uid IS NULL))[1:5], 0
        FROM _legacy_ledger l LEFT JOIN (SELECT exit_uid FROM trade_partial_exits
                                         UNION ALL SELECT key FROM _archived_keys WHERE kind = 'P') p
          ON p.exit_uid = l.key WHERE l.kind = 'P'""",
    "legacy_quarantine": """
        SELECT count(*) FILTER (WHERE q.position IS NULL), (array_agg(l.key) FILTER (WHERE q.position IS NULL))[1:5], 0
        FROM _legacy_ledger l LEFT JOIN legacy_quarantine q ON q.source = :source AND q.position = l.key
        WHERE l.kind = 'Q'""",
}


def _check_presence(conn: Connection, source: str, result: Verification) -> None:
    for table, statement in _PRESENCE_SQL.items():
        missing, examples, held_elsewhere = conn.execute(text(statement), {"source": source}).one()
        if missing:
            result.missing[table] = missing
            result.missing_examples += [f"{table}: {key}" for key in examples][: 5 - len(result.missing_examples)]
        result.held_by_other_stores += held_elsewhere
    if result.missing:
        detail = ", ".join(f"{count:,} from {table}" for table, count in result.missing.items())
        result.problems.append(f"records migrated but missing in PostgreSQL: {detail}")
    result.quarantine_rows = conn.execute(
        text("SELECT count(*) FROM legacy_quarantine WHERE source = :source"), {"source": source}
    ).scalar_one()
