"""ICT / SMC detectors of the legacy `EliteTechnicalEngine` v3.20 (legacy-system.md §4), vectorised.

Every function takes one symbol's bars of one timeframe (kline columns, time order) and returns
per-bar columns aligned with the input index, so a strategy reads the last row and a study reads
them all. Definitions and defaults follow the legacy engine:

- order blocks (lookback 20): a bar whose body is at least half its range (body/range >= 0.5)
  on volume >= 1.2 x the 20-bar volume SMA; bullish when it closes up, bearish when down;
  strength = body_ratio x volume ratio; `order_blocks_count` counts them over the last 20 bars.
- market structure (lookback 10): the last 10 bars' highest high / lowest low against the 10
  before: higher high and higher low -> bullish (+1), lower high and lower low -> bearish (-1),
  anything else neutral (0).
- swing points (lookback 5): a bar whose high (low) is strictly above (below) its
  max(lookback // 2, 2) neighbours on each side. The pivot is only known `order` bars later, so
  `swing_high`/`swing_low` mark the pivot bar (hindsight, for studies) while
  `last_swing_high`/`last_swing_low` carry the latest pivot level from the bar it is confirmed on
  (no look-ahead: what a strategy may use).
- fair-value gaps: 3-bar gaps of at least 0.1% of the close: bullish when low[i] > high[i-2]
  (gap high[i-2]..low[i]), bearish when high[i] < low[i-2] (gap high[i]..low[i-2]).

Warm-up: order blocks need `volume_sma - 1` bars (19), market structure `2 * lookback - 1` (19),
swing levels `2 * order` (4) plus a first pivot, fair-value gaps 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from winiswin_pipelines.technical.indicators import check_bars


@dataclass(frozen=True)
class IctConfig:
    ob_lookback: int = 20
    ob_min_body_ratio: float = 0.5
    ob_volume_factor: float = 1.2
    ob_volume_sma: int = 20
    structure_lookback: int = 10
    swing_lookback: int = 5
    fvg_min_size_pct: float = 0.001


def order_blocks(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns ob_type (+1/-1/0), ob_strength, ob_high, ob_low, ob_mid (NaN off blocks), order_blocks_count."""
    check_bars(bars)
    body = (bars["close"] - bars["open"]).abs()
    price_range = (bars["high"] - bars["low"]).replace(0.0, np.nan)
    body_ratio = body / price_range
    volume_ratio = bars["volume"] / bars["volume"].rolling(config.ob_volume_sma).mean().replace(0.0, np.nan)
    is_block = (body_ratio >= config.ob_min_body_ratio) & (volume_ratio >= config.ob_volume_factor)
    direction = np.sign(bars["close"] - bars["open"]).astype("int64")
    ob_type = direction.where(is_block, 0)
    out = pd.DataFrame(index=bars.index)
    out["ob_type"] = ob_type.astype("int64")
    out["ob_strength"] = (body_ratio * volume_ratio).where(is_block)
    out["ob_high"] = bars["high"].where(is_block)
    out["ob_low"] = bars["low"].where(is_block)
    out["ob_mid"] = ((bars["high"] + bars["low"]) / 2).where(is_block)
    out["order_blocks_count"] = (ob_type != 0).astype("int64").rolling(config.ob_lookback, min_periods=1).sum().astype("int64")
    return out


def market_structure(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns higher_high, higher_low, lower_high, lower_low (bool) and market_structure (+1/0/-1)."""
    check_bars(bars)
    n = config.structure_lookback
    recent_high = bars["high"].rolling(n).max()
    recent_low = bars["low"].rolling(n).min()
    prior_high, prior_low = recent_high.shift(n), recent_low.shift(n)
    out = pd.DataFrame(index=bars.index)
    out["higher_high"] = recent_high > prior_high
    out["higher_low"] = recent_low > prior_low
    out["lower_high"] = recent_high < prior_high
    out["lower_low"] = recent_low < prior_low
    bullish = out["higher_high"] & out["higher_low"]
    bearish = out["lower_high"] & out["lower_low"]
    out["market_structure"] = np.select([bullish, bearish], [1, -1], 0).astype("int64")
    return out


def swing_order(config: IctConfig = IctConfig()) -> int:
    """Neighbours a swing point must beat on each side."""
    return max(config.swing_lookback // 2, 2)


def swing_points(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns swing_high, swing_low (bool, at the pivot bar) and last_swing_high/low (confirmed levels)."""
    check_bars(bars)
    k = swing_order(config)
    high, low = bars["high"], bars["low"]
    # Strictly above the k bars before and the k bars after.
    left_high = high.shift(1).rolling(k).max()
    right_high = high[::-1].shift(1).rolling(k).max()[::-1]
    left_low = low.shift(1).rolling(k).min()
    right_low = low[::-1].shift(1).rolling(k).min()[::-1]
    out = pd.DataFrame(index=bars.index)
    out["swing_high"] = (high > left_high) & (high > right_high)
    out["swing_low"] = (low < left_low) & (low < right_low)
    out["last_swing_high"] = high.where(out["swing_high"]).shift(k).ffill()
    out["last_swing_low"] = low.where(out["swing_low"]).shift(k).ffill()
    return out


def fair_value_gaps(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns fvg_type (+1/-1/0), fvg_top, fvg_bottom, fvg_size (NaN off gaps)."""
    check_bars(bars)
    high_2, low_2 = bars["high"].shift(2), bars["low"].shift(2)
    min_size = bars["close"] * config.fvg_min_size_pct
    bullish_size = bars["low"] - high_2
    bearish_size = low_2 - bars["high"]
    bullish = bullish_size >= min_size
    bearish = bearish_size >= min_size
    out = pd.DataFrame(index=bars.index)
    out["fvg_type"] = np.select([bullish, bearish], [1, -1], 0).astype("int64")
    out["fvg_bottom"] = high_2.where(bullish, bars["high"].where(bearish))
    out["fvg_top"] = bars["low"].where(bullish, low_2.where(bearish))
    out["fvg_size"] = bullish_size.where(bullish, bearish_size.where(bearish))
    return out


def detect_ict(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """All ICT/SMC columns for `bars`, aligned with its index."""
    return pd.concat(
        [order_blocks(bars, config), market_structure(bars, config), swing_points(bars, config),
         fair_value_gaps(bars, config)],
        axis=1,
    )
