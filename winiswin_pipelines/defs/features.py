"""Training data: microstructure features and triple-barrier labels in `training_features`, and the
training dataset as Hive-partitioned Parquet. They replace the legacy Close > Open / trade-outcome labels.

Partitions are UTC days, the same as `book_snapshots`. A range of days computed in one run gives the
same rows as its days computed one by one, in any order. Across day boundaries:
- the features of day D read D's snapshots plus the last `FEATURE_READ_WARMUP` of D-1 (the longest
  window plus the gap tolerance), all that the windowed features of D's first rows may read: a
  window whose reference snapshot is stale, or that holds a gap in the book, is NaN (see
  `features.microstructure`); the gaps that end on D are reported;
- the labels of day D follow each event's mid-price path in `book_snapshots` (not the stored
  features, so they do not depend on which features exist) from an hour before D into D+1; an event
  whose path is not complete yet stays unlabelled (label NULL, labels_computed_at set) and is
  labelled when D+1 is materialised, because every run re-evaluates the previous day's unlabelled
  rows; an event whose path runs into a gap gets none, for good (label_barrier 'gap');
- the dataset of D holds D's labelled rows, so it depends on the labels of D and of D+1.

The work of a day is `winiswin_pipelines.features.training`; the checks' counts come from
`winiswin_pipelines.features.repository`.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import dagster as dg
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.catalog import OWNER, table_asset
from winiswin_pipelines.defs.partitions import daily_partitions, partition_days
from winiswin_pipelines.features import repository
from winiswin_pipelines.features.days import FEATURES
from winiswin_pipelines.features.training import (
    check_day_look_ahead,
    write_dataset_day,
    write_day_features,
    write_day_labels,
)
from winiswin_pipelines.labels import BARRIERS
from winiswin_pipelines.labels.days import GAP, LABELS, RoundTripCost
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource

# Driven by data, not by the clock: a day is (re)computed when a day it reads lands or changes (the
# automation sensor, on by default, evaluates this), once nothing it reads is still being written.
WHEN_UPSTREAM_LANDS = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("when a day it reads lands")

# Every training-data asset: a UTC day per partition, a range of days in one run when backfilling.
_DAILY = {"group_name": "training_data", "partitions_def": daily_partitions,
          "backfill_policy": dg.BackfillPolicy.single_run(), "automation_condition": WHEN_UPSTREAM_LANDS}

Result = TypeVar("Result")


def _daily_dep(asset, *, start_offset: int = 0, end_offset: int = 0) -> dg.AssetDep:
    """Depends on `asset`'s days from `start_offset` to `end_offset` around the partition's day."""
    return dg.AssetDep(asset, partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=start_offset, end_offset=end_offset, allow_nonexistent_upstream_partitions=True))


def _each_day(
    window: dg.TimeWindow, run: Callable[[dt.datetime], Result], log: Callable[[dt.datetime, Result], None] | None = None,
    *, idle: Callable[[Result], bool] = lambda result: False,
) -> Result:
    """`run` for each day of the partition window, in order, the results added up; `log` each day's
    result unless the day was `idle` (a line per empty day of a long range costs more than the day)."""
    total = None
    for day in partition_days(window):
        result = run(day)
        if log and not idle(result):
            log(day, result)
        total = result if total is None else total + result
    return total


# --- features ---------------------------------------------------------------------------------------


@dg.asset(
    **_DAILY,
    **table_asset("training_features"),
    deps=[_daily_dep("book_snapshots", start_offset=-1)],
    kinds={"postgres", "numpy"},
    pool="pg_write",
    description="Order-book features per snapshot (obi, depth obi, spread, mid, micro-price, cyclic time, OFI, "
    "short return, realised volatility) from data at or before each snapshot, in training_features.",
)
def microstructure_features(
    context: dg.AssetExecutionContext, postgres: PostgresResource, cold_storage: ColdStorageResource
) -> dg.MaterializeResult:
    cold = cold_storage.store()
    total = _each_day(
        context.partition_time_window, lambda day: write_day_features(postgres.manager, day, cold),
        lambda day, r: context.log.info(f"features {day:%Y-%m-%d}: {r.written}; book states {r.states}; "
                                        f"{len(r.gaps)} gaps{''.join(f'; {g}' for g in r.gaps[:_LISTED_GAPS])}"),
        idle=lambda r: not r.symbols,
    )
    return dg.MaterializeResult(metadata={
        "dagster/row_count": total.written.rows, **total.written.counts(),
        "skipped_crossed_books": total.states["crossed"], "skipped_one_sided_books": total.states["one_sided"],
        "locked_books": total.states["locked"],
        "symbols": ", ".join(sorted(total.symbols)) or "none",
        "windows": f"ofi {FEATURES.ofi_window}, return {FEATURES.return_horizon}, volatility {FEATURES.vol_window}",
        "gap_tolerance": str(FEATURES.gap_tolerance),
        "gaps": len(total.gaps),
        "gap_spans": dg.MetadataValue.md(_gap_list(total.gaps)),
        "longest_gap": str(max((g.end - g.start for g in total.gaps), default="none")),
    })


_LISTED_GAPS = 20


def _gap_list(gaps) -> str:
    lines = [f"- {gap}" for gap in gaps[:_LISTED_GAPS]]
    if len(gaps) > _LISTED_GAPS:
        lines.append(f"- ... and {len(gaps) - _LISTED_GAPS} more")
    return "\n".join(lines) or "none"


# --- labels -----------------------------------------------------------------------------------------


class LabelsConfig(dg.Config):
    """Labels gross of costs, or net: a horizontal barrier then counts only beyond the round trip's cost."""

    net_of_costs: bool = Field(default=False, description="require a move beyond the round-trip cost")
    taker_fee: float = Field(default=0.0005, ge=0, description="taker fee per side (Binance regular tier 0.05%)")
    spread_share: float = Field(default=0.5, ge=0, description="share of the relative spread counted as cost")


@dg.asset(
    **_DAILY,
    **table_asset("training_features"),
    # The mid-price path is read from the book of D-1 (the volatility warm-up) to D+1; the same day's
    # features come first so that every row the labels write has its features (and the dataset both).
    deps=[_daily_dep("book_snapshots", start_offset=-1, end_offset=1), _daily_dep("microstructure_features")],
    kinds={"postgres", "numpy"},
    pool="pg_write",
    description=f"Triple-barrier labels (AFML ch. 3) on the book's mid price: barriers at +/-{LABELS.pt_sl} x the "
    f"EWM std of {LABELS.horizon} returns, vertical barrier {LABELS.horizon}; paths into a gap are labelled 'gap' "
    "(no label); completes the previous day's pending labels.",
)
def triple_barrier_labels(
    context: dg.AssetExecutionContext, config: LabelsConfig, postgres: PostgresResource,
    cold_storage: ColdStorageResource,
) -> dg.MaterializeResult:
    cold = cold_storage.store()
    costs = RoundTripCost(config.taker_fee, config.spread_share) if config.net_of_costs else None
    settings = replace(LABELS, costs=costs)
    # A day's pending rows are completed by the next day of the same run: the total's are the last day's.
    total = _each_day(
        context.partition_time_window, lambda day: write_day_labels(postgres.manager, day, cold, settings),
        lambda day, r: context.log.info(f"labels {day:%Y-%m-%d}: {r.labels}, {r.gap} blocked by a gap, "
                                        f"{r.pending} pending, {r.completed_previous_day} of the previous day completed"),
        idle=lambda r: not r.written.rows,
    )
    return dg.MaterializeResult(metadata={
        "labelled": sum(total.labels.values()),
        "labels": ", ".join(f"{n:,} {barrier}" for barrier, n in total.labels.items()),
        "label_distribution": dg.MetadataValue.md(_distribution_table(total.labels, total.gap)),
        "pending_next_day": total.pending,
        "blocked_by_gap": total.gap,
        "skipped_without_vol_target": total.skipped,
        "completed_previous_day": total.completed_previous_day,
        "dagster/row_count": total.written.rows, **total.written.counts(),
        "horizon": str(LABELS.horizon), "pt_sl": str(LABELS.pt_sl), "min_ret": LABELS.min_ret,
        "gap_tolerance": str(LABELS.gap_tolerance),
        "cost_model": costs.describe() if costs else "gross (barriers ignore costs)",
    })


def _distribution_table(labels: dict[str, int], gap: int) -> str:
    """Rows per label and rows blocked by a gap (no label), with their shares of all of them."""
    counts = {**labels, GAP: gap}
    total = sum(counts.values()) or 1
    names = {"upper": "1 (upper)", "lower": "-1 (lower)", "vertical": "0 (vertical)", GAP: "none (gap)"}
    lines = ["| label | rows | share |", "|---|---:|---:|"]
    lines += [f"| {names[k]} | {v:,} | {v / total:.1%} |" for k, v in counts.items()]
    return "\n".join(lines)


# --- training dataset -------------------------------------------------------------------------------


class TrainingDatasetConfig(dg.Config):
    output_dir: str = Field(default="", description="dataset root; empty: <state dir>/datasets")


@dg.asset(
    **_DAILY,
    owners=[OWNER],
    tags={"tier": "dataset"},
    deps=[_daily_dep(triple_barrier_labels, end_offset=1)],
    kinds={"parquet", "postgres"},
    description="Features joined with their labels, one Parquet file per UTC day, Hive-partitioned by date "
    "(only labelled rows; rows waiting for the next day's prices come when it is materialised).",
)
def training_dataset(
    context: dg.AssetExecutionContext, config: TrainingDatasetConfig, postgres: PostgresResource,
    cold_storage: ColdStorageResource,
) -> dg.MaterializeResult:
    root = Path(config.output_dir) if config.output_dir else settings.state_dir() / "datasets"
    cold = cold_storage.store()
    total = _each_day(
        context.partition_time_window, lambda day: write_dataset_day(postgres.manager, day, root, cold),
        lambda day, r: context.log.info(f"dataset {day:%Y-%m-%d}: {r.rows} rows -> "
                                        f"{r.files[0] if r.files else 'no file'} ({r.pending} waiting for labels)"),
    )
    return dg.MaterializeResult(metadata={
        "dagster/row_count": total.rows, "rows_waiting_for_labels": total.pending,
        "cost_model": total.cost_model(),
        "dataset": dg.MetadataValue.path(str(root / "training_dataset")),
        "files": dg.MetadataValue.md("\n".join(f"- `{p.relative_to(root)}`" for p in total.files)),
    })


# --- asset checks -----------------------------------------------------------------------------------


def _check_window(context: dg.AssetCheckExecutionContext) -> dg.TimeWindow:
    return context.op_execution_context.partition_time_window


@dg.asset_check(asset=microstructure_features, partitions_def=daily_partitions, blocking=True)
def features_required_not_null(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult:
    """Every feature row of the days has mid, micro-price, obi, depth obi, spread and the cyclic time."""
    window = _check_window(context)
    total, null_counts = repository.count_missing_required(postgres.manager, window.start, window.end)
    return dg.AssetCheckResult(
        passed=not null_counts, metadata={"rows_checked": total, "null_counts": null_counts or "none"}
    )


@dg.asset_check(asset=microstructure_features, partitions_def=daily_partitions, blocking=True)
def features_in_range(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """obi and depth obi lie in [-1, 1]; spread_pct >= 0."""
    window = _check_window(context)
    total, bad_obi, bad_spread = repository.count_out_of_range(postgres.manager, window.start, window.end)
    return dg.AssetCheckResult(
        passed=bad_obi == 0 and bad_spread == 0,
        metadata={"rows_checked": total, "obi_out_of_range": bad_obi, "negative_spread": bad_spread},
    )


_LOOK_AHEAD_SAMPLES = 16


@dg.asset_check(asset=microstructure_features, partitions_def=daily_partitions, blocking=True)
def features_no_look_ahead(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource, cold_storage: ColdStorageResource
) -> dg.AssetCheckResult:
    """Stored features equal features recomputed from the snapshots at or before their timestamp only.

    At sampled rows of each day the book is cut right after the row's timestamp and the features are
    computed again; a feature that read later data cannot come out the same.
    """
    cold = cold_storage.store()
    result = _each_day(
        _check_window(context), lambda day: check_day_look_ahead(postgres.manager, day, _LOOK_AHEAD_SAMPLES, cold)
    )
    return dg.AssetCheckResult(
        passed=not result.mismatches,
        metadata={"rows_checked": result.checked, "mismatches": len(result.mismatches),
                  "first_mismatches": dg.MetadataValue.md("\n".join(f"- {m}" for m in result.mismatches[:10]) or "none"),
                  "not_checked_book_missing": ", ".join(result.missing_book) or "none"},
    )


@dg.asset_check(asset=triple_barrier_labels, partitions_def=daily_partitions, blocking=True)
def labels_consistent(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """Labels match their barrier (rows blocked by a gap have none), end at or after their event, and
    their distribution is reported; rows blocked by a gap are their own state, neither labelled nor pending."""
    window = _check_window(context)
    counts, inconsistent = repository.count_labels(postgres.manager, window.start, window.end)
    distribution = {barrier: counts.get(barrier, 0) for barrier in BARRIERS}
    return dg.AssetCheckResult(
        passed=inconsistent == 0,
        metadata={"label_distribution": dg.MetadataValue.md(_distribution_table(distribution, counts.get(GAP, 0))),
                  "pending": counts.get("pending", 0), "blocked_by_gap": counts.get(GAP, 0),
                  "inconsistent": inconsistent},
    )


# --- job -------------------------------------------------------------------------------------------

training_data_job = dg.define_asset_job(
    "training_data_job",
    selection=dg.AssetSelection.assets(microstructure_features, triple_barrier_labels, training_dataset),
    description="Features, labels and the training dataset for a range of UTC days, in one run.",
)


# A day's training data is expected by 03:00 UTC the next day (its inputs by 01:00); the check fails otherwise.
training_data_freshness = dg.build_time_partition_freshness_checks(
    assets=[microstructure_features, triple_barrier_labels, training_dataset], deadline_cron="0 3 * * *",
    timezone="UTC",
)
training_data_freshness_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=training_data_freshness, name="training_data_freshness_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
