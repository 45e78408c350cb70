"""Strategy, risk rules, order filters and performance figures: pure functions, no database."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal

import pandas as pd
import pytest

from winiswin_pipelines.marketdata.klines import read_kline_csv
from winiswin_pipelines.marketdata.samples import BTCUSDT_5M_2023_04_CSV
from winiswin_pipelines.trading.execution import (
    LiveTradingRefused,
    PaperExecutor,
    SymbolFilters,
    check_live_permission,
    symbol_filters,
)
from winiswin_pipelines.trading.performance import summarize
from winiswin_pipelines.trading.risk import (
    Position,
    RiskConfig,
    can_open,
    gross_pnl,
    position_size,
    price_exit,
    stop_levels,
    time_stop_due,
)
from winiswin_pipelines.trading.session import ClosedTrade
from winiswin_pipelines.trading.strategy import WEIGHTS, StrategyConfig, analyse, evaluate

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def april_bars() -> pd.DataFrame:
    frame = read_kline_csv(BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    return frame[["open_time", "open", "high", "low", "close", "volume"]]


def test_strategy_waits_for_warm_up(april_bars):
    config = StrategyConfig()
    verdict = evaluate(april_bars.iloc[: config.min_bars - 1], config)
    assert verdict.signal is None and verdict.reason == f"warming up ({config.min_bars - 1}/{config.min_bars} bars)"
    assert evaluate(april_bars.iloc[: config.min_bars], config).reason != verdict.reason


def test_strategy_signals_follow_the_documented_rules(april_bars):
    """Every verdict over a week of real bars agrees with the rules read off the analysed frame."""
    config = StrategyConfig()
    window = config.indicators.history_bars
    sides = set()
    for end in range(window, window + 600, 5):
        bars = april_bars.iloc[end - window:end].reset_index(drop=True)
        verdict = evaluate(bars, config)
        row = analyse(bars, config).iloc[-1]
        if row.ema_fast > row.ema_slow * (1 + config.trend_band):
            expected_side = "LONG"
        elif row.ema_fast < row.ema_slow * (1 - config.trend_band):
            expected_side = "SHORT"
        else:
            expected_side = None
        assert verdict.side == expected_side
        if verdict.signal is not None:
            signal = verdict.signal
            sides.add(signal.side)
            assert row.adx >= config.adx_min
            assert (row.rsi < config.rsi_overbought) if signal.side == "LONG" else (row.rsi > config.rsi_oversold)
            assert signal.confidence >= config.min_confidence
            assert signal.confidence == pytest.approx(sum(WEIGHTS[k] * v for k, v in signal.scores.items()))
            assert (signal.price, signal.atr) == (row.close, row.atr)
    assert sides == {"LONG", "SHORT"}


def test_strategy_does_not_look_ahead(april_bars):
    """Every column a strategy reads is the same whether or not later bars exist (only the pivot
    flags `swing_high`/`swing_low` are hindsight, and the strategy does not read them)."""
    config = StrategyConfig()
    bars = april_bars.iloc[:400].reset_index(drop=True)
    frame_all = analyse(bars, config)
    frame_cut = analyse(bars.iloc[:350], config)
    pd.testing.assert_frame_equal(frame_all.iloc[:350].drop(columns=["swing_high", "swing_low"]),
                                  frame_cut.drop(columns=["swing_high", "swing_low"]))


def _position(side: str = "LONG") -> Position:
    stop, take = (99.0, 101.5) if side == "LONG" else (101.0, 98.5)
    return Position("uid", "BTCUSDT", side, 2.0, 100.0, T0, stop, take)


def test_stop_levels_and_size():
    config = RiskConfig()
    # 2 x ATR (0.5) = 1.0 is wider than 0.3% of 100: stop 1 away, take profit 1.5 away.
    assert stop_levels("LONG", 100.0, 0.5, config) == (99.0, 101.5)
    assert stop_levels("SHORT", 100.0, 0.5, config) == (101.0, 98.5)
    # A tiny ATR: the 0.3% floor applies.
    assert stop_levels("LONG", 100.0, 0.01, config) == pytest.approx((99.7, 100.45))
    # 1% of 10,000 at a stop 1.0 away: 100 units, but 5x leverage caps the notional at 50,000 -> 500 units.
    assert position_size(10_000, 100.0, 99.0, config) == 100.0
    assert position_size(10_000, 100.0, 99.99, config) == pytest.approx(500.0)
    assert position_size(3.0, 100.0, 99.0, config) == 0.0  # notional 3 USDT < 5 USDT minimum
    with pytest.raises(ValueError, match="side must be one of"):
        stop_levels("BUY", 100.0, 0.5, config)


@pytest.mark.parametrize("side, low, high, open_, expected", [
    ("LONG", 99.5, 100.5, None, None),
    ("LONG", 98.9, 100.5, None, ("stop_loss", 99.0)),
    ("LONG", 99.5, 101.6, None, ("take_profit", 101.5)),
    ("LONG", 98.0, 102.0, None, ("stop_loss", 99.0)),  # both touched: the stop wins
    ("LONG", 97.0, 98.5, 98.0, ("stop_loss", 98.0)),  # gapped through the stop: filled at the open
    ("LONG", 101.8, 102.0, 101.9, ("take_profit", 101.9)),
    ("SHORT", 99.5, 101.2, None, ("stop_loss", 101.0)),
    ("SHORT", 98.4, 100.5, None, ("take_profit", 98.5)),
])
def test_price_exit(side, low, high, open_, expected):
    assert price_exit(_position(side), low, high, open_) == expected


def test_time_stop_and_pnl():
    config = RiskConfig()
    assert not time_stop_due(T0, T0 + dt.timedelta(hours=1, minutes=59, seconds=59), config)
    assert time_stop_due(T0, T0 + dt.timedelta(hours=2), config)
    assert gross_pnl(_position("LONG"), 101.0) == 2.0
    assert gross_pnl(_position("SHORT"), 101.0) == -2.0
    assert gross_pnl(_position("SHORT"), 99.0, quantity=0.5) == 0.5


def test_can_open_limits():
    config = RiskConfig(max_open_positions=2)
    held = {"BTCUSDT": _position()}
    assert can_open("BTCUSDT", held, config) == "already holding LONG BTCUSDT"
    assert can_open("ETHUSDT", held, config) is None
    held["ETHUSDT"] = replace(_position(), symbol="ETHUSDT")
    assert can_open("SOLUSDT", held, config) == "max open positions reached (2)"


async def test_paper_fills_are_deterministic():
    executor = PaperExecutor(fee_rate=0.001, slippage_bps=10)
    buy = await executor.open("BTCUSDT", "LONG", 2.0, 100.0, T0)
    sell = await executor.close(replace(_position(), quantity=2.0), 100.0, T0)
    assert (buy.price, buy.fees) == (pytest.approx(100.1), pytest.approx(0.2002))
    assert (sell.price, sell.quantity, sell.time) == (pytest.approx(99.9), 2.0, T0)
    assert await executor.open("BTCUSDT", "SHORT", 1.0, 100.0, T0) == await executor.open(
        "BTCUSDT", "SHORT", 1.0, 100.0, T0)


EXCHANGE_INFO = {"symbols": [{"symbol": "BTCUSDT", "filters": [
    {"filterType": "PRICE_FILTER", "tickSize": "0.10"},
    {"filterType": "LOT_SIZE", "minQty": "0.001", "stepSize": "0.001"},
    {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "stepSize": "0.001"},
    {"filterType": "MIN_NOTIONAL", "notional": "100"},
]}]}


def test_exchange_filters():
    filters = symbol_filters(EXCHANGE_INFO, "BTCUSDT")
    assert filters == SymbolFilters("BTCUSDT", Decimal("0.001"), Decimal("0.001"), Decimal("100"), Decimal("0.10"))
    assert filters.round_price(60_000.06) == Decimal("60000.1")  # triggers sit on the tick grid
    assert filters.round_quantity(0.52188689) == Decimal("0.521")  # always down: never more than asked
    assert filters.order_problem(Decimal("0.0009"), 60_000) == "BTCUSDT: quantity 0.0009 below the minimum 0.001"
    assert filters.order_problem(Decimal("0.001"), 60_000) == "BTCUSDT: notional 60.00 USDT below the minimum 100"
    assert filters.order_problem(Decimal("0.002"), 60_000) is None
    # Binance exempts reduce-only orders from the minimum notional: a small position can be closed.
    assert filters.order_problem(Decimal("0.001"), 60_000, reduce_only=True) is None
    assert filters.order_problem(Decimal("0.0009"), 60_000, reduce_only=True) is not None
    with pytest.raises(ValueError, match="exchangeInfo has no symbol 'ETHUSDT'"):
        symbol_filters(EXCHANGE_INFO, "ETHUSDT")


@pytest.mark.parametrize("opt_in, key, secret, missing", [
    (False, None, None, "BINANCE_API_KEY, BINANCE_API_SECRET, WINISWIN_LIVE_TRADING=1"),
    (True, "k-123", None, "BINANCE_API_SECRET"),
    (True, None, "s-456", "BINANCE_API_KEY"),
    (False, "k-123", "s-456", "WINISWIN_LIVE_TRADING=1"),
])
def test_live_permission_needs_keys_and_opt_in(opt_in, key, secret, missing):
    with pytest.raises(LiveTradingRefused) as refused:
        check_live_permission(opt_in, key, secret)
    assert str(refused.value).endswith(f"missing: {missing}. Paper trading needs none of them.")
    assert "k-123" not in str(refused.value) and "s-456" not in str(refused.value)
    check_live_permission(True, "k-123", "s-456")


def _closed(pnls: list[float]) -> list[ClosedTrade]:
    return [ClosedTrade(f"t{i}", "BTCUSDT", "LONG", T0, T0 + dt.timedelta(minutes=i + 1), 100.0, 100.0, 1.0, pnl,
                        pnl / 100, 0.1, "take_profit" if pnl > 0 else "stop_loss") for i, pnl in enumerate(pnls)]


def test_performance_figures():
    # Equity 1000 -> 1100 -> 1050 -> 900 -> 1000: the worst fall is 1100 -> 900 (200, 18.18%).
    performance = summarize(list(reversed(_closed([100, -50, -150, 100]))), 1000.0)
    assert (performance.trades, performance.wins, performance.win_rate) == (4, 2, 0.5)
    assert performance.pnl == 0.0 and performance.return_pct == 0.0
    assert performance.max_drawdown == 200.0
    assert performance.max_drawdown_pct == pytest.approx(200 / 1100)
    assert performance.fees == pytest.approx(0.4)
    assert performance.exit_reasons == {"stop_loss": 2, "take_profit": 2}
    empty = summarize([], 1000.0)
    assert (empty.trades, empty.win_rate, empty.max_drawdown) == (0, None, 0.0)


def test_the_performance_of_no_trade_is_zero_in_floats():
    """A replay without trades still reports its figures as numbers of one type (Dagster's float metadata)."""
    from winiswin_pipelines.trading.performance import summarize

    performance = summarize([], 10_000.0)
    assert performance.trades == 0 and performance.win_rate is None
    assert all(isinstance(value, float) and value == 0.0 for value in
               (performance.pnl, performance.fees, performance.funding, performance.slippage, performance.return_pct))
