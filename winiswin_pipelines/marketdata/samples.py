"""The bundled real Binance samples, and how market files in a folder are recognised by name.

See sample_data/market/MANIFEST.txt for where each file comes from and what it holds.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from winiswin_pipelines.settings import SAMPLE_DATA_DIR

MARKET_SAMPLES_DIR = SAMPLE_DATA_DIR / "market"
BTCUSDT_5M_2023_04_CSV = MARKET_SAMPLES_DIR / "binance_um_BTCUSDT-5m-2023-04.csv"
CAPTURE_BTCUSDT_20230404 = MARKET_SAMPLES_DIR / "hftbacktest_usdm_btcusdt_20230404.dat.gz"
CAPTURE_BTCUSDT_20230405 = MARKET_SAMPLES_DIR / "hftbacktest_usdm_btcusdt_20230405.dat.gz"
CAPTURE_BTCUSDT_20240718 = MARKET_SAMPLES_DIR / "hftbacktest_usdm_btcusdt_20240718.gz"
CAPTURE_BTCUSDT_20240719 = MARKET_SAMPLES_DIR / "hftbacktest_usdm_btcusdt_20240719.gz"
CAPTURE_ETHUSDT_20240718 = MARKET_SAMPLES_DIR / "hftbacktest_usdm_ethusdt_20240718.gz"
CAPTURE_ETHUSDT_20240719 = MARKET_SAMPLES_DIR / "hftbacktest_usdm_ethusdt_20240719.gz"

# Binance's file names: BTCUSDT-5m-2023-04.csv (monthly) or BTCUSDT-5m-2023-04-05.csv (daily).
_KLINE_NAME = re.compile(
    r"(?:^|_)(?P<symbol>[A-Z0-9]+)-(?P<interval>\d+[mhd])-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.csv$"
)
# Capture names end with <symbol>_<YYYYMMDD>, the UTC day whose data they hold.
_CAPTURE_NAME = re.compile(r"(?:^|_)(?P<symbol>[a-z0-9]+)_(?P<day>\d{8})(?:\.dat)?(?:\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class KlineFile:
    path: Path
    symbol: str
    interval: str
    first_day: dt.date
    last_day: dt.date


@dataclass(frozen=True)
class CaptureFile:
    path: Path
    symbol: str
    day: dt.date


@dataclass(frozen=True)
class MarketFiles:
    klines: list[KlineFile]
    captures: list[CaptureFile]

    def klines_between(self, first: dt.date, last: dt.date) -> list[KlineFile]:
        return [f for f in self.klines if f.first_day <= last and f.last_day >= first]

    def captures_between(self, first: dt.date, last: dt.date) -> list[CaptureFile]:
        return [f for f in self.captures if first <= f.day <= last]


def scan_market_folder(folder: Path) -> MarketFiles:
    """The kline CSVs and captures directly inside `folder`, recognised by their names."""
    if not folder.is_dir():
        raise FileNotFoundError(f"market data folder {folder} does not exist")
    klines, captures = [], []
    for path in sorted(folder.iterdir()):
        if match := _KLINE_NAME.search(path.name):
            first, last = _period_days(match["period"])
            klines.append(KlineFile(path, match["symbol"], match["interval"], first, last))
        elif match := _CAPTURE_NAME.search(path.name):
            day = dt.datetime.strptime(match["day"], "%Y%m%d").date()
            captures.append(CaptureFile(path, match["symbol"].upper(), day))
    return MarketFiles(klines, captures)


def _period_days(period: str) -> tuple[dt.date, dt.date]:
    parts = [int(p) for p in period.split("-")]
    if len(parts) == 3:
        day = dt.date(*parts)
        return day, day
    year, month = parts
    return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])
