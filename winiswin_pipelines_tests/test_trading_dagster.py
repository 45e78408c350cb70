"""The trading session job and its supervisor sensor, and the backtest asset, in Dagster."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from sqlalchemy import func, select

from winiswin_pipelines.archive import archive_old_data
from winiswin_pipelines.db.bulk import copy_upsert, dataframe_rows
from winiswin_pipelines.db.models import Trade, TradeStatus, TradingDecision, TradingSession
from winiswin_pipelines.defs.trading import (
    TradingSessionConfig,
    backtest,
    backtest_trades_closed_in_their_day,
    trading_session_job,
    trading_session_supervisor,
)
from winiswin_pipelines.marketdata.klines import KLINE_COLUMNS, read_kline_csv
from winiswin_pipelines.marketdata.samples import BTCUSDT_5M_2023_04_CSV
from winiswin_pipelines.resources import ColdStorageResource, ModelRegistryResource, PostgresResource
from winiswin_pipelines.supervision import IN_FLIGHT, LANE_TAG


def _tick(instance: dg.DagsterInstance, cursor: str | None):
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return trading_session_supervisor(context)


def _launch(instance: dg.DagsterInstance, request: dg.RunRequest, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    """What the daemon does with a run request: a run of the job, with the request's key and tags."""
    tags = {**request.tags, "dagster/run_key": request.run_key}
    return instance.create_run_for_job(trading_session_job, run_config=request.run_config, tags=tags, status=status)


def test_job_shape():
    assert trading_session_job.tags[LANE_TAG] == "live-trading"
    assert int(trading_session_job.tags["dagster/max_runtime"]) == 6 * 3600
    assert trading_session_job.executor_def.name == "in_process"


@pytest.mark.parametrize("in_flight_status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED])
def test_supervisor_keeps_one_session_and_restarts_a_crashed_one(dagster_instance, monkeypatch, in_flight_status):
    monkeypatch.delenv("WINISWIN_LIVE_TRADING", raising=False)
    session = f"paper-{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    first = _tick(dagster_instance, None)
    assert [r.run_key for r in first.run_requests] == [f"{session}-a1"]
    assert json.loads(first.cursor) == {"session": session, "attempt": 1}
    request = first.run_requests[0]
    assert request.run_config["ops"]["trading_session"]["config"]["session_id"] == f"{session}-a1"
    assert request.run_config["ops"]["trading_session"]["config"]["mode"] == "paper"
    run = _launch(dagster_instance, request, in_flight_status)

    # While that run is starting or running, every tick skips: never a second session.
    for _ in range(3):
        skipped = _tick(dagster_instance, first.cursor)
        assert isinstance(skipped, dg.SkipReason) and run.run_id in skipped.skip_message

    # The run crashes: the next tick starts attempt 2 under a new run key (keys are never reused).
    dagster_instance.report_run_failed(run)
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    restarted = _tick(dagster_instance, first.cursor)
    assert [r.run_key for r in restarted.run_requests] == [f"{session}-a2"]
    assert restarted.run_requests[0].tags["winiswin/attempt"] == "2"
    assert json.loads(restarted.cursor) == {"session": session, "attempt": 2}
    _launch(dagster_instance, restarted.run_requests[0], dg.DagsterRunStatus.STARTED)
    assert isinstance(_tick(dagster_instance, restarted.cursor), dg.SkipReason)


def test_supervisor_replays_a_finished_replay_session_only_once(dagster_instance, monkeypatch):
    monkeypatch.delenv("WINISWIN_LIVE_TRADING", raising=False)
    monkeypatch.delenv("WINISWIN_TRADING_FEED", raising=False)  # the default: the bundled replay
    first = _tick(dagster_instance, None)
    _launch(dagster_instance, first.run_requests[0], dg.DagsterRunStatus.SUCCESS)  # the replay ran to its end
    skipped = _tick(dagster_instance, first.cursor)
    assert isinstance(skipped, dg.SkipReason) and "completed" in skipped.skip_message

    # The same finished session on the live exchange feed is started again: it must stay alive.
    monkeypatch.setenv("WINISWIN_TRADING_FEED", "binance")
    again = _tick(dagster_instance, first.cursor)
    assert [r.run_key for r in again.run_requests] == [f"{first.run_requests[0].tags['winiswin/session']}-a2"]


def test_supervisor_does_not_launch_live_sessions_that_would_be_refused(dagster_instance, monkeypatch):
    monkeypatch.setenv("WINISWIN_LIVE_TRADING", "1")
    monkeypatch.delenv("BINANCE_API_KEY", raising=False)
    monkeypatch.setenv("BINANCE_API_SECRET", "secret-that-must-not-leak")
    skipped = _tick(dagster_instance, None)
    assert isinstance(skipped, dg.SkipReason) and "missing: BINANCE_API_KEY." in skipped.skip_message
    assert "secret-that-must-not-leak" not in skipped.skip_message
    monkeypatch.setenv("BINANCE_API_KEY", "key")
    live = _tick(dagster_instance, None).run_requests[0]
    assert live.run_key == f"live-{dt.datetime.now(dt.UTC):%Y-%m-%d}-a1"
    assert live.run_config["ops"]["trading_session"]["config"]["feed"] == "binance"


def test_supervisor_starts_a_new_session_each_day(dagster_instance, monkeypatch):
    monkeypatch.delenv("WINISWIN_LIVE_TRADING", raising=False)
    result = _tick(dagster_instance, json.dumps({"session": "paper-2020-01-01", "attempt": 7}))
    assert [r.run_key for r in result.run_requests] == [f"paper-{dt.datetime.now(dt.UTC):%Y-%m-%d}-a1"]
    assert set(IN_FLIGHT) >= {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED}


def _run_job(dagster_instance, database_url: str, **config) -> dg.ExecuteInProcessResult:
    return trading_session_job.execute_in_process(
        run_config=dg.RunConfig(ops={"trading_session": TradingSessionConfig(**config)}),
        resources={"postgres": PostgresResource(database_url=database_url),
                   "model_registry": ModelRegistryResource(postgres=PostgresResource(database_url=database_url),
                                                           cold_storage=ColdStorageResource())},
        instance=dagster_instance, raise_on_error=False,
    )


def test_job_trades_live_only_on_exchange_prices(database_url, dagster_instance, monkeypatch):
    for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET"):
        monkeypatch.setenv(name, "set")
    monkeypatch.setenv("WINISWIN_LIVE_TRADING", "1")
    result = _run_job(dagster_instance, database_url, session_id="live-replay", mode="live", feed="replay")
    assert not result.success
    assert "not 'replay'" in result.get_step_failure_events()[0].step_failure_data.error.to_string()


def test_job_refuses_live_without_keys_and_opt_in(db, database_url, dagster_instance, monkeypatch):
    monkeypatch.setenv("BINANCE_API_KEY", "key-that-must-not-leak")
    monkeypatch.delenv("BINANCE_API_SECRET", raising=False)
    monkeypatch.delenv("WINISWIN_LIVE_TRADING", raising=False)
    result = _run_job(dagster_instance, database_url, session_id="live-no", mode="live")
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "missing: BINANCE_API_SECRET, WINISWIN_LIVE_TRADING=1" in error.to_string()
    assert "key-that-must-not-leak" not in error.to_string()
    with db.session() as session:
        assert session.get(TradingSession, "live-no") is None


def test_job_runs_a_bounded_paper_session(db, database_url, dagster_instance):
    result = _run_job(dagster_instance, database_url, session_id="job-paper", max_events=300)
    assert result.success
    with db.session() as session:
        heartbeat = session.get(TradingSession, "job-paper")
    assert (heartbeat.status, heartbeat.ticks, heartbeat.run_id) == ("max_events", 300, result.run_id)
    # A session logs a handful of lines, not one per event.
    logs = [e for e in dagster_instance.all_logs(result.run_id)
            if e.user_message and "session job-paper" in e.user_message]
    assert len(logs) == 2


@pytest.fixture
def april_klines(db):
    frame = read_kline_csv(BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    frame = frame[(frame["open_time"] >= "2023-04-03") & (frame["open_time"] < "2023-04-06")]
    with db.engine.begin() as conn:
        copy_upsert(conn, "klines", KLINE_COLUMNS, dataframe_rows(frame, KLINE_COLUMNS),
                    conflict_columns=("symbol", "interval", "open_time"))
    return frame


def test_backtest_asset_materialises_with_metadata(db, database_url, dagster_instance, april_klines, tmp_path):
    postgres, cold_storage = PostgresResource(database_url=database_url), ColdStorageResource(local_dir=str(tmp_path / "cold"))
    resources = {"postgres": postgres, "cold_storage": cold_storage,
                 "model_registry": ModelRegistryResource(postgres=postgres, cold_storage=cold_storage)}
    metadata = []
    for _ in range(2):  # re-materialising the day gives the same rows, not more
        result = dg.materialize([backtest, backtest_trades_closed_in_their_day], partition_key="2023-04-05",
                                resources=resources, instance=dagster_instance)
        assert result.success
        [check] = result.get_asset_check_evaluations()
        assert check.passed and check.metadata["open_or_inconsistent"].value == 0
        metadata.append({k: v.value for k, v in result.asset_materializations_for_node("backtest")[0].metadata.items()})
    assert metadata[0] == metadata[1]
    figures = metadata[0]
    with db.session() as session:
        trades = session.scalars(select(Trade).where(Trade.source == "backtest")).all()
        decisions = session.scalar(select(func.count()).select_from(TradingDecision)
                                   .where(TradingDecision.session_id == "backtest-2023-04-05-5m"))
    assert figures["trades"] == len(trades) == check.metadata["trades"].value > 0
    assert {t.status for t in trades} == {TradeStatus.CLOSED}
    assert all(t.trade_uid.startswith("backtest-2023-04-05-5m-") for t in trades)
    assert all(dt.date(2023, 4, 5) <= t.entry_time.date() and t.exit_time.date() <= dt.date(2023, 4, 6) for t in trades)
    assert figures["pnl"] == pytest.approx(sum(t.pnl for t in trades), abs=0.01)
    assert figures["win_rate"] == pytest.approx(sum(t.pnl > 0 for t in trades) / len(trades), abs=1e-4)
    assert figures["max_drawdown"] >= 0 and figures["intervals"] == "5m" and figures["symbols"] == "BTCUSDT"
    assert decisions >= 2 * len(trades)
    # Costs apart: fees at Binance's regular taker tier, funding, slippage, and the model that made them.
    assert figures["fees"] > 0 and figures["slippage"] >= 0 and "funding" in figures
    assert "taker fee 0.050%" in figures["cost_model"]
    # The klines it replays archived: the same day backtests to the same figures from cold storage.
    archive_old_data(30, manager=db, store=resources["cold_storage"].store(), tables=["klines", "book_snapshots"],
                     as_of=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    replayed = dg.materialize([backtest], partition_key="2023-04-05", resources=resources, instance=dagster_instance)
    assert {k: v.value for k, v in replayed.asset_materializations_for_node("backtest")[0].metadata.items()} == figures
