"""Legacy readers and normalisation (pure, no database): every store, every variant, every kind of damage."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import sqlite3
from pathlib import Path

import orjson
import pytest

from winiswin_pipelines import settings
from winiswin_pipelines.legacy.accounting import SourceReport
from winiswin_pipelines.legacy.normalize import Normalizer, content_uid
from winiswin_pipelines.legacy.originals import record_bytes
from winiswin_pipelines.legacy.pipeline import iter_outcomes
from winiswin_pipelines.legacy.readers import count_records, read_records
from winiswin_pipelines.legacy.records import (
    PARTIAL_EXIT_COLUMNS,
    TRADE_COLUMNS,
    LegacySourceError,
    Merged,
    Rejected,
    Row,
)
from winiswin_pipelines.legacy.sniff import Store, StoreFormat, discover_stores, store_for
from winiswin_pipelines_tests.legacy_fixtures import (
    a1,
    mismatched_positions_csv,
    sibling_log,
    sibling_paired,
    virtual_position,
    write_legacy_folder,
)

SAMPLES = settings.SAMPLE_DATA_DIR / "legacy"
UTC = dt.UTC


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("legacy")
    return root, write_legacy_folder(root)


def outcomes(root: Path, relpath: str, naive_timezone: str = "UTC") -> list:
    return list(iter_outcomes(store_for(root, relpath), naive_timezone))


def trade(outcome: Row) -> dict:
    assert isinstance(outcome, Row), outcome
    columns = TRADE_COLUMNS if outcome.table == "trades" else PARTIAL_EXIT_COLUMNS
    values = dict(zip(columns, outcome.values, strict=True))
    if values.get("origin") is not None:
        values["origin"] = orjson.loads(values["origin"])
    return values


def record_of(root: Path, relpath: str, origin: dict) -> bytes:
    """The bytes `origin` points to, read out of the file itself."""
    store = store_for(root, relpath)
    return record_bytes(store.path, store.format.value, origin)


def rows_by_key(root: Path, relpath: str, **kwargs) -> dict[str, dict]:
    return {o.key: trade(o) for o in outcomes(root, relpath, **kwargs) if isinstance(o, Row)}


def test_discovery_sniffs_formats_from_content_not_names(legacy):
    root, expected = legacy
    stores, skipped = discover_stores(root)
    assert {s.relpath: s.format.value for s in stores} == {k: v["format"] for k, v in expected.stores.items()}
    assert {s.relpath for s in skipped} == expected.skipped
    # The same file name holds JSON lines in winiswin2 and a JSON array in the sibling repo.
    formats = {s.relpath: s.format for s in stores}
    assert formats["data/trades.json"] is StoreFormat.JSONL
    assert formats["sibling/data/trades.json"] is StoreFormat.JSON_ARRAY


def test_every_store_reads_and_normalises_as_expected(legacy):
    root, expected = legacy
    for relpath, want in expected.stores.items():
        store = store_for(root, relpath)
        report = SourceReport(store.source, relpath, store.format.value, "UTC")
        for outcome in iter_outcomes(store):
            report.add(outcome)
        migrated = {name: stats.migrated for name, stats in report.variants.items() if stats.migrated}
        got = {"read": report.read, "migrated": report.migrated, "quarantined": report.quarantined, "variants": migrated}
        assert got == {k: want[k] for k in got}, relpath
        assert count_records(store) == report.read, relpath


def test_every_kind_of_damage_is_rejected_with_its_reason_and_raw_text(legacy):
    root, expected = legacy
    rejected = {}
    for relpath in expected.stores:
        store = store_for(root, relpath)
        rejected.update({(store.source, o.position): o for o in iter_outcomes(store) if isinstance(o, Rejected)})
    assert set(rejected) == set(expected.quarantine_reasons)
    for key, reason in expected.quarantine_reasons.items():
        assert reason in rejected[key].reason, key
    jsonl = {position: o for (source, position), o in rejected.items() if source == "legacy:data/trades.jsonl"}
    assert jsonl["line 7"].raw_text.startswith('{"symbol": "BTCUSDT", "direction": "LONG", "entry_pri')
    assert jsonl["line 11"].raw_text.endswith('caf\\xe9"}')  # undecodable byte kept visibly
    assert "\x00" not in jsonl["line 16"].raw_text
    assert rejected[("legacy:broken/trading_data.db", "file")].raw_text.startswith("base64:")


def test_variant_a1_line_normalised_with_a_pointer_to_its_bytes(legacy):
    root, _ = legacy
    rows = rows_by_key(root, "data/trades.json")
    row = rows["legacy:BTCUSDT_1761467469.637214"]
    assert row["symbol"] == "BTCUSDT" and row["side"] == "LONG" and row["status"] == "CLOSED"
    assert row["entry_time"] == dt.datetime(2025, 10, 26, 8, 31, 9, 637214, tzinfo=UTC)
    assert row["exit_time"] == dt.datetime(2025, 10, 26, 10, 2, 11, 120034, tzinfo=UTC)
    assert (row["entry_price"], row["exit_price"], row["stop_loss"], row["take_profit"]) == (67010.5, 67512.0, 66510.0, 67760.0)
    assert (row["pnl"], row["pnl_pct"], row["confidence"], row["leverage"]) == (0.9, 0.0075, 0.72, 5.0)
    assert row["exit_reason"] == "TAKE_PROFIT" and row["is_virtual"] is False
    assert row["source"] == "legacy:data/trades.json"
    assert "raw" not in row  # no copy of the record: a pointer to its bytes
    first_line = len((root / "data/trades.json").read_bytes().split(b"\n")[0]) + 1
    line = json.dumps(a1()).encode()
    assert row["origin"] == {"file": "data/trades.json", "position": "line 2", "variant": "A1",
                             "naive_time": "UTC (assumed)", "seq": 2, "line": 2, "offset": first_line,
                             "length": len(line)}
    assert record_of(root, "data/trades.json", row["origin"]) == line


def test_variant_a0_rebuilt_and_virtual_close_records(legacy):
    root, _ = legacy
    rows = rows_by_key(root, "data/trades.json")
    a0_row = rows["legacy:ETHUSDT_1761400000.100000"]
    assert a0_row["origin"]["variant"] == "A0" and a0_row["side"] == "SHORT" and a0_row["confidence"] == 0.61
    assert rows["legacy:REBUILT_DOGEUSDT_1761470000"]["origin"]["rebuilt"] is True
    virtual = rows["legacy:LINKUSDT_1761471000.5"]  # v3.16 virtual close: pnl == pnl_pct, a fraction
    assert virtual["is_virtual"] is True
    assert virtual["pnl"] == pytest.approx(0.012 * 120.0) and virtual["pnl_pct"] == 0.012
    assert "virtual close inferred" in virtual["origin"]["notes"][0]


def test_variants_b_b_prime_c_and_d(legacy):
    root, _ = legacy
    rows = rows_by_key(root, "data/trades.jsonl")
    b_row = rows["legacy:XRPUSDT_1761822000.000001"]
    assert b_row["origin"]["variant"] == "B"
    assert b_row["side"] == "SHORT"  # the metadata string overwrote the ±1 feature
    assert (b_row["confidence"], b_row["win_probability"], b_row["pnl_pct"]) == (0.55, 0.58, -0.016)
    assert b_row["exit_reason"] == "STOP_LOSS"
    assert rows["legacy:XRPUSDT_1762084000.000001"]["origin"]["variant"] == "B'"
    c_row = rows["legacy:SOLUSDT_1762200000.000001"]
    assert c_row["origin"]["variant"] == "C" and c_row["leverage"] is None and c_row["win_probability"] is None
    d_row = rows["legacy:BNBUSDT_1762350000.5"]
    assert d_row["origin"]["variant"] == "D" and d_row["exit_reason"] == "time_based_stop_loss"
    assert (d_row["quantity"], d_row["pnl"], d_row["pnl_pct"]) == (0.05, 1.0, 0.0198)
    # the first D line carried a byte order mark: removed, migrated, and said so
    first_d = next(o for o in outcomes(root, "data/trades.jsonl") if isinstance(o, Row) and o.variant == "D")
    assert trade(first_d)["origin"]["notes"] == ["byte order mark removed"]


def test_pending_entries_become_open_trades(legacy):
    root, _ = legacy
    pending = rows_by_key(root, "data/ml_pending_entries.json")
    row = pending["legacy:ETHUSDT_1761500000.25"]
    assert row["status"] == "OPEN" and row["exit_time"] is None and row["side"] == "SHORT"
    assert row["origin"]["variant"] == "pending" and row["win_probability"] == 0.6
    d_row = rows_by_key(root, "data/pending_entries.json")["legacy:ADAUSDT_1762380000.1"]
    assert (d_row["status"], d_row["quantity"], d_row["origin"]["variant"]) == ("OPEN", 150.0, "pending-D")


def test_partial_exits_go_to_their_own_table(legacy):
    root, _ = legacy
    found = [o for o in outcomes(root, "data/partial_exits.json")]
    assert {o.table for o in found} == {"trade_partial_exits"}
    row = trade(found[0])
    assert row["symbol"] == "BTCUSDT" and row["exit_time"] == dt.datetime(2025, 11, 1, 10, 0, 0, 1, tzinfo=UTC)
    assert (row["quantity"], row["pnl"], row["pnl_pct"], row["reason"]) == (0.001, 1.2, 0.6, "60pct_profit")
    assert row["exit_uid"].startswith("legacy:partial:")


def test_virtual_positions_are_virtual_with_fraction_pnl_pct(legacy):
    root, _ = legacy
    rows = {r["symbol"]: r for r in rows_by_key(root, "data/virtual_positions.json").values()}
    closed, active = rows["AVAXUSDT"], rows["SOLUSDT"]
    assert closed["is_virtual"] and closed["status"] == "CLOSED" and closed["exit_price"] == 142.4
    assert closed["pnl_pct"] == pytest.approx(0.0507) and closed["exit_reason"] == "TAKE_PROFIT"
    assert active["is_virtual"] and active["status"] == "OPEN" and active["exit_time"] is None


def test_virtual_position_pnl_pct_is_a_fraction_and_current_pnl_is_percent(tmp_path):
    # legacy-system.md §2.1: pnl_pct is a fraction (a virtual close writes current_pnl / 100) and
    # current_pnl is percent: a +5.07 % close is 0.0507 from either field, never 0.000507.
    with_pnl_pct = virtual_position("AVAXUSDT", closed=True)
    only_current = {**virtual_position("DOTUSDT", closed=True), "pnl_pct": None}
    (tmp_path / "virtual_positions.json").write_text(json.dumps({"AVAXUSDT": with_pnl_pct, "DOTUSDT": only_current}))
    rows = {r["symbol"]: r for r in rows_by_key(tmp_path, "virtual_positions.json").values()}
    assert with_pnl_pct["pnl_pct"] == 0.0507 and with_pnl_pct["current_pnl"] == 5.07
    assert rows["AVAXUSDT"]["pnl_pct"] == pytest.approx(0.0507)
    assert rows["DOTUSDT"]["pnl_pct"] == pytest.approx(0.0507)


def _sqlite_confidences(path: Path, values: list[tuple[float, float]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE trade_history (id INTEGER PRIMARY KEY, symbol TEXT, direction TEXT, entry_price REAL, "
                     "position_size REAL, entry_time TIMESTAMP, confidence REAL, win_probability REAL, status TEXT)")
        conn.executemany("INSERT INTO trade_history (symbol, direction, entry_price, position_size, entry_time, confidence, "
                         "win_probability, status) VALUES ('BTCUSDT', 'LONG', 50000, 0.01, '2025-11-03 14:52:31', ?, ?, 'OPEN')",
                         values)


def test_confidence_scale_is_decided_per_store_not_per_value(tmp_path):
    # A store on 0..100 (one value above 1): 1.0 there means 1 %, not 100 %.
    _sqlite_confidences(tmp_path / "trading_data.db", [(65.0, 60.0), (1.0, 0.5)])
    rows = [trade(o) for o in outcomes(tmp_path, "trading_data.db")]
    assert [(r["confidence"], r["win_probability"]) for r in rows] == [(0.65, 0.6), (0.01, 0.005)]
    assert rows[1]["origin"]["confidence_scale"].startswith("0..100")
    # A store on 0..1 (no value above 1): the same 1.0 is 100 %.
    other = tmp_path / "other"
    other.mkdir()
    _sqlite_confidences(other / "trading_data.db", [(0.65, 0.6), (1.0, 0.5)])
    rows = [trade(o) for o in outcomes(other, "trading_data.db")]
    assert [(r["confidence"], r["win_probability"]) for r in rows] == [(0.65, 0.6), (1.0, 0.5)]
    assert rows[0]["origin"]["confidence_scale"].startswith("0..1 ")


def test_confidence_outside_the_store_scale_is_quarantined_not_rescaled(tmp_path):
    # winiswin2 wrote confidence on 0..1: a 72.0 there is not silently read as 72 %.
    (tmp_path / "trades.jsonl").write_bytes(json.dumps(a1("BTCUSDT_1.0", confidence_score=72.0)).encode() + b"\n")
    (rejected,) = outcomes(tmp_path, "trades.jsonl")
    assert isinstance(rejected, Rejected) and "confidence_score: 72.0 is outside 0..1" in rejected.reason
    # the sibling repository wrote 0..100: 1.0 is 1 %
    (tmp_path / "ml_training_data.json").write_text(json.dumps([{**sibling_paired("ETHUSDT_20251024_100000"),
        "signal_features": {"confidence": 1.0, "strategy": "ICT_SMC"}}]))
    (row,) = outcomes(tmp_path, "ml_training_data.json")
    assert trade(row)["confidence"] == 0.01


def test_sibling_formats_buy_sell_percent_confidence_and_utc_writer(legacy):
    root, _ = legacy
    (closed,) = rows_by_key(root, "sibling/data/trades.json").values()  # its ENTRY and EXIT rows
    assert closed["status"] == "CLOSED" and closed["symbol"] == "BTCUSDT" and closed["side"] == "LONG"
    assert closed["pnl_pct"] == pytest.approx(0.0185)
    assert closed["trade_uid"].startswith("legacy:trade:")  # no id: uid from content
    paired = rows_by_key(root, "sibling/ml_training_data.json")["legacy:ETHUSDT_20251024_100000"]
    assert paired["side"] == "LONG" and paired["confidence"] == 0.725 and paired["is_virtual"] is True
    assert paired["pnl_pct"] == pytest.approx(-0.0308) and paired["exit_reason"] == "STOP_LOSS"
    assert paired["origin"]["naive_time"] == "UTC (the legacy writer stored UTC)"
    entry = rows_by_key(root, "sibling/ml_pending_entries.json")["legacy:ETHUSDT_20251024_120000"]
    assert entry["status"] == "OPEN" and entry["side"] == "SHORT" and entry["strategy"] == "ICT_SMC"


def test_positions_csv_pairs_open_and_close_rows_and_reads_headerless_flushes(legacy):
    root, _ = legacy
    found = outcomes(root, "ml_data/positions.csv")
    assert [type(o).__name__ for o in found].count("Merged") == 2
    rows = {trade(o)["origin"]["position"]: trade(o) for o in found if isinstance(o, Row)}
    btc = rows["line 2+3"]
    assert btc["status"] == "CLOSED" and btc["entry_time"] == dt.datetime(2025, 10, 26, 10, tzinfo=UTC)
    assert btc["exit_time"] == dt.datetime(2025, 10, 26, 12, tzinfo=UTC)
    assert (btc["pnl"], btc["pnl_pct"], btc["confidence"]) == (10.0, pytest.approx(0.0149), 0.7)
    csv_lines = (root / "ml_data/positions.csv").read_bytes().split(b"\n")
    assert record_of(root, "ml_data/positions.csv", btc["origin"]) == csv_lines[1] + b"\n" + csv_lines[2]
    eth = rows["line 4+7"]
    assert eth["symbol"] == "ETHUSDT" and eth["is_virtual"] is True and eth["side"] == "SHORT"
    sol = rows["line 5"]  # a header-less OPEN-only flush: 23 columns mapped by the OPEN layout
    assert (sol["status"], sol["symbol"], sol["stop_loss"], sol["take_profit"], sol["quantity"]) == (
        "OPEN", "SOLUSDT", 185.0, 200.0, 1.0)
    assert sol["trade_uid"] != btc["trade_uid"]  # POS_0000 again after a restart is another trade


def test_sqlite_v2_trade_history_and_current_positions(legacy):
    root, _ = legacy
    found = outcomes(root, "trading_data.db")
    closed = trade(next(o for o in found if o.key == "legacy:a1b2c3d4e5f60718"))
    assert (closed["status"], closed["fees"], closed["strategy"], closed["exit_reason"]) == ("CLOSED", 0.05, "v3.23", "TAKE_PROFIT")
    assert closed["pnl_pct"] == pytest.approx(0.0072) and closed["quantity"] == 0.002
    assert closed["entry_time"] == dt.datetime(2025, 11, 4, 10, 0, 0, 123456, tzinfo=UTC)
    same_trade = [trade(o) for o in found if o.key == "legacy:ffee0011aabb2233"]
    assert [r["origin"]["variant"] for r in same_trade] == ["sqlite-v2-current", "sqlite-v2"]
    assert same_trade[0]["stop_loss"] == 3560.0 and same_trade[0]["leverage"] == 4.0


def test_naive_timestamps_follow_the_configured_assumption(legacy):
    root, _ = legacy
    row = rows_by_key(root, "data/trades.json", naive_timezone="Asia/Taipei")["legacy:BTCUSDT_1761467469.637214"]
    assert row["entry_time"] == dt.datetime(2025, 10, 26, 0, 31, 9, 637214, tzinfo=UTC)
    assert row["origin"]["naive_time"] == "Asia/Taipei (assumed)"
    sibling = rows_by_key(root, "sibling/ml_training_data.json", naive_timezone="Asia/Taipei")
    assert sibling["legacy:ETHUSDT_20251024_100000"]["entry_time"].hour == 10  # written with utcnow()
    with pytest.raises(ValueError, match="Mars/Olympus"):
        Normalizer("legacy:x", "x", "Mars/Olympus")


def test_uids_are_deterministic_from_content(legacy):
    root, _ = legacy
    first = rows_by_key(root, "sibling/data/trades.json")
    assert first == rows_by_key(root, "sibling/data/trades.json")
    record = sibling_log("BUY", None, "2025-10-23T09:00:00.000001")
    assert f"legacy:trade:{hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]}" in first
    assert content_uid("trade", {"b": 1, "a": 2}) == content_uid("trade", {"a": 2, "b": 1})


def test_real_samples_from_the_legacy_repositories():
    stores, skipped = discover_stores(SAMPLES)
    assert {s.relpath: s.format.value for s in stores} == {
        "example_positions.csv": "positions-csv", "ml_pending_entries.json": "json-object",
        "test_ml_data.json": "json-array", "trading_data.db": "sqlite",
    }
    assert {s.relpath for s in skipped} == {"MANIFEST.txt", "example_signals.csv", "example_xgboost_training.csv"}
    positions = outcomes(SAMPLES, "example_positions.csv")
    rows = [trade(o) for o in positions if isinstance(o, Row)]
    assert len(positions) == 100 and len(rows) == 50 and all(r["status"] == "CLOSED" for r in rows)
    first = rows[0]
    assert (first["symbol"], first["pnl"], first["pnl_pct"], first["is_virtual"]) == ("SOLUSDT", 9.31, 0.012, True)
    assert first["exit_time"] - first["entry_time"] == dt.timedelta(minutes=900)
    (paired,) = [trade(o) for o in outcomes(SAMPLES, "test_ml_data.json")]
    assert (paired["side"], paired["entry_price"], paired["quantity"], paired["stop_loss"], paired["take_profit"]) == (
        "LONG", 50000.0, 0.01, 49000.0, 52000.0)
    assert (paired["leverage"], paired["confidence"], paired["exit_price"], paired["exit_reason"]) == (
        10.0, 0.85, 51000.0, "TAKE_PROFIT")
    assert (paired["pnl"], paired["pnl_pct"]) == (100.0, 0.02)
    sqlite_rows = [trade(o) for o in outcomes(SAMPLES, "trading_data.db")]
    assert [(r["symbol"], r["side"], r["status"], r["confidence"], r["win_probability"]) for r in sqlite_rows] == [
        ("BTCUSDT", "LONG", "OPEN", 0.65, 0.6), ("ETHUSDT", "SHORT", "OPEN", 0.7, 0.65), ("ADAUSDT", "LONG", "OPEN", 0.75, 0.7)]
    assert sqlite_rows[0]["entry_time"] == dt.datetime(2025, 11, 3, 14, 52, 31, tzinfo=UTC)
    assert outcomes(SAMPLES, "ml_pending_entries.json") == []


def test_damaged_gzip_keeps_the_readable_lines_and_quarantines_the_rest(tmp_path):
    payload = gzip.compress(b"".join(json.dumps(a1(f"BTCUSDT_{i}.0")).encode() + b"\n" for i in range(200)))
    (tmp_path / "trades_20251105_010101.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    found = list(iter_outcomes(store_for(tmp_path, "trades_20251105_010101.jsonl.gz")))
    assert isinstance(found[-1], Rejected) and "damaged gzip stream" in found[-1].reason
    assert len(found) > 1 and all(isinstance(o, Row) for o in found[:-1])


def test_truncated_and_empty_documents(tmp_path):
    (tmp_path / "pending_entries.json").write_bytes(b"")  # a non-atomic rewrite left it empty
    (tmp_path / "virtual_positions.json").write_text('{"BTCUSDT": {"symbol": "BTCUSDT", "direction"')
    stores = {s.relpath: s for s in discover_stores(tmp_path)[0]}
    assert list(read_records(stores["pending_entries.json"])) == []
    (rejected,) = read_records(stores["virtual_positions.json"])
    assert rejected.position == "file" and "unrecognised content" in rejected.reason
    assert rejected.raw_text.startswith("base64:")


def test_missing_folder_or_store_is_a_clear_error(tmp_path):
    with pytest.raises(LegacySourceError, match=str(tmp_path / "nope")):
        discover_stores(tmp_path / "nope")
    with pytest.raises(LegacySourceError, match="legacy store not found: .*trades.jsonl"):
        store_for(tmp_path, "trades.jsonl")
    with pytest.raises(LegacySourceError, match="legacy store not found"):
        list(read_records(Store(tmp_path, "gone.jsonl", StoreFormat.JSONL)))


def test_reading_never_modifies_the_legacy_files(legacy):
    root, expected = legacy
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for relpath in expected.stores:
        list(iter_outcomes(store_for(root, relpath)))
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before  # same files (no -wal/-shm appeared), same bytes


def test_merged_rows_and_records_add_up(legacy):
    root, _ = legacy
    found = outcomes(root, "ml_data/positions.csv")
    kinds = {name: sum(type(o).__name__ == name for o in found) for name in ("Row", "Rejected", "Merged")}
    assert kinds == {"Row": 3, "Rejected": 1, "Merged": 2}
    assert all(isinstance(o, (Row, Rejected, Merged)) for o in found)


def test_positions_csv_without_any_header(tmp_path):
    sample = (SAMPLES / "example_positions.csv").read_text().splitlines()
    (tmp_path / "positions.csv").write_text("\n".join(sample[1:5]) + "\n")  # two OPEN/CLOSE pairs, no header
    store = discover_stores(tmp_path)[0][0]
    assert store.format is StoreFormat.POSITIONS_CSV
    rows = [trade(o) for o in iter_outcomes(store) if isinstance(o, Row)]
    assert [(r["symbol"], r["status"], r["pnl"]) for r in rows] == [("SOLUSDT", "CLOSED", 9.31), ("ETHUSDT", "CLOSED", -6.68)]


def test_sibling_trade_log_entry_and_exit_rows_become_one_trade(tmp_path):
    entry = sibling_log("BUY", None, "2025-10-23T09:00:00.000001")
    other = {**sibling_log("SELL", None, "2025-10-23T09:30:00"), "symbol": "ETH/USDT", "entry_price": 3900.0}
    exit_ = sibling_log("BUY", 110000.0, "2025-10-23T12:00:00.5")
    (tmp_path / "trades.json").write_text(json.dumps([entry, other]))
    before = {trade(o)["symbol"]: trade(o) for o in outcomes(tmp_path, "trades.json")}
    assert before["BTCUSDT"]["status"] == "OPEN"
    (tmp_path / "trades.json").write_text(json.dumps([entry, other, exit_]))  # TradeLogger rewrites the array
    found = outcomes(tmp_path, "trades.json")
    assert [type(o).__name__ for o in found] == ["Merged", "Row", "Row"]
    rows = {trade(o)["symbol"]: trade(o) for o in found if isinstance(o, Row)}
    btc = rows["BTCUSDT"]
    assert btc["trade_uid"] == before["BTCUSDT"]["trade_uid"]  # the uid the OPEN trade had: the re-run closes it
    assert (btc["status"], btc["side"], btc["entry_price"], btc["exit_price"]) == ("CLOSED", "LONG", 108000.0, 110000.0)
    assert btc["entry_time"] == dt.datetime(2025, 10, 23, 9, 0, 0, 1, tzinfo=UTC)
    assert btc["exit_time"] == dt.datetime(2025, 10, 23, 12, 0, 0, 500000, tzinfo=UTC)
    assert (btc["pnl"], btc["exit_reason"], btc["origin"]["position"]) == (4.0, "TAKE_PROFIT", "item 0+2")
    assert [part["item"] for part in btc["origin"]["parts"]] == [0, 2]
    assert record_of(tmp_path, "trades.json", btc["origin"]) == json.dumps(entry).encode() + b"\n" + json.dumps(exit_).encode()
    assert rows["ETHUSDT"]["status"] == "OPEN"  # an exit of another symbol closes nothing else


def test_positions_csv_pairs_only_when_position_id_and_symbol_agree(tmp_path):
    found = outcomes(mismatched_positions_csv(tmp_path), "positions.csv")
    (rejected,) = [o for o in found if isinstance(o, Rejected)]
    assert rejected.position == "line 3" and rejected.variant == "positions-close"
    assert rejected.reason.startswith("CLOSE of POS_0009 is BTCUSDT but the open POS_0009 (line 2) is SOLUSDT")
    assert json.loads(rejected.raw_text)["symbol"] == "BTCUSDT"
    rows = {trade(o)["origin"]["position"]: trade(o) for o in found if isinstance(o, Row)}
    assert set(rows) == {"line 2", "line 4+5"}  # no BTCUSDT trade made of a SOLUSDT entry
    assert (rows["line 2"]["symbol"], rows["line 2"]["status"]) == ("SOLUSDT", "OPEN")
    assert (rows["line 4+5"]["symbol"], rows["line 4+5"]["status"]) == ("ETHUSDT", "CLOSED")  # ETH/USDT = ETHUSDT
