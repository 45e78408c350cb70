"""The default strategy, "ict_trend": trade with an ADX-confirmed EMA trend, scored ICT-style.

Evaluated on each closed bar of one symbol and timeframe (any interval: 1m live, 5m stored), on
the technical engine's indicators and ICT/SMC detectors, with nothing from the future:

1. Direction: EMA fast (20) above EMA slow (50) by more than `trend_band` -> LONG, below -> SHORT,
   otherwise no trade ("no trend").
2. Gates: ADX >= `adx_min` (20; the legacy trend gate) and RSI not overextended in the trade's
   direction (LONG below 70, SHORT above 30).
3. Confidence on 0..1 with the legacy weights (legacy-system.md §6):
   - trend alignment 40%: close beyond EMA fast, EMA fast beyond EMA slow, EMA slow beyond the
     200 EMA (each a third);
   - market structure 20%: 1 with the trade (higher highs and lows for LONG), 0.5 neutral, 0 against;
   - price position 20%: 1 between the Bollinger middle and the outer band on the trade's side,
     0.5 outside the band (stretched), 0 on the wrong side of the middle;
   - momentum 10%: MACD histogram with the trade, and RSI on the trade's side of 50 (half each);
   - participation 10%: volume at least its 20-bar average (1), else 0.5; plus 0.5 when a fair-value
     gap or an order block with the trade appeared within the last `ict_recent_bars` bars, capped at 1.
4. Enter when confidence >= `min_confidence` (0.6). Stops and size come from `risk.py`.

Evaluation also returns the features the decision was made on (recorded with the trade).

With `bar_interval` the rules read longer bars than the feed sends: the closed bars are aggregated
(complete buckets only, aligned to UTC) and a decision is made only when such a bar closes.

Profiles (`PROFILES`) pair the rules with the stop distances that suit their bars. A round trip
costs about 0.1% of the notional (two taker fills of 0.05%, plus spread and slippage); a stop only
a few times that pays most of its risk in fees. The default trades 1-hour bars with stops of at
least 0.6% (two 1-hour ATRs, usually more): fewer, larger moves. "scalping" is the former default
(the feed's bars, 5-minute in the stored sample, stops from 0.3%): kept to show what fees do to it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from winiswin_pipelines.technical.ict import IctConfig, detect_ict
from winiswin_pipelines.technical.indicators import IndicatorConfig, compute_indicators, warmup_bars
from winiswin_pipelines.technical.resample import interval_timedelta

STRATEGY_NAME = "ict_trend"
WEIGHTS = {"trend": 0.4, "structure": 0.2, "position": 0.2, "momentum": 0.1, "participation": 0.1}
_COUNT_FEATURES = ("market_structure", "order_blocks_count", "fvg_type")
_FEATURES = (
    "close", "ema_fast", "ema_slow", "ema_trend", "rsi", "macd", "macd_hist", "bb_width", "atr", "adx",
    "volume_sma_ratio", "market_structure", "order_blocks_count", "fvg_type", "last_swing_high", "last_swing_low",
)


@dataclass(frozen=True)
class StrategyConfig:
    indicators: IndicatorConfig = field(default_factory=IndicatorConfig)
    ict: IctConfig = field(default_factory=IctConfig)
    trend_band: float = 0.0005
    adx_min: float = 20.0
    rsi_overbought: float = 70.0
    rsi_oversold: float = 30.0
    min_confidence: float = 0.6
    ict_recent_bars: int = 3
    bar_interval: str | None = None  # the bars the rules read ("1h"); None: the feed's bars as they come

    def history_bars(self, interval: str | None) -> int:
        """Bars of `interval` (the feed's) to keep: enough for `indicators.history_bars` of our bars."""
        if self.bar_interval is None or interval is None:
            return self.indicators.history_bars
        return self.indicators.history_bars * _bars_per_bar(self.bar_interval, interval)

    @classmethod
    def short_horizon(cls) -> StrategyConfig:
        """The same rules on periods of a few bars, for replaying a few minutes of capture.

        The bundled captures hold about 8 minutes (7 complete 1m bars per symbol), far less than the
        default's warm-up (50 bars); this profile is ready after 5 bars. A 3-period RSI reaches its
        extremes within a few bars, so the overextension gates move to 5/95, and the trend band is
        scaled to one-minute moves. A demonstration setting for short replays, not a tuned one.
        """
        return cls(
            indicators=IndicatorConfig(ema_fast=2, ema_slow=4, ema_trend=6, rsi=3, macd_fast=2, macd_slow=4,
                                       macd_signal=2, bb_period=3, atr=2, adx=2, volume_sma=3, history_bars=60),
            ict=IctConfig(ob_lookback=3, ob_volume_sma=3, structure_lookback=2, swing_lookback=3),
            trend_band=0.0001, adx_min=10.0, rsi_overbought=95.0, rsi_oversold=5.0, min_confidence=0.5,
        )

    @property
    def min_bars(self) -> int:
        """Bars needed before the first evaluation (the slowest indicator used, without the 200 EMA)."""
        warmup = warmup_bars(self.indicators)
        return 1 + max(value for name, value in warmup.items() if name != "ema_trend")


@dataclass(frozen=True)
class Profile:
    """The rules and the stop distances that suit their bars (the rest of the risk rules are shared)."""

    strategy: StrategyConfig
    stop_atr_multiple: float
    min_stop_pct: float
    reward_risk: float
    time_stop: dt.timedelta


PROFILES: dict[str, Profile] = {
    # 1-hour bars, stops of two ATRs and at least 0.6% (6 round trips of fees), targets twice as far.
    "default": Profile(StrategyConfig(bar_interval="1h"), stop_atr_multiple=2.0, min_stop_pct=0.006,
                       reward_risk=2.0, time_stop=dt.timedelta(hours=24)),
    # The former default: the feed's bars (5m stored), stops from 0.3%: fees take most of its risk.
    "scalping": Profile(StrategyConfig(), stop_atr_multiple=2.0, min_stop_pct=0.003, reward_risk=1.5,
                        time_stop=dt.timedelta(hours=2)),
    "short_horizon": Profile(StrategyConfig.short_horizon(), stop_atr_multiple=2.0, min_stop_pct=0.003,
                             reward_risk=1.5, time_stop=dt.timedelta(hours=2)),
}


def _bars_per_bar(coarse: str, fine: str) -> int:
    ratio, rest = divmod(interval_timedelta(coarse), interval_timedelta(fine))
    if rest or ratio < 1:
        raise ValueError(f"bars of {coarse} cannot be made of {fine} bars")
    return ratio


def coarse_bars(bars: pd.DataFrame, interval: str) -> pd.DataFrame | None:
    """`bars` aggregated to complete bars of `interval`, when the last one closes with the last of
    `bars`; None when the last of `bars` is inside a longer bar (no decision then)."""
    step = bars["open_time"].diff().min()
    length = pd.Timedelta(interval_timedelta(interval))
    if pd.isna(step) or length % step:
        return None
    end = bars["open_time"].iloc[-1] + step
    if end.floor(length) != end:
        return None
    bucket = bars["open_time"].dt.floor(length)
    grouped = bars.groupby(bucket, sort=True)
    out = grouped.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
                      volume=("volume", "sum"), count=("close", "size"))
    out = out[out.pop("count") == length // step]  # a bar with missing parts would pass for a real one
    if out.empty or out.index[-1] != end - length:  # the bar closing now lacks parts: no decision on it
        return None
    return out.rename_axis("open_time").reset_index()


@dataclass(frozen=True)
class Signal:
    side: str
    confidence: float
    price: float
    atr: float
    scores: dict[str, float]


@dataclass(frozen=True)
class Evaluation:
    """The strategy's verdict on the last bar: a signal, or the reason there is none."""

    signal: Signal | None
    reason: str
    side: str | None  # the direction considered (None when there was no trend at all)
    features: dict[str, Any]


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def _features(row: pd.Series) -> dict[str, Any]:
    values = {}
    for name in _FEATURES:
        value = row.get(name)
        if _finite(value):
            values[name] = int(value) if name in _COUNT_FEATURES else float(value)
    return values


def _scores(side: str, frame: pd.DataFrame, config: StrategyConfig) -> dict[str, float]:
    row = frame.iloc[-1]
    sign = 1 if side == "LONG" else -1

    def above(a: float, b: float) -> bool:  # beyond, on the trade's side
        return _finite(a) and _finite(b) and sign * (a - b) > 0

    trend = (above(row.close, row.ema_fast) + above(row.ema_fast, row.ema_slow)
             + above(row.ema_slow, row.ema_trend)) / 3
    structure = {sign: 1.0, 0: 0.5}.get(int(row.market_structure), 0.0)
    outer_band = row.bb_upper if sign > 0 else row.bb_lower
    if not above(row.close, row.bb_middle):
        position = 0.0
    else:
        position = 0.5 if above(row.close, outer_band) else 1.0
    momentum = 0.5 * above(row.macd_hist, 0.0) + 0.5 * above(row.rsi, 50.0)
    recent = frame.iloc[-config.ict_recent_bars:]
    ict_with_trade = bool(((recent["fvg_type"] == sign) | (recent["ob_type"] == sign)).any())
    participation = min(1.0, (1.0 if row.volume_sma_ratio >= 1.0 else 0.5) + 0.5 * ict_with_trade)
    scores = {"trend": trend, "structure": structure, "position": position, "momentum": momentum,
              "participation": participation}
    return {name: float(score) for name, score in scores.items()}


def analyse(bars: pd.DataFrame, config: StrategyConfig) -> pd.DataFrame:
    """Indicators and ICT columns for `bars` (one symbol, one timeframe, time order)."""
    indicators = compute_indicators(bars, config.indicators)
    return pd.concat([indicators, detect_ict(bars, config.ict)], axis=1)


def evaluate(bars: pd.DataFrame, config: StrategyConfig) -> Evaluation:
    """The decision on the last bar of `bars` (closed bars only)."""
    if config.bar_interval is not None:
        coarse = coarse_bars(bars, config.bar_interval)
        if coarse is None:
            return Evaluation(None, f"inside a {config.bar_interval} bar", None, {})
        bars = coarse
    if len(bars) < config.min_bars:
        return Evaluation(None, f"warming up ({len(bars)}/{config.min_bars} bars)", None, {})
    frame = analyse(bars, config)
    row = frame.iloc[-1]
    features = _features(row)
    if not all(_finite(row[c]) for c in ("ema_fast", "ema_slow", "adx", "rsi", "atr", "macd_hist", "bb_middle")):
        return Evaluation(None, "indicators not ready", None, features)
    if row.ema_fast > row.ema_slow * (1 + config.trend_band):
        side = "LONG"
    elif row.ema_fast < row.ema_slow * (1 - config.trend_band):
        side = "SHORT"
    else:
        return Evaluation(None, "no trend", None, features)
    if row.adx < config.adx_min:
        return Evaluation(None, f"weak trend: ADX {row.adx:.1f} < {config.adx_min:g}", side, features)
    if side == "LONG" and row.rsi >= config.rsi_overbought:
        return Evaluation(None, f"overbought: RSI {row.rsi:.1f} >= {config.rsi_overbought:g}", side, features)
    if side == "SHORT" and row.rsi <= config.rsi_oversold:
        return Evaluation(None, f"oversold: RSI {row.rsi:.1f} <= {config.rsi_oversold:g}", side, features)
    scores = _scores(side, frame, config)
    confidence = round(sum(WEIGHTS[name] * score for name, score in scores.items()), 6)
    features["confidence"] = confidence
    if confidence < config.min_confidence:
        return Evaluation(None, f"confidence {confidence:.2f} < {config.min_confidence:g}", side, features)
    signal = Signal(side, confidence, float(row.close), float(row.atr), scores)
    return Evaluation(signal, f"{side} confidence {confidence:.2f}", side, features)
