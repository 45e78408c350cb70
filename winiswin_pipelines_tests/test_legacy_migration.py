"""Legacy migration into a real PostgreSQL: accounting, duplicates across files, re-runs, verification."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from winiswin_pipelines.archive import archive_old_data
from winiswin_pipelines.coldstore import LocalColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.defs.legacy import migration_metadata
from winiswin_pipelines.legacy.accounting import SourceReport
from winiswin_pipelines.legacy.load import link_partial_exits, migrate_store, verify_store, write_batch
from winiswin_pipelines.legacy.pipeline import iter_outcomes
from winiswin_pipelines.legacy.records import Row
from winiswin_pipelines.legacy.sniff import discover_stores, store_for
from winiswin_pipelines_tests.legacy_fixtures import (
    a1,
    d,
    mismatched_positions_csv,
    partial_exit,
    sibling_log,
    write_legacy_folder,
)

CLOSED_A1 = "legacy:BTCUSDT_1761467469.637214"  # in trades.json, trades.jsonl and (as pending) ml_pending_entries.json


@pytest.fixture
def legacy(tmp_path: Path):
    root = tmp_path / "legacy"
    return root, write_legacy_folder(root)


def migrate_all(db: DatabaseManager, root: Path, **kwargs) -> dict[str, SourceReport]:
    stores, _ = discover_stores(root)
    return {store.relpath: migrate_store(db, store, **kwargs) for store in stores}


def scalar(db: DatabaseManager, sql: str, **params):
    with db.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def test_every_record_is_migrated_or_quarantined_and_verified(db, legacy):
    root, expected = legacy
    reports = migrate_all(db, root)
    for relpath, report in reports.items():
        assert report.balanced, report.summary_line()
        assert (report.read, report.quarantined) == (expected.stores[relpath]["read"], expected.stores[relpath]["quarantined"])
        verification = verify_store(db, store_for(root, relpath))
        assert verification.passed, verification.problems
    with db.engine.connect() as conn:
        quarantine = {(s, p): r for s, p, r in conn.execute(text("SELECT source, position, reason FROM legacy_quarantine"))}
    assert set(quarantine) == set(expected.quarantine_reasons)
    for key, reason in expected.quarantine_reasons.items():
        assert reason in quarantine[key]
    expected_uids = {o.key for s in discover_stores(root)[0] for o in iter_outcomes(s) if isinstance(o, Row) and o.table == "trades"}
    assert scalar(db, "SELECT count(*) FROM trades") == len(expected_uids)
    assert scalar(db, "SELECT count(*) FROM trade_partial_exits") == 2
    assert scalar(db, "SELECT count(*) FROM trades WHERE entry_time IS NOT NULL AND extract(timezone FROM entry_time) <> 0") == 0


def test_duplicates_across_files_and_a_pending_entry_closed_elsewhere(db, legacy):
    root, _ = legacy
    reports = migrate_all(db, root)
    # pending file (read first) inserted the trade OPEN; trades.json closed it; trades.jsonl had it again
    assert reports["data/ml_pending_entries.json"].inserted == 2
    assert reports["data/trades.json"].updated == 1
    jsonl = reports["data/trades.jsonl"]
    assert jsonl.unchanged == 1 and jsonl.duplicates == 1  # the A1 line of trades.json; the D record twice
    assert reports["data/trades_20251104_120000.jsonl.gz"].unchanged == 1  # the C record of trades.jsonl
    assert reports["trading_data.db"].duplicates == 1  # current_positions + trade_history of one trade
    assert reports["ml_data/positions.csv"].duplicates == 2  # OPEN rows carried by their CLOSE rows
    with db.engine.connect() as conn:
        status, source, exit_time = conn.execute(
            text("SELECT status, source, exit_time FROM trades WHERE trade_uid = :uid"), {"uid": CLOSED_A1}).one()
    assert (status, source) == ("CLOSED", "legacy:data/trades.json")
    assert exit_time == dt.datetime(2025, 10, 26, 10, 2, 11, 120034, tzinfo=dt.UTC)
    verification = verify_store(db, store_for(root, "data/ml_pending_entries.json"))
    assert verification.passed and verification.held_by_other_stores == 1


def test_a_pending_entry_never_reopens_a_closed_trade(db, legacy):
    root, _ = legacy
    for relpath in ("data/trades.json", "data/ml_pending_entries.json"):  # the other order
        report = migrate_store(db, store_for(root, relpath))
        assert report.balanced
    assert report.unchanged == 1 and report.inserted == 1
    assert scalar(db, "SELECT status FROM trades WHERE trade_uid = :uid", uid=CLOSED_A1) == "CLOSED"


def test_rerunning_the_migration_changes_nothing(db, legacy):
    root, _ = legacy
    first = migrate_all(db, root, batch_size=4)  # small batches: duplicates fall in different batches
    snapshot = "SELECT count(*), max(updated_at), sum(hashtext(origin::text)) FROM trades"
    with db.engine.connect() as conn:
        before = conn.execute(text(snapshot)).one(), conn.execute(text("SELECT count(*), max(updated_at) FROM legacy_quarantine")).one()
    skipped = migrate_all(db, root, batch_size=4)  # the same bytes: recognised by their SHA-256, not read again
    assert all(r.skipped and r.read == 0 and r.balanced for r in skipped.values())
    second = migrate_all(db, root, batch_size=4, force=True)  # read again all the same: nothing changes
    for relpath, report in second.items():
        assert (report.inserted, report.updated) == (0, 0), relpath
        assert report.unchanged == first[relpath].migrated - report.batch_duplicates, relpath
        assert report.balanced and report.read == first[relpath].read
    with db.engine.connect() as conn:
        after = conn.execute(text(snapshot)).one(), conn.execute(text("SELECT count(*), max(updated_at) FROM legacy_quarantine")).one()
    assert after == before


def test_check_fails_when_a_row_is_missing(db, legacy):
    root, _ = legacy
    store = store_for(root, "data/trades.jsonl")
    migrate_store(db, store)
    assert verify_store(db, store).passed
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM trades WHERE trade_uid = 'legacy:SOLUSDT_1762200000.000001'"))
    failed = verify_store(db, store)
    assert not failed.passed and failed.missing == {"trades": 1}
    assert failed.missing_examples == ["trades: legacy:SOLUSDT_1762200000.000001"]
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM legacy_quarantine WHERE position = 'line 9'"))
    failed = verify_store(db, store)
    assert failed.missing == {"trades": 1, "legacy_quarantine": 1}
    assert any("legacy_quarantine holds 9 rows" in p for p in failed.problems)


def test_check_fails_when_the_store_changed_or_was_never_migrated(db, legacy):
    root, _ = legacy
    store = store_for(root, "data/trades.json")
    assert "has not been migrated" in verify_store(db, store).problems[0]
    migrate_store(db, store)
    with store.path.open("a") as handle:
        handle.write('{"symbol": "BTCUSDT"}\n')
    assert "holds 5 records but the migration read 4" in verify_store(db, store).problems[0]


def test_a_fixed_record_leaves_the_quarantine_on_the_next_run(db, legacy):
    root, _ = legacy
    store = store_for(root, "data/trades.jsonl")
    migrate_store(db, store)
    lines = store.path.read_bytes().split(b"\n")
    lines[13] = lines[13].replace(b'"sixty thousand"', b"60000.0")  # line 14: entry_price fixed
    store.path.write_bytes(b"\n".join(lines))
    report = migrate_store(db, store)
    assert report.balanced and report.quarantined == 9 and report.inserted == 1
    assert scalar(db, "SELECT count(*) FROM legacy_quarantine WHERE position = 'line 14'") == 0
    assert verify_store(db, store).passed


def test_rows_postgresql_refuses_are_isolated_and_quarantined(db, legacy):
    root, _ = legacy
    store = store_for(root, "data/trades.json")
    batch = list(iter_outcomes(store))
    bad = batch[1]
    batch[1] = Row(bad.table, bad.key, (bad.values[0], bad.values[1], "UP", *bad.values[3:]), bad.variant,
                   bad.position, bad.first_time, bad.last_time)  # side violates the CHECK constraint
    result = write_batch(db, store.source, batch)
    assert [row.key for row in result.refused] == [bad.key]
    assert result.rows.inserted == 3
    reason = scalar(db, "SELECT reason FROM legacy_quarantine WHERE position = :p", p=bad.position)
    assert reason.startswith("refused by PostgreSQL:") and "side_valid" in reason


def test_dry_run_writes_nothing(db, legacy):
    root, expected = legacy
    reports = migrate_all(db, root, dry_run=True)
    assert reports["data/trades.jsonl"].migrated == expected.stores["data/trades.jsonl"]["migrated"]
    assert scalar(db, "SELECT count(*) FROM trades") == 0
    assert scalar(db, "SELECT count(*) FROM legacy_quarantine") == 0


def test_naive_time_assumption_is_applied_and_recorded(db, legacy):
    root, _ = legacy
    migrate_store(db, store_for(root, "data/trades.json"), naive_timezone="America/New_York")
    with db.engine.connect() as conn:
        entry, origin = conn.execute(
            text("SELECT entry_time, origin FROM trades WHERE trade_uid = :uid"), {"uid": CLOSED_A1}).one()
    assert entry == dt.datetime(2025, 10, 26, 12, 31, 9, 637214, tzinfo=dt.UTC)  # 08:31 EDT
    assert origin["naive_time"] == "America/New_York (assumed)"


def test_the_real_samples_migrate_and_verify(db, tmp_path):
    from winiswin_pipelines import settings

    root = tmp_path / "samples"
    shutil.copytree(settings.SAMPLE_DATA_DIR / "legacy", root)
    reports = migrate_all(db, root)
    assert {k: (r.read, r.inserted, r.duplicates, r.quarantined) for k, r in reports.items()} == {
        "example_positions.csv": (100, 50, 50, 0), "ml_pending_entries.json": (0, 0, 0, 0),
        "test_ml_data.json": (1, 1, 0, 0), "trading_data.db": (3, 3, 0, 0),
    }
    assert all(verify_store(db, store_for(root, k)).passed for k in reports)
    assert scalar(db, "SELECT count(*) FROM trades WHERE status = 'OPEN'") == 3


def test_archived_trades_still_count_and_a_rerun_writes_nothing_in_either_tier(db, legacy, tmp_path):
    root, _ = legacy
    cold = LocalColdStore(tmp_path / "cold")
    migrate_all(db, root, cold=cold)
    hot_before = scalar(db, "SELECT count(*) FROM trades")
    # Every final trade and partial exit leaves for cold storage; open trades stay hot.
    summary = archive_old_data(0, manager=db, store=cold, as_of=dt.datetime(2100, 1, 1, tzinfo=dt.UTC),
                               tables=["trade_partial_exits", "trades"])
    archived = sum(r.rows for r in summary.results if r.table == "trades")
    assert archived > 0 and scalar(db, "SELECT count(*) FROM trades") == hot_before - archived
    fingerprints = {(r.table, r.day): r.fingerprint for r in summary.results}
    stores, _ = discover_stores(root)
    for store in stores:
        assert verify_store(db, store, cold=cold).passed  # found in the tier that holds it
    hot_rows = scalar(db, "SELECT count(*) FROM trades") + scalar(db, "SELECT count(*) FROM trade_partial_exits")
    reports = migrate_all(db, root, cold=cold)
    assert all(r.balanced and r.inserted == 0 and r.updated == 0 for r in reports.values()), reports
    assert scalar(db, "SELECT count(*) FROM trades") + scalar(db, "SELECT count(*) FROM trade_partial_exits") == hot_rows
    again = archive_old_data(0, manager=db, store=cold, as_of=dt.datetime(2100, 1, 1, tzinfo=dt.UTC),
                             tables=["trade_partial_exits", "trades"])
    assert [r for r in again.results if r.rows] == []  # nothing new to archive: the cold copies are unchanged
    assert {(r.table, r.day): r.fingerprint for r in summary.results} == fingerprints
    for store in stores:
        assert verify_store(db, store, cold=cold).passed


def test_a_positions_close_of_another_symbol_is_quarantined_with_its_reason(db, tmp_path):
    store = store_for(mismatched_positions_csv(tmp_path / "ml_data"), "positions.csv")
    report = migrate_store(db, store)
    assert report.balanced and (report.read, report.inserted, report.quarantined) == (4, 2, 1)
    with db.engine.connect() as conn:
        reason = conn.execute(text("SELECT reason FROM legacy_quarantine WHERE position = 'line 3'")).scalar_one()
        trades = dict(conn.execute(text("SELECT symbol, status FROM trades")).all())
    assert "CLOSE of POS_0009 is BTCUSDT but the open POS_0009 (line 2) is SOLUSDT" in reason
    assert trades == {"SOLUSDT": "OPEN", "ETHUSDT": "CLOSED"}
    assert verify_store(db, store).passed


def test_a_sibling_exit_closes_the_open_trade_its_entry_left(db, tmp_path):
    # Two ENTRY rows migrate as OPEN trades; the rewritten log then holds the EXIT of the second one.
    # It becomes one closed trade under the same uid: no exit-only trade, no OPEN trade left hot.
    entries = [sibling_log("BUY", None, "2025-10-23T09:00:00"), {**sibling_log("BUY", None, "2025-10-23T10:00:00"),
                                                                   "entry_price": 109000.0}]
    exit_ = {**sibling_log("BUY", 110000.0, "2025-10-23T12:00:00"), "entry_price": 109000.0}
    path = tmp_path / "trades.json"
    path.write_text(json.dumps(entries))
    assert migrate_store(db, store_for(tmp_path, "trades.json")).inserted == 2
    path.write_text(json.dumps([*entries, exit_]))
    report = migrate_store(db, store_for(tmp_path, "trades.json"))
    # the OPEN trade closed; the other entry's row now points into the new version of the file
    assert report.balanced and (report.inserted, report.updated, report.unchanged, report.duplicates) == (0, 2, 0, 1)
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT status, entry_price, exit_price FROM trades ORDER BY entry_price")).all()
    assert rows == [("OPEN", 108000.0, None), ("CLOSED", 109000.0, 110000.0)]
    assert verify_store(db, store_for(tmp_path, "trades.json")).passed


def test_partial_exits_are_linked_to_their_trade_where_the_data_allows(db, tmp_path):
    trades = [
        a1("BTCUSDT_1", entry_timestamp="2025-11-01T08:00:00", exit_timestamp="2025-11-01T12:00:00"),
        a1("SOLUSDT_1", symbol="SOLUSDT", entry_timestamp="2025-11-03T08:00:00", exit_timestamp="2025-11-03T12:00:00"),
        a1("SOLUSDT_2", symbol="SOLUSDT", entry_timestamp="2025-11-03T09:00:00", exit_timestamp="2025-11-03T11:00:00"),
        a1("BTCUSDT_V", pnl=0.01, pnl_pct=0.01, entry_timestamp="2025-11-04T08:00:00",  # a virtual close
           exit_timestamp="2025-11-04T12:00:00"),
        d(),
    ]
    exits = {
        "window": partial_exit("BTCUSDT", "2025-11-01T10:00:00"),
        "none": partial_exit("ETHUSDT", "2025-11-02T10:00:00"),
        "ambiguous": partial_exit("SOLUSDT", "2025-11-03T10:00:00"),
        "virtual only": partial_exit("BTCUSDT", "2025-11-04T10:00:00"),
        "by id": {**partial_exit("BNBUSDT", "2025-11-09T10:00:00"), "trade_id": "BNBUSDT_1762350000.5"},
        "missing id": {**partial_exit("BNBUSDT", "2025-11-09T11:00:00"), "trade_id": "BNBUSDT_0"},
    }
    (tmp_path / "partial_exits.json").write_text(json.dumps(list(exits.values())))
    (tmp_path / "trades.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trades))
    migrate_store(db, store_for(tmp_path, "partial_exits.json"))  # before its trades: linked afterwards
    migrate_store(db, store_for(tmp_path, "trades.jsonl"))
    links = link_partial_exits(db)
    assert (links.linked_now, links.linked, len(links.unlinked)) == (2, 2, 4)
    with db.engine.connect() as conn:
        linked = dict(conn.execute(text("SELECT symbol || ' ' || exit_time::text, trade_uid FROM trade_partial_exits "
                                        "WHERE trade_uid IS NOT NULL")).all())
    assert linked == {"BTCUSDT 2025-11-01 10:00:00+00": "legacy:BTCUSDT_1",
                      "BNBUSDT 2025-11-09 10:00:00+00": "legacy:BNBUSDT_1762350000.5"}
    why = {link.exit.symbol + " " + f"{link.exit.exit_time:%d}": link.reason for link in links.unlinked}
    assert why == {
        "ETHUSDT 02": "no real ETHUSDT LONG trade was held at 2025-11-02 10:00:00 UTC",
        "SOLUSDT 03": "2 real SOLUSDT LONG trades were held at 2025-11-03 10:00:00 UTC: ambiguous",
        "BTCUSDT 04": "no real BTCUSDT LONG trade was held at 2025-11-04 10:00:00 UTC",
        "BNBUSDT 09": "names trade legacy:BNBUSDT_0, which is not in the hot trades table",
    }
    assert "partial exits: 2 linked to their trade (2 by this run), 4 unlinked" == links.summary_line()
    again = link_partial_exits(db)  # a re-run keeps the links and finds nothing new
    assert (again.linked_now, again.linked, len(again.unlinked)) == (0, 2, 4)
    migrate_store(db, store_for(tmp_path, "partial_exits.json"))  # re-migrating the exits keeps their links
    assert link_partial_exits(db).linked == 2


def test_records_gone_from_a_changed_file_are_reported_and_left_in_place(db, legacy):
    root, _ = legacy
    store = store_for(root, "data/trades.jsonl")
    migrate_store(db, store)
    lines = store.path.read_bytes().split(b"\n")
    gone_trade, gone_bad_line = lines[2], lines[7]  # line 3: the C trade; line 8: a NaN record (quarantined)
    assert b"SOLUSDT_1762200000.000001" in gone_trade and b"NaN" in gone_bad_line
    store.path.write_bytes(b"\n".join(line for i, line in enumerate(lines) if i not in (2, 7)))
    report = migrate_store(db, store)  # every later line moved up: positions changed, records did not
    assert report.balanced and report.read == 14 and report.inserted == 0
    aside = scalar(db, "SELECT position FROM legacy_quarantine WHERE raw_text LIKE '%NaN%'")
    assert aside.startswith("line 8 (set aside ")
    assert report.gone == {"legacy_quarantine": 1, "trades": 1}
    assert report.gone_ids == [f"legacy_quarantine: {aside}", "trades: legacy:SOLUSDT_1762200000.000001"]
    assert "GONE from the file since an earlier migration, left in place: 2 (legacy_quarantine: line 8" in (
        report.summary_line())
    # left in place: the trade row, the quarantined record; the moved records are quarantined once
    assert scalar(db, "SELECT count(*) FROM trades WHERE trade_uid = 'legacy:SOLUSDT_1762200000.000001'") == 1
    assert scalar(db, "SELECT count(*) FROM legacy_quarantine WHERE source = 'legacy:data/trades.jsonl'") == 9 + 1
    assert verify_store(db, store).passed
    again = migrate_store(db, store, force=True)  # still gone: reported again, nothing changes
    assert (again.inserted, again.updated, again.gone) == (0, 0, report.gone)
    assert verify_store(db, store).passed
    metadata = migration_metadata([again])
    assert metadata["records_gone_from_files"].value == 2
    assert "legacy:SOLUSDT_1762200000.000001" in metadata["gone_from_files"].value
    store.path.write_bytes(store.path.read_bytes() + gone_trade + b"\n")  # it came back
    back = migrate_store(db, store)
    assert back.gone == {"legacy_quarantine": 1} and verify_store(db, store).passed


def test_a_batch_of_new_keys_is_copied_in_and_falls_back_to_the_upsert_when_a_key_is_stored(db, legacy):
    root, _ = legacy
    store = store_for(root, "data/trades.jsonl")
    batch = list(iter_outcomes(store))
    keys = {o.key for o in batch if isinstance(o, Row)}
    first = write_batch(db, store.source, batch, fresh=True)  # a bare COPY: the D record twice counts once
    assert (first.rows.inserted, first.rows.duplicates, first.rows.unchanged) == (len(keys), 1, 0)
    assert scalar(db, "SELECT count(*) FROM trades WHERE source = :s", s=store.source) == len(keys)
    again = write_batch(db, store.source, batch, fresh=True)  # its keys are stored now: the COPY fails, upsert
    assert (again.rows.inserted, again.rows.updated, again.rows.unchanged) == (0, 0, len(keys))
    assert scalar(db, "SELECT count(*) FROM legacy_quarantine") == 10
