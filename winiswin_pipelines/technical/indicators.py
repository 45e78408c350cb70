"""Classic indicators over `ta`, vectorised over one symbol's bars of one timeframe.

Input: a DataFrame of klines in time order with at least `open, high, low, close, volume`
(the `klines` table columns). Output: the same frame with one column per indicator added.
Rows inside an indicator's warm-up are NaN (never a fake 0: `ta` returns 0.0 for the first rows
of ATR and ADX, those are masked), so a strategy can tell "not ready" from "flat".

Warm-up bars (rows that are NaN at the start) with the defaults of `IndicatorConfig`:

| column                                   | warm-up rows                      | default |
|------------------------------------------|-----------------------------------|---------|
| ema_fast / ema_slow / ema_trend          | period - 1                        | 19 / 49 / 199 |
| rsi                                      | period - 1 (Wilder smoothing)     | 13      |
| macd / macd_signal / macd_hist           | slow - 1 / slow + signal - 2      | 25 / 33 |
| bb_upper / bb_middle / bb_lower / bb_width | period - 1                      | 19      |
| atr                                      | period - 1                        | 13      |
| adx / adx_pos / adx_neg                  | 2 * period - 1 / period + 1       | 27 / 15 |
| volume_sma_ratio                         | period - 1                        | 19      |

`warmup_bars(config)` gives the largest of these; EMAs keep converging after their first value, so
feed a strategy a few times the slow period (see `IndicatorConfig.history_bars`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import ta

REQUIRED_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class IndicatorConfig:
    ema_fast: int = 20
    ema_slow: int = 50
    ema_trend: int = 200
    rsi: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bb_period: int = 20
    bb_std: float = 2.0
    atr: int = 14
    adx: int = 14
    volume_sma: int = 20
    # How many recent bars a live strategy keeps to compute these (bounded memory and cost).
    history_bars: int = 300


def warmup_bars(config: IndicatorConfig = IndicatorConfig()) -> dict[str, int]:
    """Leading NaN rows per indicator column (the table in the module docstring)."""
    return {
        "ema_fast": config.ema_fast - 1,
        "ema_slow": config.ema_slow - 1,
        "ema_trend": config.ema_trend - 1,
        "rsi": config.rsi - 1,
        "macd": config.macd_slow - 1,
        "macd_signal": config.macd_slow + config.macd_signal - 2,
        "macd_hist": config.macd_slow + config.macd_signal - 2,
        "bb_upper": config.bb_period - 1,
        "bb_middle": config.bb_period - 1,
        "bb_lower": config.bb_period - 1,
        "bb_width": config.bb_period - 1,
        "atr": config.atr - 1,
        "adx": 2 * config.adx - 1,
        "adx_pos": config.adx + 1,
        "adx_neg": config.adx + 1,
        "volume_sma_ratio": config.volume_sma - 1,
    }


def check_bars(bars: pd.DataFrame, where: str = "bars") -> None:
    """Refuse frames the indicators would silently get wrong: missing columns, unsorted times."""
    missing = [c for c in REQUIRED_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"{where}: missing kline columns {missing}")
    if "open_time" in bars.columns and not bars["open_time"].is_monotonic_increasing:
        raise ValueError(f"{where}: open_time is not in increasing order")


def _masked_warmup(series: pd.Series, rows: int) -> pd.Series:
    # ta fills the first rows of ATR/ADX with 0.0; those are not values.
    series = series.astype("float64").copy()
    series.iloc[: min(rows, len(series))] = np.nan
    return series


def compute_indicators(bars: pd.DataFrame, config: IndicatorConfig = IndicatorConfig()) -> pd.DataFrame:
    """`bars` with the indicator columns of the module docstring added (a new frame)."""
    check_bars(bars)
    close, high, low, volume = (bars[c].astype("float64") for c in ("close", "high", "low", "volume"))
    warmup = warmup_bars(config)
    macd = ta.trend.MACD(close, config.macd_slow, config.macd_fast, config.macd_signal)
    bands = ta.volatility.BollingerBands(close, config.bb_period, config.bb_std)
    adx = ta.trend.ADXIndicator(high, low, close, config.adx)
    volume_sma = ta.trend.SMAIndicator(volume, config.volume_sma).sma_indicator()
    columns = {
        "ema_fast": ta.trend.EMAIndicator(close, config.ema_fast).ema_indicator(),
        "ema_slow": ta.trend.EMAIndicator(close, config.ema_slow).ema_indicator(),
        "ema_trend": ta.trend.EMAIndicator(close, config.ema_trend).ema_indicator(),
        "rsi": ta.momentum.RSIIndicator(close, config.rsi).rsi(),
        "macd": macd.macd(),
        "macd_signal": macd.macd_signal(),
        "macd_hist": macd.macd_diff(),
        "bb_upper": bands.bollinger_hband(),
        "bb_middle": bands.bollinger_mavg(),
        "bb_lower": bands.bollinger_lband(),
        # A fraction, like the legacy `bb_width_pct` ((upper - lower) / middle); ta's wband is in percent.
        "bb_width": bands.bollinger_wband() / 100.0,
        "atr": _masked_warmup(
            ta.volatility.AverageTrueRange(high, low, close, config.atr).average_true_range(), warmup["atr"]
        ),
        "adx": _masked_warmup(adx.adx(), warmup["adx"]),
        "adx_pos": _masked_warmup(adx.adx_pos(), warmup["adx_pos"]),
        "adx_neg": _masked_warmup(adx.adx_neg(), warmup["adx_neg"]),
        "volume_sma_ratio": volume / volume_sma.replace(0.0, np.nan),
    }
    # One concat instead of a column insert per indicator: this runs on every closed bar.
    return pd.concat([bars, pd.DataFrame({k: v.to_numpy() for k, v in columns.items()}, index=bars.index)], axis=1)
