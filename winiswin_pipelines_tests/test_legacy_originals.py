"""Legacy originals in cold storage: the copy before any row, pointers instead of copies, `--show`,
skipping bytes migrated before, the schema migration of `raw`, and retiring the legacy files."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from sqlalchemy import text

from winiswin_pipelines import settings
from winiswin_pipelines.archive import archive_old_data
from winiswin_pipelines.coldstore import LocalColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.legacy import sources
from winiswin_pipelines.legacy.load import link_partial_exits, migrate_store, verify_store
from winiswin_pipelines.legacy.originals import ColdCopyError, original_key, record_bytes
from winiswin_pipelines.legacy.retire import retire
from winiswin_pipelines.legacy.sniff import discover_stores, store_for
from winiswin_pipelines.resources import ColdStorageResource
from winiswin_pipelines_tests.legacy_fixtures import a1, partial_exit, write_legacy_folder

PROJECT = settings.PROJECT_DIR


@pytest.fixture
def legacy(tmp_path: Path):
    root = tmp_path / "legacy"
    return root, write_legacy_folder(root)


@pytest.fixture
def cold(tmp_path: Path) -> LocalColdStore:
    return LocalColdStore(tmp_path / "cold")


def migrate_and_verify(db: DatabaseManager, root: Path, cold, **kwargs) -> dict:
    stores, _ = discover_stores(root)
    reports = {s.relpath: migrate_store(db, s, cold=cold, **kwargs) for s in stores}
    for store in stores:
        assert verify_store(db, store, cold=cold).passed
    return reports


def rows(db: DatabaseManager, sql: str, **params) -> list:
    with db.engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def test_the_original_goes_to_cold_storage_first_and_legacy_sources_records_it(db, legacy, cold):
    root, _ = legacy
    store = store_for(root, "data/trades.jsonl")
    original = store.path.read_bytes()
    sha = hashlib.sha256(original).hexdigest()
    report = migrate_store(db, store, cold=cold)
    key = original_key(sha)
    assert key == f"legacy/{sha}.zst" and cold.list_keys("legacy/") == [key]
    packed = (tmp := cold.root / key).read_bytes()
    assert packed[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert pa.CompressedInputStream(pa.OSFile(str(tmp)), "zstd").read() == original
    (row,) = sources.all_sources(db)
    assert (row.sha256, row.path, row.source, row.size, row.format, row.records) == (
        sha, str(store.path.resolve()), "legacy:data/trades.jsonl", len(original), "jsonl", 16)
    assert (row.first_time, row.last_time) == report.time_range and row.first_time is not None
    assert row.cold_uri == cold.uri(key) and report.cold_uri == row.cold_uri
    assert row.verified_at <= row.migrated_at and row.checked_at is None
    verify_store(db, store, cold=cold)
    assert sources.find(db, sha).checked_at > row.migrated_at
    # every row points into those bytes; none keeps a copy of its record
    origins = [origin for (origin,) in rows(db, "SELECT origin FROM trades WHERE source = 'legacy:data/trades.jsonl'")]
    assert origins and all(o["sha256"] == sha and {"line", "offset", "length"} <= set(o) for o in origins)
    assert "raw" not in {c for (c,) in rows(db, "SELECT column_name FROM information_schema.columns "
                                               "WHERE table_name = 'trades'")}


def test_a_cold_copy_that_does_not_read_back_stops_the_migration_before_any_row(db, legacy, cold):
    root, _ = legacy
    store = store_for(root, "data/trades.jsonl")
    sha = hashlib.sha256(store.path.read_bytes()).hexdigest()
    damaged = cold.root / original_key(sha)
    damaged.parent.mkdir(parents=True)
    with pa.CompressedOutputStream(str(damaged), "zstd") as out:  # a copy of other bytes under this key
        out.write(store.path.read_bytes()[:-10])
    with pytest.raises(ColdCopyError, match="not the original's"):
        migrate_store(db, store, cold=cold)
    assert rows(db, "SELECT count(*) FROM trades") == [(0,)]
    assert rows(db, "SELECT count(*) FROM legacy_quarantine") == [(0,)]
    assert sources.all_sources(db) == []


def test_bytes_migrated_before_are_skipped_at_once_wherever_they_are(db, legacy, cold, tmp_path):
    root, _ = legacy
    migrate_and_verify(db, root, cold)
    before = rows(db, "SELECT count(*), max(updated_at) FROM trades")
    again = migrate_store(db, store_for(root, "data/trades.jsonl"), cold=cold)
    assert again.skipped and "were migrated from" in again.skipped and again.read == 0 and again.balanced
    assert again.summary_line().startswith("data/trades.jsonl: skipped, its bytes (SHA-256 ")
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    shutil.copy(root / "data/trades.jsonl", copy / "old_trades.jsonl")
    moved = migrate_store(db, store_for(copy, "old_trades.jsonl"), cold=cold)
    assert moved.skipped and str((root / "data/trades.jsonl").resolve()) in moved.skipped
    assert verify_store(db, store_for(copy, "old_trades.jsonl"), cold=cold).passed  # against the first migration
    assert rows(db, "SELECT count(*), max(updated_at) FROM trades") == before


def test_show_gives_the_exact_original_bytes_of_a_record_of_every_format(db, legacy, cold):
    root, _ = legacy
    migrate_and_verify(db, root, cold)
    shown_formats = set()
    for uid, origin in rows(db, "SELECT trade_uid, origin FROM trades UNION ALL SELECT exit_uid, origin "
                                "FROM trade_partial_exits"):
        shown = sources.show_record(db, cold, uid)
        known = sources.find(db, origin["sha256"])
        shown_formats.add(known.format)
        file_bytes = (root / origin["file"]).read_bytes()
        if known.format in ("jsonl", "positions-csv"):  # the very bytes of the line(s)
            lines = file_bytes.split(b"\n")
            parts = origin.get("parts") or [origin]
            assert shown == b"\n".join(lines[p["line"] - 1] for p in parts), uid
        elif known.format == "jsonl.gz":
            assert shown == gzip.decompress(file_bytes).split(b"\n")[origin["line"] - 1]
        elif known.format in ("json-array", "json-object"):  # a slice of the file, each part of a pair
            assert shown == record_bytes(root / origin["file"], known.format, origin)
            if "parts" not in origin:
                assert shown in file_bytes and isinstance(orjson.loads(shown), dict), uid
        else:  # sqlite: the row's values
            with sqlite3.connect(root / origin["file"]) as conn:
                conn.row_factory = sqlite3.Row
                query = f'SELECT * FROM "{origin["table"]}" WHERE rowid = ?'
                stored = dict(conn.execute(query, (origin["row"],)).fetchone())
            assert orjson.loads(shown) == stored
    assert shown_formats == {"jsonl", "jsonl.gz", "json-array", "json-object", "positions-csv", "sqlite"}
    with pytest.raises(LookupError, match="no trade or partial exit"):
        sources.show_record(db, cold, "legacy:nothing")


def test_show_reads_the_record_from_s3_after_the_file_is_gone(db, tmp_path, s3_endpoint, s3_bucket):
    line = json.dumps(a1(), separators=(", ", ":  "))  # odd spacing: JSONB would not keep it
    (tmp_path / "trades.jsonl").write_text(json.dumps(a1("BTCUSDT_1")) + "\n" + line + "\n")
    store = ColdStorageResource(bucket_name=s3_bucket, prefix="cold", endpoint_url=s3_endpoint,
                                region_name="us-east-1").store()
    report = migrate_store(db, store_for(tmp_path, "trades.jsonl"), cold=store)
    assert report.cold_uri.startswith(f"s3://{s3_bucket}/cold/legacy/")
    (tmp_path / "trades.jsonl").unlink()
    assert sources.show_record(db, store, "legacy:BTCUSDT_1761467469.637214") == line.encode()


def test_the_schema_migration_moves_raw_into_origin_before_dropping_it(db):
    db.downgrade("0003")
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO trades (trade_uid, symbol, side, status, source, raw, origin) VALUES "
            "('legacy:T1', 'BTCUSDT', 'LONG', 'CLOSED', 'legacy:data/trades.jsonl', '{\"pnl\": 1.5}', '{\"seq\": 3}')"))
        conn.execute(text(
            "INSERT INTO trade_partial_exits (exit_uid, symbol, exit_time, source, raw) VALUES "
            "('legacy:partial:1', 'BNBUSDT', now(), 'legacy:data/partial_exits.json', "
            " '{\"entry_id\": \"BNBUSDT_1\", \"direction\": \"SHORT\", \"closed_quantity\": 2}'), "
            "('live-1:partial', 'BNBUSDT', now(), 'live', '{\"kind\": \"partial\", \"trade_uid\": \"live-1\"}')"))
    db.upgrade()
    assert rows(db, "SELECT origin FROM trades") == [({"seq": 3, "record": {"pnl": 1.5}},)]
    assert dict(rows(db, "SELECT exit_uid, origin FROM trade_partial_exits")) == {
        "legacy:partial:1": {"trade_id": "BNBUSDT_1", "direction": "SHORT",
                             "record": {"entry_id": "BNBUSDT_1", "direction": "SHORT", "closed_quantity": 2}},
        "live-1:partial": None}
    # the live recorder's orphan event stays in raw; a legacy exit keeps no copy there
    assert dict(rows(db, "SELECT exit_uid, raw FROM trade_partial_exits")) == {
        "legacy:partial:1": None, "live-1:partial": {"kind": "partial", "trade_uid": "live-1"}}
    with db.engine.begin() as conn:  # the trade id kept in origin still links the exit
        conn.execute(text("INSERT INTO trades (trade_uid, symbol, side, status, source, entry_time) VALUES "
                          "('legacy:BNBUSDT_1', 'BNBUSDT', 'SHORT', 'OPEN', 'legacy:x', now())"))
    assert link_partial_exits(db).linked == 1


def test_partial_exits_keep_the_trade_id_and_direction_in_origin(db, tmp_path, cold):
    exit_ = {**partial_exit("BNBUSDT", "2025-11-09T10:00:00"), "trade_id": "BNBUSDT_1762350000.5"}
    (tmp_path / "partial_exits.json").write_text(json.dumps([exit_]))
    migrate_store(db, store_for(tmp_path, "partial_exits.json"), cold=cold)
    ((origin, raw),) = rows(db, "SELECT origin, raw FROM trade_partial_exits")
    assert raw is None and (origin["trade_id"], origin["direction"], origin["item"]) == ("BNBUSDT_1762350000.5", "LONG", 0)


def test_retire_refuses_before_verification_and_succeeds_after_it(db, legacy, cold, tmp_path):
    root, _ = legacy
    stores, _ = discover_stores(root)
    refused = retire(db, cold, stores)
    assert not any(check.ready for check in refused)
    assert all(any(p.startswith("not migrated") for p in check.problems) for check in refused)
    for store in stores:
        migrate_store(db, store, cold=cold)
    refused = retire(db, cold, stores)  # migrated, but the accounting check has not run
    assert all(check.problems == ["accounting check not passed since its migration (run the migration's "
                                  "verification)"] for check in refused)
    for store in stores:
        assert verify_store(db, store, cold=cold).passed
    jsonl = store_for(root, "data/trades.jsonl")
    original = jsonl.path.read_bytes()
    copy = cold.root / original_key(hashlib.sha256(jsonl.path.read_bytes()).hexdigest())
    kept = copy.read_bytes()
    copy.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))  # the cold copy damaged since
    refused = {check.store.relpath: check.problems for check in retire(db, cold, stores)}
    assert [p[:24] for p in refused["data/trades.jsonl"]] == ["cold copy not verified: "]
    assert all(not problems for relpath, problems in refused.items() if relpath != "data/trades.jsonl")
    assert all(store.path.exists() for store in stores)  # nothing touched
    copy.write_bytes(kept)
    done = retire(db, cold, stores, move_to=tmp_path / "retired")
    assert all(check.ready for check in done)
    assert not any(store.path.exists() for store in stores)
    assert (tmp_path / "retired" / "data/trades.jsonl").read_bytes() == original
    assert all(row.retired_at and row.retired_to == str(tmp_path / "retired") for row in sources.all_sources(db))
    assert sources.show_record(db, cold, "legacy:SOLUSDT_1762200000.000001")  # the cold copies still read


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/migrate_system.py", *args], cwd=PROJECT, env=env,
                          capture_output=True, timeout=240)


def test_script_shows_records_and_retires_only_once_verified(db, database_url, tmp_path):
    root = tmp_path / "legacy"
    root.mkdir()
    line = json.dumps(a1(), indent=None, separators=(",", ": "))
    (root / "trades.jsonl").write_text(line + "\n")
    env = {**os.environ, "DATABASE_URL": database_url, "WINISWIN_STATE_DIR": str(tmp_path / "state"),
           "COLD_STORAGE_DIR": str(tmp_path / "cold")}
    env.pop("BUCKET_NAME", None)
    refused = run_script("--legacy-dir", str(root), "--retire", env=env)
    assert refused.returncode == 1 and b"trades.jsonl: not migrated" in refused.stdout
    migrated = run_script("--legacy-dir", str(root), env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert b"legacy_sources:\n  legacy:trades.jsonl jsonl" in migrated.stdout
    assert b"accounting passed 20" in migrated.stdout
    again = run_script("--legacy-dir", str(root), env=env)
    assert b"trades.jsonl: skipped, its bytes (SHA-256" in again.stdout and again.returncode == 0
    shown = run_script("--show", "legacy:BTCUSDT_1761467469.637214", env=env)
    assert shown.returncode == 0 and shown.stdout == line.encode() + b"\n"
    retired = run_script("--legacy-dir", str(root), "--retire", env=env)
    assert retired.returncode == 0, retired.stdout
    assert not (root / "trades.jsonl").exists() and b"retired trades.jsonl (deleted" in retired.stdout
    assert run_script("--show", "legacy:BTCUSDT_1761467469.637214", env=env).stdout == line.encode() + b"\n"
    missing = run_script("--show", "legacy:nothing", env=env)
    assert missing.returncode == 2 and b"no trade or partial exit" in missing.stderr


def test_script_shows_the_record_of_a_trade_archived_to_cold_storage(db, database_url, tmp_path):
    root = tmp_path / "legacy"
    root.mkdir()
    trade, exit_ = json.dumps(a1(), separators=(",", ": ")), json.dumps(partial_exit())
    (root / "trades.jsonl").write_text(f"{trade}\n{exit_}\n")
    env = {**os.environ, "DATABASE_URL": database_url, "WINISWIN_STATE_DIR": str(tmp_path / "state"),
           "COLD_STORAGE_DIR": str(tmp_path / "cold")}
    env.pop("BUCKET_NAME", None)
    assert run_script("--legacy-dir", str(root), env=env).returncode == 0
    ((exit_uid,),) = rows(db, "SELECT exit_uid FROM trade_partial_exits")
    summary = archive_old_data(0, manager=db, store=LocalColdStore(tmp_path / "cold"),
                               as_of=dt.datetime(2100, 1, 1, tzinfo=dt.UTC), tables=["trade_partial_exits", "trades"])
    assert not summary.failed, summary
    assert rows(db, "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM trade_partial_exits)") == [(0,)]
    for uid, line in (("legacy:BTCUSDT_1761467469.637214", trade), (exit_uid, exit_)):
        shown = run_script("--show", uid, env=env)
        assert shown.returncode == 0 and shown.stdout == line.encode() + b"\n", shown.stderr
    missing = run_script("--show", "legacy:nothing", env=env)
    assert missing.returncode == 2 and b"hot or archived" in missing.stderr
