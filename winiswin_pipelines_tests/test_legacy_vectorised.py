"""A1 JSON lines normalised a block at a time (Arrow) give exactly what the per-record path gives:
the same rows, origins (line, byte offset and length, read order), quarantine decisions and reasons."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from winiswin_pipelines.coldstore import LocalColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.legacy.a1_blocks import A1Block
from winiswin_pipelines.legacy.load import Ledger, migrate_store, verify_store, write_block
from winiswin_pipelines.legacy.pipeline import iter_batches, iter_outcomes
from winiswin_pipelines.legacy.records import TRADE_COLUMNS, Outcome, Row
from winiswin_pipelines.legacy.sniff import Store, StoreFormat
from winiswin_pipelines_tests.legacy_fixtures import a1, mixed_a1_jsonl

SHA = "ab" * 32


@pytest.fixture
def store(tmp_path: Path) -> Store:
    mixed_a1_jsonl(tmp_path / "data" / "trades.jsonl")
    return Store(tmp_path / "data", "trades.jsonl", StoreFormat.JSONL)


@pytest.fixture
def cold(tmp_path: Path) -> LocalColdStore:
    return LocalColdStore(tmp_path / "cold")


def by_position(outcomes: list[Outcome]) -> dict[str, tuple]:
    """Each outcome by its position, every value as text (so that -0.0 is not 0.0), origin parsed."""
    return {o.position: canonical(o) for o in outcomes}


def canonical(o: Outcome) -> tuple:
    if type(o) is not Row:
        return type(o).__name__, getattr(o, "reason", None), o.variant, o.size, getattr(o, "raw_text", None)
    *values, origin = o.values
    return ("row", o.table, o.key, o.variant, as_text(o.first_time), as_text(o.last_time), o.size,
            [as_text(value) for value in values], orjson.loads(origin))


def as_text(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return repr(str(value) if isinstance(value, str) else value)


def block_outcomes(block: A1Block) -> list[Outcome]:
    """A block's rows as the per-record path's `Row`s, with its other outcomes."""
    lines, rows = block.lines, []
    for line, values in zip(block.row_lines.tolist(), block.rows.to_pylist(), strict=True):
        index = line - lines.first_line
        size = int(lines.ends[index] - lines.starts[index]) + (int(lines.ends[index]) < lines.size)
        first, last = values["entry_time"] or values["exit_time"], values["exit_time"] or values["entry_time"]
        values["origin"] = values["origin"].encode()
        rows.append(Row("trades", values["trade_uid"], tuple(values[c] for c in TRADE_COLUMNS), "A1", f"line {line}",
                        first, last, size))
    return rows + block.odd


@pytest.mark.parametrize("batch_size", [1, 5, 16, 64, 20_000])
def test_blocks_give_the_per_record_outcomes_line_for_line(store, batch_size):
    per_record = list(iter_outcomes(store, sha256=SHA))
    batches = list(iter_batches(store, batch_size, sha256=SHA))
    vectorised = [o for batch in batches for o in (block_outcomes(batch) if type(batch) is A1Block else batch)]
    expected, found = by_position(per_record), by_position(vectorised)
    assert found.keys() == expected.keys()
    assert [p for p in expected if found[p] != expected[p]] == []
    blocks = [b for b in batches if type(b) is A1Block]
    assert sum(b.rows.num_rows for b in blocks) >= 300  # the plain A1 lines went the vectorised way
    if batch_size > 1:
        assert sum(len(b.odd) for b in blocks) > 30  # and the odd ones record by record, among them


def table_rows(db: DatabaseManager) -> dict[str, list[str]]:
    """trades, trade_partial_exits and legacy_quarantine as they are (but ids and write times), as text."""
    queries = {
        "trades": f"SELECT {', '.join(TRADE_COLUMNS)}, features FROM trades ORDER BY trade_uid",
        "trade_partial_exits": "SELECT exit_uid, trade_uid, symbol, exit_time, exit_price, quantity, pnl, pnl_pct, "
                               "fees, reason, source, raw, origin FROM trade_partial_exits ORDER BY exit_uid",
        "legacy_quarantine": "SELECT source, position, reason, raw_text, variant FROM legacy_quarantine ORDER BY position",
    }
    with db.engine.connect() as conn:
        return {table: [repr(tuple(row)) for row in conn.execute(text(sql))] for table, sql in queries.items()}


def forget_migration(db: DatabaseManager, store: Store) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("TRUNCATE trades, trade_partial_exits, legacy_quarantine, legacy_sources CASCADE"))
    ledger = Ledger.for_store(db, store)
    ledger.path.unlink()
    ledger.report_path.unlink()


def test_both_paths_migrate_the_same_tables_row_for_row(db, store, cold):
    per_record = migrate_store(db, store, cold=cold, batch_size=16, vectorised=False)
    expected = table_rows(db)
    forget_migration(db, store)
    vectorised = migrate_store(db, store, cold=cold, batch_size=16)
    assert verify_store(db, store, cold=cold).passed
    found = table_rows(db)
    for table, rows in expected.items():
        assert len(found[table]) == len(rows) and found[table] == rows, table
    assert len(expected["trades"]) > 300 and len(expected["legacy_quarantine"]) > 10 and expected["trade_partial_exits"]
    counts = ("read", "migrated", "quarantined", "inserted", "updated", "unchanged", "duplicates", "time_range")
    assert [getattr(vectorised, c) for c in counts] == [getattr(per_record, c) for c in counts]
    assert vectorised.variants == per_record.variants and vectorised.balanced
    assert per_record.duplicates + per_record.updated == 3  # DUPADJ twice in one block, DUPUSDT thrice


def test_a_block_postgres_refuses_goes_in_record_by_record(db, tmp_path):
    path = tmp_path / "trades.jsonl"
    path.write_bytes(b"".join(orjson.dumps(a1(f"BTCUSDT_{i}.0", pnl=float(i))) + b"\n" for i in range(1, 6)))
    (block,) = iter_batches(Store(tmp_path, "trades.jsonl", StoreFormat.JSONL), 100, sha256=SHA)
    assert type(block) is A1Block and block.rows.num_rows == 5
    with db.engine.begin() as conn:  # a key stored since the block was found all new
        conn.execute(text("INSERT INTO trades (trade_uid, symbol, side, status, source) "
                          "VALUES ('legacy:BTCUSDT_3.0', 'BTCUSDT', 'LONG', 'OPEN', 'legacy:trades.jsonl')"))
    result = write_block(db, "legacy:trades.jsonl", block)
    assert result.outcomes is not None and len(result.outcomes) == 5  # written record by record
    assert (result.rows.inserted, result.rows.updated) == (4, 1)  # the OPEN trade is closed by its record
    with db.engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT trade_uid, pnl FROM trades")).all())
    assert stored == {f"legacy:BTCUSDT_{i}.0": float(i) for i in range(1, 6)}
