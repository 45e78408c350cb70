"""The technical engine: indicators against `ta` itself, ICT detectors on hand-worked bars, resampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ta

from winiswin_pipelines.marketdata.capture import read_capture
from winiswin_pipelines.marketdata.klines import aggregate_trades_to_klines, read_kline_csv, trades_from_capture
from winiswin_pipelines.marketdata.samples import (
    BTCUSDT_5M_2023_04_CSV,
    CAPTURE_BTCUSDT_20230404,
    CAPTURE_BTCUSDT_20230405,
)
from winiswin_pipelines.technical import IndicatorConfig, compute_indicators, resample_klines, warmup_bars
from winiswin_pipelines.technical.ict import (
    IctConfig,
    detect_ict,
    fair_value_gaps,
    market_structure,
    order_blocks,
    swing_points,
)


@pytest.fixture(scope="module")
def klines_5m() -> pd.DataFrame:
    return read_kline_csv(BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m").iloc[:600].reset_index(drop=True)


def bars(high, low, *, open_=None, close=None, volume=None) -> pd.DataFrame:
    high, low = np.asarray(high, float), np.asarray(low, float)
    mid = (high + low) / 2
    return pd.DataFrame({
        "open": mid if open_ is None else np.asarray(open_, float), "high": high, "low": low,
        "close": mid if close is None else np.asarray(close, float),
        "volume": np.ones(len(high)) if volume is None else np.asarray(volume, float),
    })


def test_indicators_equal_ta(klines_5m):
    config = IndicatorConfig()
    out = compute_indicators(klines_5m, config)
    close, high, low, volume = klines_5m["close"], klines_5m["high"], klines_5m["low"], klines_5m["volume"]
    macd = ta.trend.MACD(close, 26, 12, 9)
    bands = ta.volatility.BollingerBands(close, 20, 2.0)
    adx = ta.trend.ADXIndicator(high, low, close, 14)
    expected = {
        "ema_fast": ta.trend.EMAIndicator(close, 20).ema_indicator(),
        "ema_slow": ta.trend.EMAIndicator(close, 50).ema_indicator(),
        "ema_trend": ta.trend.EMAIndicator(close, 200).ema_indicator(),
        "rsi": ta.momentum.RSIIndicator(close, 14).rsi(),
        "macd": macd.macd(), "macd_signal": macd.macd_signal(), "macd_hist": macd.macd_diff(),
        "bb_upper": bands.bollinger_hband(), "bb_middle": bands.bollinger_mavg(), "bb_lower": bands.bollinger_lband(),
        "bb_width": (bands.bollinger_hband() - bands.bollinger_lband()) / bands.bollinger_mavg(),
        "atr": ta.volatility.AverageTrueRange(high, low, close, 14).average_true_range(),
        "adx": adx.adx(), "adx_pos": adx.adx_pos(), "adx_neg": adx.adx_neg(),
        "volume_sma_ratio": volume / volume.rolling(20).mean(),
    }
    warmup = warmup_bars(config)
    for name, series in expected.items():
        rows = warmup[name]
        assert out[name].iloc[:rows].isna().all(), name
        assert out[name].iloc[rows:].notna().all(), name
        np.testing.assert_allclose(out[name].iloc[rows:], series.iloc[rows:], rtol=1e-12, err_msg=name)


def test_indicators_refuse_bad_input(klines_5m):
    with pytest.raises(ValueError, match="missing kline columns \\['volume'\\]"):
        compute_indicators(klines_5m.drop(columns="volume"))
    with pytest.raises(ValueError, match="open_time is not in increasing order"):
        compute_indicators(klines_5m.iloc[::-1])


def test_fair_value_gaps_hand_worked():
    # Bar 2's low (101.2) is above bar 0's high (100): a bullish gap of 1.2 (>= 0.1% of 101.5).
    # Bar 5's high (99) is below bar 3's low (100.5): bearish gap 99..100.5.
    # Bar 7's low is 0.05 above bar 5's high: a gap, but under 0.1% of the close, so not one.
    frame = bars(high=[100, 101, 101.8, 101.5, 101.3, 99.0, 99.2, 99.6],
                 low=[99, 100, 101.2, 100.5, 99.0, 98.0, 98.5, 99.05])
    gaps = fair_value_gaps(frame)
    assert gaps["fvg_type"].tolist() == [0, 0, 1, 0, 0, -1, 0, 0]
    assert (gaps.loc[2, "fvg_bottom"], gaps.loc[2, "fvg_top"]) == (100.0, 101.2)
    assert gaps.loc[2, "fvg_size"] == pytest.approx(1.2)
    assert (gaps.loc[5, "fvg_bottom"], gaps.loc[5, "fvg_top"]) == (99.0, 100.5)
    assert gaps["fvg_size"].isna().sum() == 6


def test_swing_points_hand_worked():
    # Lookback 5 -> a pivot beats its 2 neighbours on each side. Highs peak at index 3 (5.0) and 8 (6.0);
    # index 8 has only one bar after it, so it is not (yet) a swing. Lows trough at index 5 (0.5).
    high = [1.0, 2.0, 3.0, 5.0, 4.0, 3.0, 3.5, 4.0, 6.0, 5.5]
    low = [0.5 + h - 1.0 for h in high]
    low[5] = 0.5
    points = swing_points(bars(high, low))
    assert points.index[points["swing_high"]].tolist() == [3]
    assert points.index[points["swing_low"]].tolist() == [5]
    # Confirmed two bars later: no look-ahead for a strategy.
    assert points["last_swing_high"].isna().tolist() == [True] * 5 + [False] * 5
    assert points.loc[5, "last_swing_high"] == 5.0
    assert points["last_swing_low"].notna().idxmax() == 7 and points.loc[9, "last_swing_low"] == 0.5


def test_market_structure_hand_worked():
    rising = bars(high=np.arange(1, 41, dtype=float) + 1, low=np.arange(1, 41, dtype=float))
    falling = bars(high=np.arange(40, 0, -1, dtype=float) + 1, low=np.arange(40, 0, -1, dtype=float))
    # Higher high but lower low in the last 10 bars (an expanding range): neutral.
    expanding = bars(high=[10.0] * 10 + [11.0] * 10, low=[5.0] * 10 + [4.0] * 10)
    assert market_structure(rising)["market_structure"].tolist() == [0] * 19 + [1] * 21
    assert market_structure(falling)["market_structure"].tolist() == [0] * 19 + [-1] * 21
    expanding_structure = market_structure(expanding).iloc[-1]
    assert expanding_structure["higher_high"] and expanding_structure["lower_low"]
    assert expanding_structure["market_structure"] == 0


def test_order_blocks_hand_worked():
    n = 25
    open_ = np.full(n, 100.0)
    close = np.full(n, 100.2)  # body 0.2 of a range of 1: not a block
    high, low, volume = np.full(n, 100.6), np.full(n, 99.6), np.ones(n)
    # Bar 21: range 2, body 1.5 up (ratio 0.75), volume 3 vs SMA20 (19 x 1 + 3) / 20 = 1.1 -> ratio 2.7272...
    open_[21], close[21], high[21], low[21], volume[21] = 100.0, 101.5, 101.8, 99.8, 3.0
    # Bar 23: a strong down body but ordinary volume: not a block.
    open_[23], close[23], high[23], low[23] = 101.0, 99.9, 101.1, 99.8
    blocks = order_blocks(bars(high, low, open_=open_, close=close, volume=volume))
    assert blocks.index[blocks["ob_type"] != 0].tolist() == [21]
    assert blocks.loc[21, "ob_type"] == 1
    assert blocks.loc[21, "ob_strength"] == pytest.approx(0.75 * 3.0 / 1.1)
    assert (blocks.loc[21, "ob_high"], blocks.loc[21, "ob_low"], blocks.loc[21, "ob_mid"]) == (101.8, 99.8, 100.8)
    assert blocks["order_blocks_count"].tolist() == [0] * 21 + [1] * 4


def test_detect_ict_on_real_bars_is_aligned(klines_5m):
    frame = detect_ict(klines_5m, IctConfig())
    assert len(frame) == len(klines_5m) and frame.index.equals(klines_5m.index)
    assert set(frame["market_structure"].unique()) == {-1, 0, 1}
    assert (frame["ob_type"] != 0).sum() > 0 and (frame["fvg_type"] != 0).sum() > 0


@pytest.fixture(scope="module")
def capture_1m() -> pd.DataFrame:
    messages = [m for path in (CAPTURE_BTCUSDT_20230404, CAPTURE_BTCUSDT_20230405)
                for m in read_capture(path, kinds={"trade"})]
    return aggregate_trades_to_klines(trades_from_capture(messages), symbol="BTCUSDT", interval="1m")


def test_resample_1m_to_5m_equals_binance_bar(capture_1m):
    """1m bars rebuilt from the captured trades, aggregated to 5m, equal Binance's 5m bar of 00:00."""
    five = resample_klines(capture_1m, "5m")
    official = read_kline_csv(BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    start = pd.Timestamp("2023-04-05 00:00", tz="UTC")
    # The capture starts at 23:58:20 and ends at 00:06:54: only the 00:00 bar is complete.
    assert five["open_time"].tolist() == [start]
    ours = five.iloc[0]
    theirs = official[official["open_time"] == start].iloc[0]
    for column in ("open", "high", "low", "close", "volume", "quote_volume", "trade_count",
                   "taker_buy_base_volume", "taker_buy_quote_volume", "close_time"):
        assert ours[column] == theirs[column], column
    assert (ours["open"], ours["close"], ours["volume"], ours["trade_count"]) == (28155.1, 28140.6, 685.263, 8056)


def _synthetic_1m(start: str, minutes: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    open_time = pd.date_range(start, periods=minutes, freq="1min", tz="UTC")
    close = np.round(30_000 + rng.standard_normal(minutes).cumsum() * 5, 1)
    open_ = np.r_[close[0], close[:-1]]
    volume = np.round(rng.random(minutes) * 50, 3)
    return pd.DataFrame({
        "symbol": "BTCUSDT", "interval": "1m", "open_time": open_time,
        "close_time": open_time + pd.Timedelta(minutes=1) - pd.Timedelta(milliseconds=1),
        "open": open_, "high": np.maximum(open_, close) + 1.5, "low": np.minimum(open_, close) - 1.5,
        "close": close, "volume": volume, "quote_volume": np.round(volume * close, 4),
        "trade_count": rng.integers(1, 500, minutes), "taker_buy_base_volume": np.round(volume / 2, 3),
        "taker_buy_quote_volume": np.round(volume / 2 * close, 4),
    })


@pytest.mark.parametrize("interval, minutes", [("5m", 5), ("15m", 15), ("1h", 60)])
def test_resample_is_utc_aligned_and_exact(interval, minutes):
    # Starts at 00:37 and ends at 03:20: the leading and trailing partial buckets are dropped.
    fine = _synthetic_1m("2024-03-01 00:37", 164)
    coarse = resample_klines(fine, interval)
    first_boundary = pd.Timestamp("2024-03-01 00:37", tz="UTC").ceil(f"{minutes}min")
    assert coarse["open_time"].iloc[0] == first_boundary
    assert (coarse["open_time"].dt.minute % minutes == 0).all()
    bar_length = pd.Timedelta(minutes=minutes) - pd.Timedelta(milliseconds=1)
    assert (coarse["close_time"] - coarse["open_time"] == bar_length).all()
    for _, bar in coarse.iterrows():
        part = fine[(fine["open_time"] >= bar["open_time"]) & (fine["open_time"] <= bar["close_time"])]
        assert len(part) == minutes
        assert (bar["open"], bar["close"]) == (part["open"].iloc[0], part["close"].iloc[-1])
        assert (bar["high"], bar["low"]) == (part["high"].max(), part["low"].min())
        assert bar["trade_count"] == part["trade_count"].sum()
        # Exact decimal sums: the inputs have 3 (volume) and 4 (quote volume) decimals.
        assert bar["volume"] == float(f"{part['volume'].sum():.3f}")
        assert bar["quote_volume"] == float(f"{part['quote_volume'].sum():.4f}")
    partial = resample_klines(fine, interval, complete_only=False)
    assert len(partial) == len(coarse) + 2


def test_resample_chain_equals_direct():
    fine = _synthetic_1m("2024-03-01 00:00", 240)
    via_15m = resample_klines(resample_klines(fine, "15m"), "1h")
    direct = resample_klines(fine, "1h")
    pd.testing.assert_frame_equal(via_15m, direct)


def test_resample_refuses_mixed_or_incompatible_input():
    fine = _synthetic_1m("2024-03-01 00:00", 30)
    with pytest.raises(ValueError, match="5m is not a multiple of 2m"):
        resample_klines(fine.assign(interval="2m"), "5m")
    with pytest.raises(ValueError, match="one source interval"):
        resample_klines(pd.concat([fine, fine.assign(interval="5m")]), "1h")
    with pytest.raises(ValueError, match="unsupported kline interval"):
        resample_klines(fine, "7x")
