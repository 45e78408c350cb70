"""The strategy with the signal model: the gate's features from the session's books, a model-gated
replay on real PostgreSQL with a real MLflow registry, the refusal of a model trained on the replayed
days, and the default profile's stops against the cost of a round trip."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from winiswin_pipelines.db.models import Trade
from winiswin_pipelines.defs.trading import BacktestConfig, TradingSessionConfig, gating_model, trading_session_job
from winiswin_pipelines.features.microstructure import book_arrays_from_frame, compute_features
from winiswin_pipelines.marketdata.feed import BookEvent, ReplayFeed
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines.trading.comparison import comparison_table, daily_sharpe, variant
from winiswin_pipelines.trading.execution import TAKER_FEE_RATE
from winiswin_pipelines.trading.model_gate import BookWindow
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines.trading.session import ClosedTrade, SessionConfig
from winiswin_pipelines.trading.strategy import PROFILES, StrategyConfig, coarse_bars
from winiswin_pipelines_tests.test_ml_model import DAYS, registry_resource, trained  # noqa: F401 (fixtures)

REPLAY = SessionConfig(strategy=StrategyConfig.short_horizon(), interval="1m", flatten_on_end=True)
MODEL_FEATURES = ("obi", "obi_depth", "spread_pct", "hour_sin", "hour_cos", "dow_sin", "dow_cos", "ofi", "ret_short",
                  "realized_vol")


def book_events(seconds: int = 90, every_ms: int = 250, seed: int = 3) -> list[BookEvent]:
    rng = np.random.default_rng(seed)
    start = dt.datetime(2024, 7, 18, 23, 59, tzinfo=dt.UTC)
    mid, events = 60_000.0, []
    for step in range(seconds * 1000 // every_ms):
        mid += rng.normal(scale=2.0)
        bids = [mid - 0.05 - level * 0.1 for level in range(10)]
        asks = [mid + 0.05 + level * 0.1 for level in range(10)]
        bid_sizes, ask_sizes = rng.uniform(0.1, 5, 10).tolist(), rng.uniform(0.1, 5, 10).tolist()
        events.append(BookEvent("BTCUSDT", start + dt.timedelta(milliseconds=step * every_ms), None, step, bids[0],
                                bid_sizes[0], asks[0], ask_sizes[0], bids, bid_sizes, asks, ask_sizes))
    return events


def test_gate_features_are_the_stored_snapshots_features():
    """The session's books, thinned to the first of each second, give the features the training rows
    were made of (the stored snapshots follow the same rule); later books never change an earlier row."""
    events = book_events()
    window = BookWindow()
    for event in events:
        window.add(event)
    kept, slot = [], None
    for event in events:
        if (second := int(event.exchange_time.timestamp())) != slot:
            kept.append(event)
            slot = second
    frame = pd.DataFrame({"exchange_time": [e.exchange_time for e in kept],
                          "best_bid": [e.best_bid for e in kept], "best_bid_qty": [e.best_bid_qty for e in kept],
                          "best_ask": [e.best_ask for e in kept], "best_ask_qty": [e.best_ask_qty for e in kept],
                          "bid_prices": [e.bid_prices for e in kept], "bid_sizes": [e.bid_sizes for e in kept],
                          "ask_prices": [e.ask_prices for e in kept], "ask_sizes": [e.ask_sizes for e in kept]})
    stored = compute_features(book_arrays_from_frame(frame)).iloc[-1]
    latest = window.latest_features()
    assert window.last_time() == stored["ts"] == pd.Timestamp(kept[-1].exchange_time)
    for name in MODEL_FEATURES:
        assert latest[name] == pytest.approx(stored[name], rel=1e-9, abs=1e-12), name
    assert all(np.isfinite(latest[name]) for name in MODEL_FEATURES)  # 90 s of books: every window observed
    # A book missing for more than the tolerance: the windows reaching over the hole are not observed.
    holed = BookWindow()
    for event in events[:200] + events[208:]:
        holed.add(event)
    assert np.isnan(holed.latest_features()["realized_vol"]) and np.isfinite(holed.latest_features()["ofi"])


def _registered(registry_resource, trained):  # noqa: F811
    data, result = trained
    tags = {"training_start": data.t1.index.min().isoformat(), "training_end": data.t1.max().isoformat()}
    version = registry_resource.register("signal_model", result.model, tags=tags)
    registry_resource.set_alias("signal_model", "champion", version.version)
    return version


def _trades(db, session_id: str) -> list[Trade]:
    with db.session() as session:
        return session.scalars(select(Trade).where(Trade.trade_uid.startswith(session_id))).all()


def test_model_gated_replay_records_the_model_probability(db, registry_resource, trained):  # noqa: F811
    _registered(registry_resource, trained)
    rules = run_session(db, session_id="rules", mode="paper", feed=ReplayFeed(), config=REPLAY,
                        symbols=["BTCUSDT", "ETHUSDT"])
    assert rules.closed, "the replay should trade on rules alone"

    everything = gating_model(registry_resource, BacktestConfig(model="champion", min_win_probability=0.0))
    assert everything.version == 1 and everything.model.features == MODEL_FEATURES
    gated = run_session(db, session_id="gated", mode="paper", feed=ReplayFeed(),
                        config=SessionConfig(**{**REPLAY.__dict__, "model": everything}), symbols=["BTCUSDT", "ETHUSDT"])
    trades = _trades(db, "gated")
    # Every signal had a fresh book: the same entries, each with the model's probability of its side.
    assert len(trades) == len(rules.closed) > 0
    for trade in trades:
        assert 0 < trade.win_probability < 1 and trade.confidence == trade.win_probability
        assert trade.features["win_probability"] == trade.win_probability and "confidence" in trade.features
    entries = [d for d in gated.decisions if d.action == "enter"]
    assert all("model v1: P(" in d.reason for d in entries)

    strict = gating_model(registry_resource, BacktestConfig(model="1", min_win_probability=1.0))
    refused = run_session(db, session_id="strict", mode="paper", feed=ReplayFeed(),
                          config=SessionConfig(**{**REPLAY.__dict__, "model": strict}), symbols=["BTCUSDT", "ETHUSDT"])
    assert not refused.closed and not _trades(db, "strict")
    assert any(d.action == "skip" and "< 1" in d.reason and "model v1" in d.reason for d in refused.decisions)


def test_a_model_trained_on_the_replayed_days_is_refused(registry_resource, trained):  # noqa: F811
    _registered(registry_resource, trained)
    parameters = BacktestConfig(model="champion")
    with pytest.raises(dg.Failure, match=r"overlaps the replayed days 2024-03-02\.\.2024-03-02"):
        gating_model(registry_resource, parameters, [dt.date(2024, 2, 20), DAYS[1]])
    later = [DAYS[-1] + dt.timedelta(days=2), DAYS[-1] + dt.timedelta(days=3)]
    assert gating_model(registry_resource, parameters, later).version == 1
    assert gating_model(registry_resource, BacktestConfig(model="")) is None  # rules only


def test_the_trading_session_op_gates_its_entries_with_the_model_its_config_names(
        db, database_url, dagster_instance, registry_resource, trained):  # noqa: F811
    _registered(registry_resource, trained)
    config = TradingSessionConfig(session_id="op-gated", strategy_profile="short_horizon", model="champion",
                                  min_win_probability=0.0, symbols=["BTCUSDT", "ETHUSDT"])
    result = trading_session_job.execute_in_process(
        run_config=dg.RunConfig(ops={"trading_session": config}), instance=dagster_instance,
        resources={"postgres": PostgresResource(database_url=database_url), "model_registry": registry_resource})
    assert result.success
    trades = _trades(db, "op-gated")
    assert trades and all(0 < t.win_probability < 1 and t.confidence == t.win_probability for t in trades)
    logs = [e.user_message for e in dagster_instance.all_logs(result.run_id) if e.user_message]
    assert any("gated by signal_model version 1 ('champion')" in line for line in logs)


def test_default_profile_keeps_its_stops_several_round_trips_away():
    round_trip = 2 * TAKER_FEE_RATE
    assert PROFILES["default"].min_stop_pct >= 5 * round_trip
    assert PROFILES["scalping"].min_stop_pct < 5 * round_trip  # the former default, kept to compare
    assert PROFILES["default"].strategy.bar_interval == "1h"
    assert PROFILES["default"].strategy.history_bars("5m") == 12 * PROFILES["default"].strategy.indicators.history_bars


def test_longer_bars_are_made_of_complete_buckets_and_decided_when_they_close():
    times = pd.date_range("2023-04-01", periods=36, freq="5min", tz="UTC")
    bars = pd.DataFrame({"open_time": times, "open": np.arange(36.0), "high": np.arange(36.0) + 1,
                         "low": np.arange(36.0) - 1, "close": np.arange(36.0) + 0.5, "volume": 1.0})
    hourly = coarse_bars(bars.iloc[:24], "1h")
    assert list(hourly["open"]) == [0, 12] and list(hourly["close"]) == [11.5, 23.5] and list(hourly["volume"]) == [12, 12]
    assert list(hourly["high"]) == [12, 24] and list(hourly["low"]) == [-1, 11]
    assert coarse_bars(bars.iloc[:23], "1h") is None  # inside the second hour: no decision
    assert coarse_bars(bars.drop(index=30).iloc[:35], "1h") is None  # the hour closing now lacks a bar


def _closed(day: int, pnl: float) -> ClosedTrade:
    time = dt.datetime(2023, 4, day, 12, tzinfo=dt.UTC)
    return ClosedTrade("t", "BTCUSDT", "LONG", time, time, 1.0, 1.0, 1.0, pnl, 0.0, 0.1, "take_profit")


def test_comparison_reports_sharpe_of_daily_returns_side_by_side():
    days = [dt.date(2023, 4, day) for day in (1, 2, 3)]
    trades = [_closed(1, 100.0), _closed(3, -50.0)]
    returns = np.array([100 / 10_000, 0.0, -50 / 10_100])
    assert daily_sharpe(trades, 10_000.0, days) == pytest.approx(returns.mean() / returns.std(ddof=1) * np.sqrt(365))
    assert daily_sharpe([], 10_000.0, days) is None
    table = comparison_table([variant("rules only", trades, 10_000.0, days), variant("model", [], 10_000.0, days)])
    assert table.splitlines()[0] == "| | rules only | model |"
    assert "| trades | 2 | 0 |" in table and "| win rate | 50.0% | n/a |" in table
