"""The partitions every area shares: UTC days, the legacy stores, and the helpers around them.

The one module of `defs/` that other `defs` modules import.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import dagster as dg

DAY = dt.timedelta(days=1)
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# One partition per UTC day, for every daily asset (market data, training data, archive, backtest).
daily_partitions = dg.DailyPartitionsDefinition(start_date="2019-09-01", timezone="UTC")

# One partition per legacy trade store (its path inside the legacy folder), added when the store is
# discovered: by the `legacy_store_discovery` sensor, `scripts/migrate_system.py` or `make run`.
legacy_store_partitions = dg.DynamicPartitionsDefinition(name="legacy_stores")


def partition_days(window: dg.TimeWindow) -> list[dt.datetime]:
    """Start of each UTC day of a partition window (one day, or a range in a single-run backfill)."""
    days, day = [], window.start
    while day < window.end:
        days.append(day)
        day += DAY
    return days


def range_tags(first: dt.date | str, last: dt.date | str) -> dict[str, str]:
    """Run tags that select the partitions `first` to `last` (inclusive) in one run."""
    return {RANGE_START_TAG: str(first), RANGE_END_TAG: str(last)}


def day_runs(days: Iterable[dt.date], *, max_hole: int = 0) -> list[tuple[dt.date, dt.date]]:
    """Sorted days grouped into runs of consecutive days, as (first, last); runs separated by at most
    `max_hole` missing days are joined (one run over a small hole costs less than two runs)."""
    runs: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if runs and (day - runs[-1][1]).days <= max_hole + 1:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def run_days(context: dg.AssetCheckExecutionContext) -> tuple[dt.date, dt.date] | None:
    """The first and last day of the run's partition or partition range, None when it has none."""
    tags = context.run.tags
    if "dagster/partition" in tags:
        day = dt.date.fromisoformat(tags["dagster/partition"])
        return day, day
    if RANGE_START_TAG in tags:
        return dt.date.fromisoformat(tags[RANGE_START_TAG]), dt.date.fromisoformat(tags[RANGE_END_TAG])
    return None


def new_legacy_stores(instance: dg.DagsterInstance, relpaths: Iterable[str]) -> list[str]:
    """The stores (paths in the legacy folder) that are not `legacy_trades` partitions yet."""
    return sorted(set(relpaths) - set(instance.get_dynamic_partitions(legacy_store_partitions.name)))


def register_legacy_stores(instance: dg.DagsterInstance, relpaths: Iterable[str]) -> list[str]:
    """Add the stores not yet known as `legacy_trades` partitions; returns the ones added."""
    new = new_legacy_stores(instance, relpaths)
    if new:
        instance.add_dynamic_partitions(legacy_store_partitions.name, new)
    return new
