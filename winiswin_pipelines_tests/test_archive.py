"""Hot-to-cold archival against a real PostgreSQL and the real S3 protocol (moto) on loopback."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from winiswin_pipelines.archive import archive_old_data, read_history, repository, restore_days
from winiswin_pipelines.archive.archiver import ARCHIVED, BUSY, FAILED, first_kept_day
from winiswin_pipelines.archive.parquet import Fingerprint
from winiswin_pipelines.archive.tables import ARCHIVED_TABLES
from winiswin_pipelines.coldstore import LocalColdStore
from winiswin_pipelines.db.bulk import copy_upsert
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.partitions import existing_partitions
from winiswin_pipelines.resources import ColdStorageResource

OLD_DAYS = [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
AS_OF = dt.datetime(2024, 4, 15, 12, tzinfo=dt.UTC)
RECENT_DAY = dt.date(2024, 4, 1)  # inside the 30-day retention as of AS_OF


def _at(day: dt.date, hour: int, micro: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, 0, 0, micro), dt.UTC)


def seed(db: DatabaseManager, days: list[dt.date]) -> None:
    """Rows of every archived table on `days`, with every column type, NULLs, NaN and -0.0."""
    with db.engine.begin() as conn:
        for n, day in enumerate(days):
            _seed_day(conn, day, n)


def _seed_day(conn, day: dt.date, n: int) -> None:
    kline_cols = ["symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume",
                  "quote_volume", "trade_count", "taker_buy_base_volume", "taker_buy_quote_volume", "source"]
    klines = [(symbol, "5m", _at(day, h), _at(day, h) + dt.timedelta(minutes=5) - dt.timedelta(microseconds=1000),
               28000.1 + h, 28010.5, 27990.25, 28005.0 + h / 3, 685.263, 19288714.9508, 8056 + h, 317.714,
               8943102.4638, None if h else "test")
              for symbol in ("BTCUSDT", "ETHUSDT") for h in range(3)]
    copy_upsert(conn, "klines", kline_cols, klines, conflict_columns=["symbol", "interval", "open_time"])
    book_cols = ["symbol", "exchange_time", "receive_time", "last_update_id", "best_bid", "best_bid_qty", "best_ask",
                 "best_ask_qty", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes", "source"]
    books = [(symbol, _at(day, h, 123456), None if h == 1 else _at(day, h, 223456), 10**12 + h, 28000.1, 1.5,
              28000.2, -0.0, [28000.1, 28000.0, None], [1.5, float("nan"), 0.001], [] if h == 2 else [28000.2],
              None if h == 0 else [2.0], "test")
             for symbol in ("BTCUSDT", "ETHUSDT") for h in range(3)]
    copy_upsert(conn, "book_snapshots", book_cols, books, conflict_columns=["symbol", "exchange_time"])
    feature_cols = ["symbol", "ts", "mid", "obi", "label", "label_t1", "label_barrier", "features_computed_at"]
    features = [(symbol, _at(day, h), 28000.15, -0.25 + h, [-1, 0, 1][h], _at(day, h + 1), "upper" if h else None,
                 _at(day, 23)) for symbol in ("BTCUSDT", "ETHUSDT") for h in range(3)]
    copy_upsert(conn, "training_features", feature_cols, features, conflict_columns=["symbol", "ts"])
    decision_cols = ["decision_uid", "session_id", "ts", "symbol", "action", "reason", "price", "details"]
    decisions = [(f"d-{day}-{h}", "s1", _at(day, h), "BTCUSDT", "enter", "signal", 28000.5,
                  {"confidence": 0.7, "levels": [1, 2], "note": "ünïcode"} if h else None) for h in range(2)]
    copy_upsert(conn, "trading_decisions", decision_cols, decisions, conflict_columns=["decision_uid"])
    trade_cols = ["trade_uid", "symbol", "side", "status", "is_virtual", "entry_time", "entry_price", "exit_time",
                  "exit_price", "quantity", "pnl", "pnl_pct", "exit_reason", "confidence", "features", "source", "origin"]
    trades = [
        (f"closed-{day}", "BTCUSDT", "LONG", "CLOSED", True, _at(day, 1), 28000.0, _at(day, 5), 28100.0, 0.01, 1.0,
         0.0035714285714285713, "take_profit", 0.8, {"rsi": 55.5}, "test", {"line": n}),
        (f"open-{day}", "ETHUSDT", "SHORT", "OPEN", False, _at(day, 2), 1800.0, None, None, 0.1, None, None, None,
         None, None, "test", None),
    ]
    copy_upsert(conn, "trades", trade_cols, trades, conflict_columns=["trade_uid"])
    exit_cols = ["exit_uid", "trade_uid", "symbol", "exit_time", "exit_price", "quantity", "pnl", "reason", "source"]
    copy_upsert(conn, "trade_partial_exits", exit_cols,
                [(f"closed-{day}#1", f"closed-{day}", "BTCUSDT", _at(day, 3), 28050.0, 0.005, 0.25, "partial", "test")],
                conflict_columns=["exit_uid"])


def table_rows(db: DatabaseManager, table: str) -> list[tuple[Any, ...]]:
    spec = ARCHIVED_TABLES[table]
    order = ", ".join(f'"{column}"' for column in spec.natural_key)
    with db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(f'SELECT * FROM "{table}" ORDER BY {order}'))]


def all_rows(db: DatabaseManager) -> dict[str, str]:
    # repr keeps types visible (datetime with tzinfo, dict, list, bool) and makes NaN compare equal.
    return {table: repr(table_rows(db, table)) for table in ARCHIVED_TABLES}


def hot_count(db: DatabaseManager) -> int:
    with db.engine.connect() as conn:
        return sum(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in ARCHIVED_TABLES)


def s3_store(s3_endpoint: str, bucket: str, **s3_options: Any):
    return ColdStorageResource(bucket_name=bucket, prefix="archive", endpoint_url=s3_endpoint, region_name="us-east-1",
                               **s3_options).store()


def manifest_keys(db: DatabaseManager) -> set[str]:
    with db.engine.connect() as conn:
        details = conn.execute(text("SELECT details FROM archive_manifest")).scalars()
        return {part["key"] for detail in details for part in (detail or {}).get("parts", [])}


def restore_everything(db: DatabaseManager, store) -> int:
    # Parents before children: a partial exit needs its trade.
    restored = [restore_days(db, store, spec, dt.date(2000, 1, 1), dt.date(2100, 1, 1))
                for spec in reversed(ARCHIVED_TABLES.values())]
    return sum(day.inserted for days in restored for day in days)


@pytest.fixture
def store(s3_endpoint: str, s3_bucket: str):
    return s3_store(s3_endpoint, s3_bucket)


# --- the fingerprint (pure) ---------------------------------------------------------------------

def _fingerprint(*batches: pa.RecordBatch) -> str:
    fingerprint = Fingerprint()
    for batch in batches:
        fingerprint.add(batch)
    return str(fingerprint)


def test_fingerprint_ignores_order_and_batching_but_not_content() -> None:
    batch = pa.record_batch({
        "levels": pa.array([[1.0, 2.0], [], None, [3.0, None]]),
        "symbol": pa.array(["BTCUSDT", None, "ETHUSDT", "BTCUSDT"]),
        "n": pa.array([1, None, 3, 4], pa.int64()),
        "ts": pa.array([0, 1, 2, None], pa.timestamp("us", "UTC")),
    })
    whole = _fingerprint(batch)
    assert whole == _fingerprint(batch.slice(2), batch.slice(0, 1), batch.slice(1, 1))
    swapped_in_list = batch.set_column(0, "levels", pa.array([[2.0, 1.0], [], None, [3.0, None]]))
    null_for_empty = batch.set_column(0, "levels", pa.array([[1.0, 2.0], None, None, [3.0, None]]))
    swapped_rows = batch.set_column(2, "n", pa.array([4, None, 3, 1], pa.int64()))
    fingerprints = {whole, _fingerprint(swapped_in_list), _fingerprint(null_for_empty), _fingerprint(swapped_rows)}
    assert len(fingerprints) == 4
    assert whole.startswith("4:")


@pytest.mark.parametrize("literals", [
    ["'{1.5,2.5}'", "'{}'", "NULL", "'{1,NULL}'", "'[0:1]={1,2}'", "'{{1,2},{3,4}}'",
     "'{NaN,-0,Infinity,-Infinity,1e-308,5e-324}'", "'{3}'"],
    ["'{1.5,2.5,3.5}'", "'{-0,7,8}'", "'{NaN,1e300,2}'"],  # same depth everywhere: the strided path
])
def test_sent_arrays_decode_exactly_as_the_driver_decodes_arrays(db: DatabaseManager, literals: list[str]) -> None:
    from winiswin_pipelines.archive.export import decode_float8_arrays, read_arrow

    query = " UNION ALL ".join(f"SELECT {value}::float8[] AS native, array_send({value}::float8[]) AS sent"
                               for value in literals)
    schema = pa.schema([("native", pa.list_(pa.float64())), ("sent", pa.binary())])
    rows = read_arrow(db, query, schema)
    decoded = decode_float8_arrays(rows.column("sent").combine_chunks())
    assert repr(decoded.to_pylist()) == repr(rows.column("native").to_pylist())
    assert decoded.null_count == rows.column("native").null_count


# --- archive and restore ------------------------------------------------------------------------

def test_round_trip_of_every_table_restores_identical_values_and_types(db: DatabaseManager, store) -> None:
    seed(db, OLD_DAYS + [RECENT_DAY])
    before = all_rows(db)
    summary = archive_old_data(manager=db, store=store, as_of=AS_OF)

    assert not summary.failed, summary.lines()
    archived = {(r.table, r.day) for r in summary.archived}
    assert archived == {(t, d) for t in ARCHIVED_TABLES for d in OLD_DAYS}
    for result in summary.archived:
        assert result.rows > 0 and result.bytes > 0 and result.checksum and result.compression_ratio
        assert result.uri.startswith("s3://") and f"table={result.table}/date={result.day}" in result.uri
    assert {r.removed_by for r in summary.archived if r.table in ("klines", "book_snapshots")} == {"drop partition"}
    with db.engine.connect() as conn:
        assert not set(OLD_DAYS) & set(existing_partitions(conn, "book_snapshots"))
        statuses = conn.execute(text("SELECT DISTINCT status FROM archive_manifest")).scalars().all()
        open_trades = conn.execute(text("SELECT trade_uid FROM trades ORDER BY 1")).scalars().all()
    assert statuses == [repository.ARCHIVED]
    assert set(open_trades) == {f"open-{day}" for day in OLD_DAYS} | {f"closed-{RECENT_DAY}", f"open-{RECENT_DAY}"}
    assert set(store.list_keys()) == manifest_keys(db)

    assert restore_everything(db, store) == sum(r.rows for r in summary.archived)
    assert all_rows(db) == before
    assert restore_everything(db, store) == 0  # idempotent
    assert all_rows(db) == before


def test_no_day_inside_the_retention_is_touched(db: DatabaseManager, tmp_path: Path) -> None:
    keep_from = first_kept_day(30, AS_OF)
    assert keep_from == dt.date(2024, 3, 16)
    boundary = [keep_from - dt.timedelta(days=1), keep_from]
    seed(db, boundary)
    before = {t: [r for r in table_rows(db, t) if keep_from.isoformat() in repr(r)] for t in ARCHIVED_TABLES}
    summary = archive_old_data(manager=db, store=LocalColdStore(tmp_path), as_of=AS_OF)
    assert {r.day for r in summary.results} == {boundary[0]}
    after = {t: [r for r in table_rows(db, t) if keep_from.isoformat() in repr(r)] for t in ARCHIVED_TABLES}
    assert after == before and sum(map(len, after.values())) > 0
    assert archive_old_data(manager=db, store=LocalColdStore(tmp_path), as_of=AS_OF).results == []


def test_late_rows_for_an_archived_day_are_merged_into_one_copy(db: DatabaseManager, tmp_path: Path) -> None:
    store = LocalColdStore(tmp_path)
    seed(db, OLD_DAYS[:1])
    before = all_rows(db)
    archive_old_data(manager=db, store=store, as_of=AS_OF)
    seed(db, OLD_DAYS[:1])  # the same rows written again (a re-import) ...
    with db.engine.begin() as conn:  # ... plus one really new row
        copy_upsert(conn, "klines", ["symbol", "interval", "open_time", "close_time", "open", "high", "low", "close",
                                     "volume", "quote_volume", "trade_count", "taker_buy_base_volume",
                                     "taker_buy_quote_volume"],
                    [("SOLUSDT", "5m", _at(OLD_DAYS[0], 9), _at(OLD_DAYS[0], 10), 1, 2, 0.5, 1.5, 10, 15, 3, 4, 6)],
                    conflict_columns=["symbol", "interval", "open_time"])
    summary = archive_old_data(manager=db, store=store, as_of=AS_OF)
    assert not summary.failed and hot_count(db) == 1  # only the open trade stays hot
    klines = read_history("klines", OLD_DAYS[0], OLD_DAYS[0] + dt.timedelta(days=1), manager=db, store=store)
    assert len(klines) == 7 and klines["symbol"].value_counts()["SOLUSDT"] == 1
    restore_everything(db, store)
    restored = all_rows(db)
    assert len(table_rows(db, "klines")) == 7
    # Tables keyed naturally come back identical; the re-import gave trades and decisions new serial ids.
    assert {t: restored[t] for t in ("book_snapshots", "training_features")} == {
        t: before[t] for t in ("book_snapshots", "training_features")}
    assert len(table_rows(db, "trades")) == 2 and len(table_rows(db, "trading_decisions")) == 2


def test_an_archived_day_whose_copy_cannot_be_merged_stays_archived(db: DatabaseManager, tmp_path: Path) -> None:
    store = LocalColdStore(tmp_path)
    seed(db, OLD_DAYS[:1])
    archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["klines"])
    [key] = store.list_keys("table=klines/")
    damaged = tmp_path / key
    damaged.write_bytes(damaged.read_bytes()[:-10])  # the cold copy is damaged meanwhile
    seed(db, OLD_DAYS[:1])  # late rows arrive for the archived day
    [result] = archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["klines"]).results
    assert result.status == FAILED and "corrupted" in result.error
    entry = repository.manifest_entry(db, "klines", OLD_DAYS[0])
    # Still `archived`: a later run must not replace the only copy of the deleted rows with the late ones.
    assert entry.status == repository.ARCHIVED and "corrupted" in entry.error
    assert len(table_rows(db, "klines")) == 6 and store.list_keys("table=klines/") == [key]


# --- failures at every step -----------------------------------------------------------------------

@pytest.mark.parametrize("step", ["exported", "uploaded", "verified", "deleting"])
def test_a_failure_at_any_step_keeps_the_rows_and_a_rerun_converges(db: DatabaseManager, store, step: str) -> None:
    seed(db, OLD_DAYS[:1])
    before = all_rows(db)

    def fail(at: str, table: str, day: dt.date, details: dict) -> None:
        if at == step and table == "book_snapshots":
            raise RuntimeError(f"injected failure after {at}")

    failed = archive_old_data(manager=db, store=store, as_of=AS_OF, progress=fail)
    [broken] = failed.failed
    assert broken.table == "book_snapshots" and "injected failure" in broken.error
    assert table_rows(db, "book_snapshots") and repr(table_rows(db, "book_snapshots")) == before["book_snapshots"]
    entry = repository.manifest_entry(db, "book_snapshots", OLD_DAYS[0])
    assert entry.status == repository.FAILED and "injected failure" in entry.error

    rerun = archive_old_data(manager=db, store=store, as_of=AS_OF)
    assert not rerun.failed and ("book_snapshots", OLD_DAYS[0]) in {(r.table, r.day) for r in rerun.archived}
    assert set(store.list_keys()) == manifest_keys(db)  # no orphan object
    restore_everything(db, store)
    assert all_rows(db) == before  # nothing lost, nothing duplicated


CHILD = """
import datetime as dt, os, signal, sys
from winiswin_pipelines import factories
from winiswin_pipelines.archive import archive_old_data
from winiswin_pipelines.db.manager import DatabaseManager

def die(step, table, day, details):
    if step == sys.argv[1] and table == "book_snapshots":
        os.kill(os.getpid(), signal.SIGKILL)

store = factories.cold_store(sys.argv[2], "archive", client=factories.s3_client(sys.argv[3], region="us-east-1"))
archive_old_data(manager=DatabaseManager(os.environ["DATABASE_URL"]), store=store,
                 as_of=dt.datetime(2024, 4, 15, 12, tzinfo=dt.UTC), progress=die)
"""


@pytest.mark.parametrize("step", ["uploaded", "deleting"])
def test_a_killed_process_loses_nothing_and_a_rerun_converges(
    db: DatabaseManager, database_url: str, s3_endpoint: str, s3_bucket: str, store, step: str
) -> None:
    seed(db, OLD_DAYS[:1])
    before = all_rows(db)
    child = subprocess.run([sys.executable, "-c", CHILD, step, s3_bucket, s3_endpoint],
                           env={**os.environ, "DATABASE_URL": database_url}, timeout=180, capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert repr(table_rows(db, "book_snapshots")) == before["book_snapshots"]

    deadline = time.monotonic() + 30
    while (rerun := archive_old_data(manager=db, store=store, as_of=AS_OF)).results and any(
        r.status == BUSY for r in rerun.results
    ):  # the killed backend may hold its lock for a moment
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not rerun.failed
    assert set(store.list_keys()) == manifest_keys(db)
    restore_everything(db, store)
    assert all_rows(db) == before


@pytest.mark.parametrize("damage", ["missing", "corrupted"])
def test_a_missing_or_corrupted_object_fails_verification_and_keeps_the_rows(
    db: DatabaseManager, store, damage: str
) -> None:
    seed(db, OLD_DAYS[:1])
    before = all_rows(db)

    def tamper(step: str, table: str, day: dt.date, details: dict) -> None:
        if step != "uploaded" or table != "klines":
            return
        key = store._key(details["keys"][0])
        if damage == "missing":
            store.client.delete_object(Bucket=store.bucket, Key=key)
        else:  # same size and same recorded checksum, different bytes
            stored = store.client.get_object(Bucket=store.bucket, Key=key)
            body = bytearray(stored["Body"].read())
            body[len(body) // 2] ^= 0xFF
            store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(body), Metadata=stored["Metadata"])

    summary = archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["klines"], progress=tamper)
    [result] = summary.results
    assert result.status == FAILED
    assert ("missing" in result.error) if damage == "missing" else ("SHA-256" in result.error)
    assert repr(table_rows(db, "klines")) == before["klines"]
    assert archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["klines"]).results[0].status == ARCHIVED


def test_unreachable_s3_keeps_the_rows_with_a_clear_error(db: DatabaseManager, s3_bucket: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store = s3_store(dead, s3_bucket, max_attempts=1)
    seed(db, OLD_DAYS[:1])
    before = all_rows(db)
    summary = archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["klines", "trades"])
    assert [r.status for r in summary.results] == [FAILED, FAILED]
    assert all("Could not connect to the endpoint URL" in r.error and dead in r.error for r in summary.results)
    assert all_rows(db) == before


def test_two_runs_of_one_table_and_day_cannot_interleave(db: DatabaseManager, tmp_path: Path) -> None:
    seed(db, OLD_DAYS[:1])
    with repository.locked_day(db, "klines", OLD_DAYS[0]) as held:
        assert held is not None
        summary = archive_old_data(manager=db, store=LocalColdStore(tmp_path), as_of=AS_OF, tables=["klines"])
        assert [r.status for r in summary.results] == [BUSY]
        assert len(table_rows(db, "klines")) == 6
    assert archive_old_data(manager=db, store=LocalColdStore(tmp_path), as_of=AS_OF,
                            tables=["klines"]).results[0].status == ARCHIVED


# --- reading archived data ------------------------------------------------------------------------

def test_history_reader_returns_hot_and_cold_rows_as_one_frame(db: DatabaseManager, tmp_path: Path) -> None:
    store = LocalColdStore(tmp_path)
    seed(db, OLD_DAYS)
    hot_frame = read_history("book_snapshots", _at(OLD_DAYS[0], 1), _at(OLD_DAYS[1], 2), manager=db, store=store)
    archive_old_data(manager=db, store=store, as_of=AS_OF, days=OLD_DAYS[:1])  # day 1 cold, day 2 hot
    mixed = read_history("book_snapshots", _at(OLD_DAYS[0], 1), _at(OLD_DAYS[1], 2), manager=db, store=store)
    pd.testing.assert_frame_equal(mixed, hot_frame)
    assert len(mixed) == 8 and str(mixed["exchange_time"].dtype) == "datetime64[us, UTC]"
    only_eth = read_history("book_snapshots", OLD_DAYS[0], OLD_DAYS[1] + dt.timedelta(days=1), ["ETHUSDT"],
                            manager=db, store=store)
    assert set(only_eth["symbol"]) == {"ETHUSDT"} and len(only_eth) == 6
    with pytest.raises(ValueError, match="timezone-aware"):
        read_history("klines", dt.datetime(2024, 3, 1), dt.datetime(2024, 3, 2), manager=db, store=store)


def test_archived_objects_are_ordered_by_symbol_then_time(db: DatabaseManager, tmp_path: Path) -> None:
    """So each row group holds few symbols, and a reader's symbol filter skips the others by their
    statistics instead of reading every symbol of the day."""
    store = LocalColdStore(tmp_path)
    seed(db, OLD_DAYS[:1])
    archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["book_snapshots"])
    (path,) = (tmp_path / "table=book_snapshots").rglob("*.parquet")
    rows = pq.read_table(path, columns=["symbol", "exchange_time"]).to_pylist()
    assert len({row["symbol"] for row in rows}) == 2
    assert rows == sorted(rows, key=lambda row: (row["symbol"], row["exchange_time"]))


def test_duckdb_and_pyarrow_read_the_hive_layout(db: DatabaseManager, tmp_path: Path) -> None:
    store = LocalColdStore(tmp_path)
    seed(db, OLD_DAYS)
    archive_old_data(manager=db, store=store, as_of=AS_OF)
    pattern = str(tmp_path / "table=book_snapshots" / "*" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT date, count(*), min(exchange_time), any_value(bid_prices) FROM read_parquet('{pattern}', "
        "hive_partitioning = true) GROUP BY date ORDER BY date"
    ).fetchall()
    assert [(str(r[0]), r[1]) for r in rows] == [(str(day), 6) for day in OLD_DAYS]
    assert rows[0][2].utcoffset() == dt.timedelta(0) and isinstance(rows[0][3], list)
    import pyarrow.dataset as ds

    dataset = ds.dataset(tmp_path / "table=klines", format="parquet", partitioning="hive")
    assert dataset.to_table().num_rows == 12 and "date" in dataset.schema.names
    frame = pd.read_parquet(tmp_path / "table=klines")
    assert len(frame) == 12 and str(frame["open_time"].dtype) == "datetime64[us, UTC]"


def test_large_objects_go_up_in_parts_each_with_its_checksum(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from winiswin_pipelines import coldstore as store_module

    monkeypatch.setattr(store_module, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's smallest part
    big = tmp_path / "big.parquet"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    checksum = store_module.sha256_file(big)
    stored = store.put_file(big, "table=klines/date=2024-03-01/part-00000.parquet", checksum)
    assert (stored.size, stored.sha256) == (big.stat().st_size, checksum)
    key = store._key(stored.key)
    attributes = store.client.get_object_attributes(Bucket=store.bucket, Key=key, ObjectAttributes=["Checksum"])
    assert attributes["Checksum"]["ChecksumType"] == "COMPOSITE" and attributes["Checksum"]["ChecksumSHA256"]
    assert store.client.head_object(Bucket=store.bucket, Key=key)["ETag"].strip('"').endswith("-3")  # 3 parts
    copy = tmp_path / "copy.parquet"
    store.download(stored.key, copy)
    assert store_module.sha256_file(copy) == checksum


def test_restoring_a_child_before_its_parent_fails_clearly_and_writes_nothing(
    db: DatabaseManager, tmp_path: Path
) -> None:
    from winiswin_pipelines.archive.restore import RestoreError

    store = LocalColdStore(tmp_path)
    seed(db, OLD_DAYS[:1])
    archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["trade_partial_exits", "trades"])
    with pytest.raises(RestoreError, match="trades before trade_partial_exits"):
        restore_days(db, store, ARCHIVED_TABLES["trade_partial_exits"], OLD_DAYS[0], OLD_DAYS[0])
    assert table_rows(db, "trade_partial_exits") == []


def test_nothing_erases_archived_data_restore_recompute_rearchive(db: DatabaseManager, tmp_path: Path) -> None:
    """A recomputed feature row (labels NULL) written for an archived day, archived again, keeps the
    labels the archived copy holds, and takes the new feature values; a restore follows the same rule."""
    store = LocalColdStore(tmp_path)
    seed(db, OLD_DAYS[:1])
    archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["training_features"])
    day = OLD_DAYS[0]
    with db.engine.begin() as conn:  # the features of the day recomputed: new values, no labels yet
        copy_upsert(conn, "training_features", ["symbol", "ts", "mid", "obi"],
                    [("BTCUSDT", _at(day, h), 29000.0 + h, 0.5) for h in range(3)], conflict_columns=["symbol", "ts"])

    def check(rows: pd.DataFrame) -> None:  # new feature values, the archived labels kept
        assert rows["mid"].tolist() == [29000.0, 29001.0, 29002.0] and rows["obi"].tolist() == [0.5] * 3
        assert rows["label"].tolist() == [-1, 0, 1] and rows["label_barrier"].tolist()[1:] == ["upper", "upper"]
        assert rows["label_t1"].notna().all()

    # The reader merges the tiers by the same rule before the archiver does.
    check(read_history("training_features", day, day + dt.timedelta(days=1), ["BTCUSDT"], manager=db, store=store))
    summary = archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["training_features"])
    assert [r.status for r in summary.results] == [ARCHIVED]
    rows = read_history("training_features", day, day + dt.timedelta(days=1), ["BTCUSDT"], manager=db, store=store)
    check(rows)
    # Restore then re-archive twice: the copy keeps being the same rows.
    restored = restore_days(db, store, ARCHIVED_TABLES["training_features"], day, day)
    assert restored[0].inserted == 6 and restored[0].filled == 0
    archive_old_data(manager=db, store=store, as_of=AS_OF, tables=["training_features"])
    again = read_history("training_features", day, day + dt.timedelta(days=1), ["BTCUSDT"], manager=db, store=store)
    pd.testing.assert_frame_equal(again, rows)


def test_a_copy_written_under_an_earlier_schema_reads_in_the_schema_of_today() -> None:
    """A column added to the table since the day was archived reads as NULL, a dropped one is left out."""
    from winiswin_pipelines.archive.parquet import conform

    today = ARCHIVED_TABLES["training_features"].schema
    earlier = pa.RecordBatch.from_pydict(
        {"symbol": ["BTCUSDT"], "ts": pa.array([_at(OLD_DAYS[0], 1)], pa.timestamp("us", "UTC")), "mid": [28000.5],
         "raw": ['{"gone": true}']})
    batch = conform(earlier, today)
    assert batch.schema == today and batch.num_rows == 1
    assert batch.column("mid").to_pylist() == [28000.5] and batch.column("label_cost").to_pylist() == [None]
