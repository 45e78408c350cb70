"""The live market-data capture against the local Binance server on loopback (real websockets, real
HTTP, real PostgreSQL): the job's rows equal the file import's, gaps, heartbeats, the supervisor."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from sqlalchemy import text

from winiswin_pipelines.coldstore import LocalColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import MarketDataCapture
from winiswin_pipelines.defs.capture import (
    LANE,
    MarketDataCaptureConfig,
    capture_heartbeat_fresh,
    market_data_capture_job,
    market_data_capture_supervisor,
)
from winiswin_pipelines.defs.marketdata import book_snapshots
from winiswin_pipelines.defs.partitions import range_tags
from winiswin_pipelines.features.training import write_day_features
from winiswin_pipelines.marketdata import samples
from winiswin_pipelines.marketdata.capture import read_capture
from winiswin_pipelines.marketdata.klines import complete_klines_from_trades, trades_from_capture
from winiswin_pipelines.marketdata.live_capture import CaptureConfig, run_capture, run_capture_in_thread
from winiswin_pipelines.marketdata.live_capture import MarketDataCapture as Capture
from winiswin_pipelines.marketdata.orderbook import rebuild_book_snapshots
from winiswin_pipelines.marketdata.repository import read_capture_row, read_gaps, start_capture
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource
from winiswin_pipelines.settings import PROJECT_DIR
from winiswin_pipelines.supervision import IN_FLIGHT, LANE_TAG
from winiswin_pipelines_tests.binance_server import LocalBinanceServer

CAPTURES = {
    "BTCUSDT": [samples.CAPTURE_BTCUSDT_20240718, samples.CAPTURE_BTCUSDT_20240719],
    "ETHUSDT": [samples.CAPTURE_ETHUSDT_20240718, samples.CAPTURE_ETHUSDT_20240719],
}
ALL_FILES = [path for files in CAPTURES.values() for path in files]
SECOND = dt.timedelta(seconds=1)
COMPARED = ["symbol", "exchange_time", "last_update_id", "best_bid", "best_bid_qty", "best_ask", "best_ask_qty",
            "bid_prices", "bid_sizes", "ask_prices", "ask_sizes"]


def _table(db: DatabaseManager, sql: str) -> pd.DataFrame:
    with db.engine.connect() as conn:
        return pd.read_sql(text(sql), conn)


def _books(db: DatabaseManager) -> pd.DataFrame:
    return _table(db, "SELECT * FROM book_snapshots ORDER BY symbol, exchange_time")


def _rebuilt(files_by_symbol: dict[str, list[Path]]) -> pd.DataFrame:
    """What the file import's BookSnapshotter makes of the files (1 s grid, 10 levels)."""
    frames = [rebuild_book_snapshots(itertools.chain.from_iterable(read_capture(f, kinds={"depth", "rest_depth"})
                                                                    for f in files), symbol=symbol, cadence=SECOND,
                                     depth=10)
              for symbol, files in sorted(files_by_symbol.items())]
    return pd.concat(frames, ignore_index=True)


def _same(left: pd.DataFrame, right: pd.DataFrame, columns: list[str]) -> None:
    pd.testing.assert_frame_equal(left[columns].reset_index(drop=True), right[columns].reset_index(drop=True),
                                  check_dtype=False)


def _run_job(instance, database_url: str, cold: Path, **config) -> dg.ExecuteInProcessResult:
    return market_data_capture_job.execute_in_process(
        run_config=dg.RunConfig(ops={"market_data_capture": MarketDataCaptureConfig(**config)}),
        resources={"postgres": PostgresResource(database_url=database_url),
                   "cold_storage": ColdStorageResource(local_dir=str(cold))},
        instance=instance, raise_on_error=False,
    )


def _output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [output] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {key: value.value for key, value in output.step_output_data.metadata.items()}


def test_capture_job_writes_the_rows_the_file_import_makes(db, database_url, dagster_instance, tmp_path):
    """The bundled BTCUSDT + ETHUSDT capture replayed by the local server over a real websocket: the
    capture job's book_snapshots are the import's rows, its raw files rebuild them exactly."""
    cold = tmp_path / "cold"
    with LocalBinanceServer(replay=ALL_FILES) as server:
        result = _run_job(dagster_instance, database_url, cold, capture_id="replay-1", ws_url=server.ws_url,
                          rest_url=server.rest_url, stop_after_idle_seconds=2, raw_capture=True,
                          raw_capture_dir=str(tmp_path / "spool"), flush_seconds=0.5)
        assert server.replay_done.is_set()
        depth_requests = server.count_requests("/fapi/v1/depth")
    assert result.success, result.all_events
    metadata = _output_metadata(result)
    live = _books(db)
    expected = _rebuilt(CAPTURES)
    assert len(live) == len(expected) == 960  # 8 minutes at 1 s, two symbols
    assert (metadata["status"], metadata["gaps"], metadata["book_snapshot_rows"]) == ("idle", 0, 960)
    assert metadata["depth_snapshots"] == depth_requests == 2 and metadata["reconnects"] == 0
    depth_messages = sum(1 for f in ALL_FILES for _ in read_capture(f, kinds={"depth"}))
    assert metadata["messages"] == depth_messages + metadata["kline_rows"]
    # 1. Identical to the import's rows, column for column (receive_time is the local clock and
    #    source says where a row came from: those two differ by definition).
    _same(live, expected, COMPARED)
    assert (live["source"] == "binance:live").all() and live["receive_time"].notna().all()

    # 2. The book_snapshots asset over the same days writes no new key, only receive_time and source.
    imported = dg.materialize([book_snapshots], instance=dagster_instance, tags=range_tags("2024-07-18", "2024-07-19"),
                              resources={"postgres": PostgresResource(database_url=database_url)})
    counts = imported.asset_materializations_for_node("book_snapshots")[0].metadata
    assert (counts["inserted"].value, counts["updated"].value) == (0, 960)
    _same(_books(db), live, COMPARED)

    # 3. The raw capture files, stored in cold storage in the import's format, rebuild the live rows
    #    exactly, receive times included (named after the local receive day, one file per symbol).
    stored = sorted((cold / "market_captures").glob("*.gz"))
    today = f"{dt.datetime.now(dt.UTC):%Y%m%d}"
    assert [p.name.rsplit("_", 2)[1:] for p in stored] == [["btcusdt", f"{today}.gz"], ["ethusdt", f"{today}.gz"]]
    assert not list((tmp_path / "spool").iterdir())  # moved to cold storage once verified
    from_files = _rebuilt({"BTCUSDT": [stored[0]], "ETHUSDT": [stored[1]]})
    _same(from_files, live, [*COMPARED, "receive_time"])
    assert sorted(metadata["raw_capture_files"].replace("- ", "").split()) == [f"market_captures/{p.name}"
                                                                                 for p in stored]

    # 4. Closed klines: the server builds them from the capture's trades as Binance does; the capture
    #    stores each once, equal to the import's bars from the same trades.
    klines = _table(db, "SELECT * FROM klines ORDER BY symbol, open_time")
    for symbol, files in CAPTURES.items():
        trades = trades_from_capture(itertools.chain.from_iterable(read_capture(f, kinds={"trade"}) for f in files))
        bars = complete_klines_from_trades(trades, symbol=symbol, interval="1m")
        own = klines[klines["symbol"] == symbol]
        values = ["open_time", "open", "high", "low", "close", "volume", "quote_volume", "trade_count",
                  "taker_buy_base_volume", "taker_buy_quote_volume"]
        _same(own, bars, values)
    assert len(klines) == metadata["kline_rows"] == 14

    # 5. The heartbeat row: final status, counts, and where each symbol's book was last good.
    row = read_capture_row(db, "replay-1")
    assert (row.status, row.messages, row.book_rows, row.gaps, row.symbols) == (
        "idle", metadata["messages"], 960, 0, ["BTCUSDT", "ETHUSDT"])
    assert row.stopped_at >= row.last_heartbeat_at >= row.started_at
    assert set(row.details["last_data"]) == {"BTCUSDT", "ETHUSDT"} and row.details["books_in_sync"] == 2


def test_a_dropped_diff_is_a_sequence_break_gap_and_the_rest_is_still_exact(db, database_url, dagster_instance,
                                                                             tmp_path):
    with LocalBinanceServer(replay=ALL_FILES) as server:
        server.inject_gap("BTCUSDT", after=3000)  # BTCUSDT's 3001st depth diff is applied but never sent
        result = _run_job(dagster_instance, database_url, tmp_path / "cold", capture_id="gap-1",
                          ws_url=server.ws_url, rest_url=server.rest_url, stop_after_idle_seconds=2)
        assert server.dropped_diffs == 1 and server.count_requests("/fapi/v1/depth") == 3
    assert result.success
    [gap] = read_gaps(db)
    assert (gap.symbol, gap.reason, gap.capture_id) == ("BTCUSDT", "sequence_break", "gap-1")
    # It lasts until the book is in sync again: from the snapshot the server took when asked (the full-
    # speed replay runs ahead of the client, so that is some seconds of exchange time later).
    assert dt.timedelta(0) < gap.end_time - gap.start_time < dt.timedelta(minutes=1)
    assert gap.details["expected_pu"] != gap.details["pu"] and gap.details["snapshots"] == 1
    metadata = _output_metadata(result)
    assert metadata["gaps"] == 1 and "sequence_break" in metadata["gap_list"] and "BTCUSDT" in metadata["gap_list"]
    # Outside the gap every row is the import's; inside it no row was written (the book was invalid).
    live, expected = _books(db), _rebuilt(CAPTURES)
    inside = (expected["symbol"] == "BTCUSDT") & (expected["exchange_time"] >= gap.start_time) & (
        expected["exchange_time"] < gap.end_time)
    assert inside.sum() >= 1
    _same(live, expected[~inside], COMPARED)
    assert read_capture_row(db, "gap-1").gaps == 1
    # The features of the first rows after the gap have no window to look back on: NaN, and the gap is reported.
    day = dt.datetime.combine(gap.end_time.date(), dt.time(), dt.UTC)  # a gap belongs to the day it ends
    result = write_day_features(db, day, LocalColdStore(tmp_path / "features-cold"))
    [feature_gap] = [g for g in result.gaps if g.symbol == "BTCUSDT"
                     and g.start < pd.Timestamp(gap.end_time) and g.end > pd.Timestamp(gap.start_time)]
    with db.engine.connect() as conn:
        first_after = conn.execute(text(
            "SELECT ofi, ret_short, realized_vol FROM training_features WHERE symbol = 'BTCUSDT' AND ts = :end"),
            {"end": feature_gap.end.to_pydatetime()}).one()
    assert all(value is None or value != value for value in first_after)  # NULL (NaN is stored as NULL)


def _wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_reconnect_gap_kline_backfill_and_restart_gap(db):
    """A simulated exchange drops the connection: each book's reconnect gap is stored, the klines
    missed meanwhile come over REST; a second capture records a restart gap from where the first stopped."""
    with LocalBinanceServer(("BTCUSDT", "ETHUSDT")) as server:
        config = CaptureConfig(("BTCUSDT", "ETHUSDT"), ws_url=server.ws_url, rest_url=server.rest_url,
                               flush_seconds=0.2, max_duration=dt.timedelta(seconds=30))
        capture, results, worker = _start(db, config, "reconnect-1")
        _wait_for(lambda: capture.stream is not None and all(b.is_synced for b in capture.stream.books.values())
                  and capture.kline_rows >= 4)
        assert server.drop_connections(refuse_for=0.6) == 1  # one connection carries both symbols
        _wait_for(lambda: capture.stream.stats.reconnects == 1)
        time.sleep(1.0)
        capture.stop.set()
        worker.join(30)
        [first] = results
        again, results, worker = _start(db, config, "reconnect-2")
        _wait_for(lambda: again.stream is not None and all(b.is_synced for b in again.stream.books.values()))
        time.sleep(0.5)
        again.stop.set()
        worker.join(30)
        [second] = results
        bars = {s: server.closed_bars(s, "1m") for s in ("BTCUSDT", "ETHUSDT")}
    assert first.status == "stopped" and first.reconnects == 1 and first.connections == 2
    gaps = read_gaps(db)
    reconnects = [g for g in gaps if g.reason == "reconnect"]
    assert sorted(g.symbol for g in reconnects) == ["BTCUSDT", "ETHUSDT"]
    for gap in reconnects:  # 0.6 s of refused connections: about 2 minutes of the fast exchange clock
        assert gap.capture_id == "reconnect-1" and dt.timedelta(seconds=30) < gap.end_time - gap.start_time
    # The klines around the outage: every closed bar once, equal to the exchange's, none missing.
    stored = _table(db, "SELECT symbol, open_time, close, trade_count FROM klines ORDER BY symbol, open_time")
    for symbol, rows in bars.items():
        own = stored[stored["symbol"] == symbol]
        opens = [int(t.timestamp() * 1000) for t in own["open_time"]]
        assert opens == sorted(set(opens)) and all(b - a == 60_000 for a, b in itertools.pairwise(opens))
        by_open = {row[0]: row for row in rows}
        assert all(float(by_open[o][4]) == c and by_open[o][8] == n
                   for o, c, n in zip(opens, own["close"], own["trade_count"], strict=True))
    assert server.count_requests("/fapi/v1/klines") >= 2  # the backfill after the reconnect
    # The second capture starts where the first stopped: one restart gap per symbol.
    restarts = [g for g in gaps if g.reason == "restart"]
    assert sorted(g.symbol for g in restarts) == ["BTCUSDT", "ETHUSDT"]
    assert all(g.capture_id == "reconnect-2" and g.end_time > g.start_time for g in restarts)
    with db.session() as session:
        last = {c.capture_id: c for c in session.query(MarketDataCapture).all()}
    assert last["reconnect-1"].status == "stopped" and second.status == "stopped"
    assert {g.start_time for g in restarts} == {dt.datetime.fromisoformat(t)
                                               for t in last["reconnect-1"].details["last_data"].values()}


def _start(db: DatabaseManager, config: CaptureConfig, capture_id: str) -> tuple[Capture, list, threading.Thread]:
    capture, results = Capture(db, config, capture_id=capture_id), []
    worker = threading.Thread(target=lambda: results.append(run_capture_in_thread(capture)))
    worker.start()
    return capture, results, worker


# -- the supervisor and the job's shape -----------------------------------------------------------------

def _tick(instance: dg.DagsterInstance, cursor: str | None):
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return market_data_capture_supervisor(context)


def _launch(instance: dg.DagsterInstance, request: dg.RunRequest, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    tags = {**request.tags, "dagster/run_key": request.run_key}
    return instance.create_run_for_job(market_data_capture_job, run_config=request.run_config, tags=tags,
                                       status=status)


def test_job_shape_lane_and_default_off():
    assert market_data_capture_job.tags[LANE_TAG] == LANE == "market-data-capture"
    assert int(market_data_capture_job.tags["dagster/max_runtime"]) == 24 * 3600
    assert market_data_capture_job.executor_def.name == "in_process"
    assert market_data_capture_supervisor.default_status == dg.DefaultSensorStatus.STOPPED
    limits = yaml.safe_load((PROJECT_DIR / "config" / "dagster.yaml").read_text())["concurrency"]["runs"]
    assert {"key": LANE_TAG, "value": LANE, "limit": 1} in limits["tag_concurrency_limits"]


@pytest.mark.parametrize("in_flight_status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                                              dg.DagsterRunStatus.STARTED])
def test_supervisor_keeps_one_capture_and_restarts_it_under_new_keys(dagster_instance, monkeypatch,
                                                                     in_flight_status):
    monkeypatch.setenv("WINISWIN_CAPTURE_SYMBOLS", "btcusdt, SOLUSDT,btcusdt")
    day = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    first = _tick(dagster_instance, None)
    assert [r.run_key for r in first.run_requests] == [f"capture-{day}-a1"]
    request = first.run_requests[0]
    config = request.run_config["ops"]["market_data_capture"]["config"]
    assert (config["capture_id"], config["symbols"]) == (f"capture-{day}-a1", ["BTCUSDT", "SOLUSDT"])
    run = _launch(dagster_instance, request, in_flight_status)
    for _ in range(3):  # never a second capture while one is queued or running
        skipped = _tick(dagster_instance, first.cursor)
        assert isinstance(skipped, dg.SkipReason) and run.run_id in skipped.skip_message
    dagster_instance.report_run_failed(run)  # it crashes: attempt 2, under a new run key
    restarted = _tick(dagster_instance, first.cursor)
    assert [r.run_key for r in restarted.run_requests] == [f"capture-{day}-a2"]
    assert restarted.run_requests[0].tags["winiswin/attempt"] == "2"
    assert json.loads(restarted.cursor) == {"day": day, "attempt": 2}
    _launch(dagster_instance, restarted.run_requests[0], dg.DagsterRunStatus.SUCCESS)  # it ended (max duration)
    again = _tick(dagster_instance, restarted.cursor)
    assert [r.run_key for r in again.run_requests] == [f"capture-{day}-a3"]  # a capture never stays down
    next_day = _tick(dagster_instance, json.dumps({"day": "2020-01-01", "attempt": 9}))
    assert [r.run_key for r in next_day.run_requests] == [f"capture-{day}-a1"]
    assert set(IN_FLIGHT) >= {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED}


def test_bad_config_fails_the_run_with_a_clear_error(database_url, dagster_instance, tmp_path):
    result = _run_job(dagster_instance, database_url, tmp_path, symbols=["BTCUSDT"], depth_stream="bookTicker")
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "market_data_capture config" in message and "depth_stream" in message


# -- the local server on its own ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_standalone_server_replays_a_capture_for_the_capture_job(db, tmp_path):
    """`python -m winiswin_pipelines_tests.binance_server --port P --replay FILE --speed S` serves the
    live paths offline: the capture against it makes the import's rows."""
    port = _free_port()
    command = [sys.executable, "-m", "winiswin_pipelines_tests.binance_server", "--port", str(port), "--ws-port",
               str(_free_port()), "--speed", "50", "--replay", *map(str, CAPTURES["ETHUSDT"])]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    server = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        banner = server.stdout.readline()
        assert f"REST http://127.0.0.1:{port}" in banner and "replaying" in banner and "50x" in banner, banner
        ws_url = banner.split("websocket ")[1].split()[0]
        config = CaptureConfig(("ETHUSDT",), ws_url=ws_url, rest_url=f"http://127.0.0.1:{port}", flush_seconds=0.5,
                               stop_after_idle=dt.timedelta(seconds=2))
        result = run_capture(db, config, capture_id="standalone")
    finally:
        server.send_signal(2)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert result.status == "idle" and result.gaps == [] and result.book_rows == 480
    _same(_books(db), _rebuilt({"ETHUSDT": CAPTURES["ETHUSDT"]}), COMPARED)


def test_heartbeat_check_fails_when_a_running_capture_stops_writing(db, database_url, dagster_instance):
    resources = {"postgres": PostgresResource(database_url=database_url)}

    def evaluate() -> dg.AssetCheckEvaluation:
        result = dg.materialize([book_snapshots, capture_heartbeat_fresh], resources=resources,
                                instance=dagster_instance, selection=dg.AssetSelection.checks(capture_heartbeat_fresh))
        return result.get_asset_check_evaluations()[0]

    assert evaluate().passed  # no capture running: nothing to be late
    now = dt.datetime.now(dt.UTC)
    start_capture(db, "fresh", run_id=None, symbols=["BTCUSDT"], at=now, details={})
    assert evaluate().passed
    start_capture(db, "stuck", run_id=None, symbols=["ETHUSDT"], at=now - dt.timedelta(minutes=6), details={})
    late = evaluate()
    assert not late.passed and "stuck" in late.metadata["stale_captures"].value
    assert "fresh" not in late.metadata["stale_captures"].value
