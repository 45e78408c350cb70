"""Account safety against the local Binance server: hedge-mode and multi-assets accounts refused,
margin type and leverage set before the first entry, sizing from the real wallet, notional caps and
the daily loss limit (counted from PostgreSQL, so it survives restarts)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from winiswin_pipelines.trading.execution import AccountRefused
from winiswin_pipelines.trading.risk import RiskConfig
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines_tests.trading_helpers import REPLAY, SYMBOLS, MarkFeed, live_env, lost_today


@pytest.mark.parametrize(("setting", "named"), [({"hedge_mode": True}, "hedge mode"),
                                                ({"multi_assets": True}, "multi-assets mode")])
def test_a_hedge_mode_or_multi_assets_account_is_refused_before_any_order(db, server, capture_events, monkeypatch,
                                                                         setting, named):
    live_env(monkeypatch, server)
    server.set_account(**setting)
    with pytest.raises(AccountRefused, match=named) as refused:
        run_session(db, session_id="refused-account", mode="live", feed=MarkFeed(capture_events, server),
                    config=REPLAY, symbols=SYMBOLS, rest_url=server.rest_url)
    assert "No order was sent" in str(refused.value) and server.api_secret not in str(refused.value)
    assert server.orders == [] and server.algo_requests == []


def test_margin_type_and_leverage_are_set_before_the_first_entry_and_size_comes_from_the_wallet(
        db, server, capture_events, monkeypatch):
    live_env(monkeypatch, server)
    server.set_account(wallet=2_000.0)
    config = replace(REPLAY, risk=replace(REPLAY.risk, max_leverage=3.0))
    result = run_session(db, session_id="wallet", mode="live", feed=MarkFeed(capture_events, server), config=config,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    assert server.account.margin_type == {"BTCUSDT": "ISOLATED", "ETHUSDT": "ISOLATED"}
    assert server.account.leverage == {"BTCUSDT": 3, "ETHUSDT": 3}
    requests = [path for _, path in server.requests]
    assert requests.index("/fapi/v1/marginType") < requests.index("/fapi/v1/leverage") < requests.index(
        "/fapi/v1/order")
    # Sized from the 2,000 USDT wallet: 1% risk at the stop, capped at 3x leverage.
    for decision in (d for d in result.decisions if d.action == "enter"):
        stop_distance = abs(decision.price - decision.details["stop_loss"])
        expected = min(2_000 * 0.01 / stop_distance, 2_000 * 3.0 / decision.price)
        assert decision.details["quantity"] == pytest.approx(expected, abs=0.001)


def test_notional_caps_limit_each_entry(db, server, capture_events, monkeypatch):
    live_env(monkeypatch, server)
    config = replace(REPLAY, risk=replace(REPLAY.risk, max_symbol_notional=300.0, max_total_notional=450.0))
    result = run_session(db, session_id="capped", mode="live", feed=MarkFeed(capture_events, server), config=config,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    entries = [d for d in result.decisions if d.action == "enter"]
    notionals = [d.price * d.details["quantity"] for d in entries]
    assert notionals[0] == pytest.approx(300.0, abs=100.0) and notionals[0] <= 300.0
    assert sum(notionals) <= 450.0 + 1e-6


def test_the_daily_loss_limit_counts_the_trades_closed_today_and_stops_entries(db, server, capture_events,
                                                                              monkeypatch):
    lost_today(db)  # an earlier session of the day lost 600 USDT
    live_env(monkeypatch, server)
    config = replace(REPLAY, risk=RiskConfig(daily_loss_limit=500.0))
    result = run_session(db, session_id="limited", mode="live", feed=MarkFeed(capture_events, server),
                         config=config, symbols=SYMBOLS, rest_url=server.rest_url)
    assert [d for d in result.decisions if d.action == "enter"] == []
    assert any("daily loss limit reached: 600.00 USDT lost today" in d.reason for d in result.decisions)
    assert server.orders == []
