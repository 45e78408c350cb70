"""Reading the training dataset: <root>/training_dataset/date=YYYY-MM-DD/part-0.parquet, one file
per UTC day (the layout `features.dataset.write_day_file` writes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DATASET_FOLDER = "training_dataset"
_DAY_FILE = "part-0.parquet"


def dataset_days(root: Path) -> list[dt.date]:
    """The days that have a file under `root`, in order."""
    folder = Path(root) / DATASET_FOLDER
    if not folder.is_dir():
        return []
    days = []
    for path in folder.glob(f"date=*/{_DAY_FILE}"):
        try:
            days.append(dt.date.fromisoformat(path.parent.name.removeprefix("date=")))
        except ValueError:
            continue  # not a day folder
    return sorted(days)


def window_days(available: Sequence[dt.date], days: int, end_day: dt.date | None = None) -> list[dt.date]:
    """The available days among the `days` calendar days ending at `end_day` (inclusive; default the
    last available day); `days` 0 takes every available day up to `end_day`."""
    if not available:
        return []
    end = end_day or max(available)
    start = end - dt.timedelta(days=days - 1) if days > 0 else dt.date.min
    return [day for day in sorted(available) if start <= day <= end]


def read_dataset(root: Path, days: Sequence[dt.date], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of `days` (the columns asked for, default all), in day order."""
    folder = Path(root) / DATASET_FOLDER
    tables = [pq.read_table(folder / f"date={day:%Y-%m-%d}" / _DAY_FILE, columns=list(columns) if columns else None)
              for day in days]
    if not tables:
        raise ValueError(f"no dataset files for the days asked under {folder}")
    return pa.concat_tables(tables, promote_options="default").to_pandas()
