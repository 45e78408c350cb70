"""The training dataset on disk: one Parquet file per UTC day, Hive-partitioned by date, under
<root>/training_dataset/date=YYYY-MM-DD/part-0.parquet."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from winiswin_pipelines.features.microstructure import FEATURE_COLUMNS
from winiswin_pipelines.labels.days import LABEL_COLUMNS

DATASET_COLUMNS = ("symbol", "ts", *FEATURE_COLUMNS, *LABEL_COLUMNS)


def write_day_file(frame: pd.DataFrame, root: Path, day: dt.datetime) -> Path:
    """Write `frame` (labelled rows of `day`, the DATASET_COLUMNS) as the day's file, and return it.

    An empty frame removes the day's file: a day without labelled rows has none.
    """
    folder = root / "training_dataset" / f"date={day:%Y-%m-%d}"
    target = folder / "part-0.parquet"
    if frame.empty:
        target.unlink(missing_ok=True)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # Written next to the target and renamed: a reader never sees half a file.
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        table = pa.Table.from_pandas(frame.astype({"label": "int8"}), preserve_index=False)
        pq.write_table(table, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target
