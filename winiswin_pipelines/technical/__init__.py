"""The one technical-indicator engine: classic indicators over `ta`, ICT/SMC detectors, resampling.

Pure (pandas/numpy/ta only): no Dagster, no database, no disk cache.
"""

from winiswin_pipelines.technical.ict import IctConfig, detect_ict
from winiswin_pipelines.technical.indicators import IndicatorConfig, compute_indicators, warmup_bars
from winiswin_pipelines.technical.resample import interval_timedelta, resample_klines

__all__ = [
    "IctConfig", "IndicatorConfig", "compute_indicators", "detect_ict", "interval_timedelta",
    "resample_klines", "warmup_bars",
]
