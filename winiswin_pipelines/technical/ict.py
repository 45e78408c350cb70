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
from numpy.lib.stride_tricks import sliding_window_view

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


def _frame(bars: pd.DataFrame, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame(columns, index=bars.index)


def _arrays(bars: pd.DataFrame, *names: str) -> list[np.ndarray]:
    check_bars(bars)
    return [bars[name].to_numpy(dtype="float64") for name in names]


# numpy rather than pandas rolling windows: these run on every closed bar of a live session.
def _rolling(values: np.ndarray, window: int, reduce) -> np.ndarray:
    """reduce(values[i - window + 1 : i + 1]) at i; NaN while fewer than `window` values."""
    out = np.full(len(values), np.nan)
    if len(values) >= window:
        out[window - 1:] = reduce(sliding_window_view(values, window), axis=1)
    return out


def _shift(values: np.ndarray, periods: int) -> np.ndarray:
    """values moved `periods` rows later (negative: earlier), NaN where nothing moved in."""
    out = np.full(len(values), np.nan)
    if periods > 0:
        out[periods:] = values[:-periods]
    elif periods < 0:
        out[:periods] = values[-periods:]
    else:
        out[:] = values
    return out


def _ffill(values: np.ndarray) -> np.ndarray:
    index = np.where(np.isnan(values), 0, np.arange(len(values)))
    np.maximum.accumulate(index, out=index)
    return values[index]


def order_blocks(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns ob_type (+1/-1/0), ob_strength, ob_high, ob_low, ob_mid (NaN off blocks), order_blocks_count."""
    open_, high, low, close, volume = _arrays(bars, "open", "high", "low", "close", "volume")
    with np.errstate(divide="ignore", invalid="ignore"):
        body_ratio = np.abs(close - open_) / (high - low)
        volume_ratio = volume / _rolling(volume, config.ob_volume_sma, np.mean)
    is_block = (body_ratio >= config.ob_min_body_ratio) & (volume_ratio >= config.ob_volume_factor)
    ob_type = np.where(is_block, np.sign(close - open_), 0).astype("int64")
    counts = np.cumsum(ob_type != 0)
    recent = counts - np.concatenate([np.zeros(config.ob_lookback, dtype=counts.dtype), counts])[: len(counts)]
    return _frame(bars, {
        "ob_type": ob_type,
        "ob_strength": np.where(is_block, body_ratio * volume_ratio, np.nan),
        "ob_high": np.where(is_block, high, np.nan),
        "ob_low": np.where(is_block, low, np.nan),
        "ob_mid": np.where(is_block, (high + low) / 2, np.nan),
        "order_blocks_count": recent.astype("int64"),
    })


def market_structure(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns higher_high, higher_low, lower_high, lower_low (bool) and market_structure (+1/0/-1)."""
    high, low = _arrays(bars, "high", "low")
    n = config.structure_lookback
    recent_high, recent_low = _rolling(high, n, np.max), _rolling(low, n, np.min)
    prior_high, prior_low = _shift(recent_high, n), _shift(recent_low, n)
    higher_high, higher_low = recent_high > prior_high, recent_low > prior_low
    lower_high, lower_low = recent_high < prior_high, recent_low < prior_low
    structure = np.select([higher_high & higher_low, lower_high & lower_low], [1, -1], 0).astype("int64")
    return _frame(bars, {"higher_high": higher_high, "higher_low": higher_low, "lower_high": lower_high,
                         "lower_low": lower_low, "market_structure": structure})


def swing_order(config: IctConfig = IctConfig()) -> int:
    """Neighbours a swing point must beat on each side."""
    return max(config.swing_lookback // 2, 2)


def swing_points(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns swing_high, swing_low (bool, at the pivot bar) and last_swing_high/low (confirmed levels)."""
    high, low = _arrays(bars, "high", "low")
    k = swing_order(config)
    # Strictly beyond the k bars before and the k bars after.
    left_high, right_high = _shift(_rolling(high, k, np.max), 1), _shift(_rolling(high, k, np.max), -k)
    left_low, right_low = _shift(_rolling(low, k, np.min), 1), _shift(_rolling(low, k, np.min), -k)
    swing_high = (high > left_high) & (high > right_high)
    swing_low = (low < left_low) & (low < right_low)
    return _frame(bars, {
        "swing_high": swing_high, "swing_low": swing_low,
        "last_swing_high": _ffill(_shift(np.where(swing_high, high, np.nan), k)),
        "last_swing_low": _ffill(_shift(np.where(swing_low, low, np.nan), k)),
    })


def fair_value_gaps(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """Columns fvg_type (+1/-1/0), fvg_top, fvg_bottom, fvg_size (NaN off gaps)."""
    high, low, close = _arrays(bars, "high", "low", "close")
    high_2, low_2 = _shift(high, 2), _shift(low, 2)
    min_size = close * config.fvg_min_size_pct
    bullish_size, bearish_size = low - high_2, low_2 - high
    bullish, bearish = bullish_size >= min_size, bearish_size >= min_size
    return _frame(bars, {
        "fvg_type": np.select([bullish, bearish], [1, -1], 0).astype("int64"),
        "fvg_bottom": np.select([bullish, bearish], [high_2, high], np.nan),
        "fvg_top": np.select([bullish, bearish], [low, low_2], np.nan),
        "fvg_size": np.select([bullish, bearish], [bullish_size, bearish_size], np.nan),
    })


def detect_ict(bars: pd.DataFrame, config: IctConfig = IctConfig()) -> pd.DataFrame:
    """All ICT/SMC columns for `bars`, aligned with its index."""
    return pd.concat(
        [order_blocks(bars, config), market_structure(bars, config), swing_points(bars, config),
         fair_value_gaps(bars, config)],
        axis=1,
    )
