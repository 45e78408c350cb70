"""Live trading as Dagster shows it: the live_positions observation every minute (positions, their
protection on the exchange, unrealised PnL, the heartbeat), the heartbeat freshness check, the trading
job's priority and the run-failure alert; against the local Binance server and a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import dagster as dg
from sqlalchemy import update

from winiswin_pipelines.db.models import TradingSession
from winiswin_pipelines.defs.trading import (
    failure_text,
    flatten_and_halt_job,
    live_positions_observer,
    run_failure_alert,
    trading_heartbeat_fresh,
    trading_session_job,
)
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines_tests.trading_helpers import KEEP_OPEN, SYMBOLS, MarkFeed, by_hand, live_env, quiet


def observe(instance: dg.DagsterInstance, database_url: str) -> tuple[dict, dg.AssetCheckEvaluation]:
    with dg.build_sensor_context(instance=instance,
                                 resources={"postgres": PostgresResource(database_url=database_url)}) as context:
        result = live_positions_observer(context)
    observations = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
    [check] = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert check.check_name == trading_heartbeat_fresh.check_key.name
    return ({k: v.value for k, v in observations[0].metadata.items()} if observations else {}), check


def test_live_positions_are_observed_with_their_protection_pnl_and_heartbeat(db, database_url, server,
                                                                           dagster_instance, monkeypatch):
    metadata, check = observe(dagster_instance, database_url)
    assert metadata == {} and check.passed  # no live trading yet: nothing to observe, nothing to worry about
    live_env(monkeypatch, server)
    by_hand(server, "ETHUSDT", "BUY", "0.500")
    run_session(db, session_id="watched", mode="live", feed=MarkFeed(quiet(), server),
                config=replace(KEEP_OPEN, reconcile_seconds=0.0), symbols=SYMBOLS, rest_url=server.rest_url)
    metadata, check = observe(dagster_instance, database_url)
    assert "| ETHUSDT | 0.5 | 3000 | 3000 | +0.00 | STOP_MARKET @ 2991, TAKE_PROFIT_MARKET @ 3013.5 |" in metadata[
        "positions"]
    assert (metadata["unprotected"], metadata["open_live_trades"], metadata["session_id"]) == ("none", "ETHUSDT",
                                                                                             "watched")
    assert metadata["heartbeat_age_seconds"] < 60 and metadata["wallet_balance"] > 0 and check.passed
    # Three minutes of silence with a position open: the check fails and says why.
    with db.engine.begin() as conn:
        conn.execute(update(TradingSession).values(last_heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=4)))
    metadata, check = observe(dagster_instance, database_url)
    assert not check.passed
    assert "the last heartbeat (watched) is 240 s old, more than 180 s, with live positions open (ETHUSDT)" in \
        check.metadata["problem"].value


def test_the_trading_job_goes_before_batch_work():
    assert trading_session_job.tags["dagster/priority"] == "10"
    assert flatten_and_halt_job.tags["dagster/priority"] == "20"


def test_a_failed_run_is_alerted_in_the_log_without_slack(database_url, dagster_instance, monkeypatch, capfd):
    for name in ("SLACK_TOKEN", "BINANCE_API_KEY", "BINANCE_API_SECRET", "WINISWIN_LIVE_TRADING"):
        monkeypatch.delenv(name, raising=False)
    failed = flatten_and_halt_job.execute_in_process(
        resources={"postgres": PostgresResource(database_url=database_url)}, instance=dagster_instance,
        raise_on_error=False)
    assert not failed.success
    context = dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert.name, dagster_event=failed.get_run_failure_event(),
        dagster_instance=dagster_instance, dagster_run=failed.dagster_run).for_run_failure()
    capfd.readouterr()
    run_failure_alert(context)
    text = failure_text(failed.dagster_run, failed.get_run_failure_event().message)
    assert text.startswith(f"winiswin: run {failed.run_id[:8]} of flatten_and_halt_job failed:")
    assert text in capfd.readouterr().err
