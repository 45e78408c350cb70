"""Training data: microstructure features and triple-barrier labels in `training_features`, and the
training dataset as Hive-partitioned Parquet. They replace the legacy Close > Open / trade-outcome labels.

Partitions are UTC days, the same as `book_snapshots`. Across day boundaries:
- the features of day D read D's snapshots plus the last `FEATURE_READ_WARMUP` of D-1, so the
  windowed features of D's first rows see the previous day's book;
- the labels of day D follow each event's mid-price path into D+1 when D+1's features exist; an
  event whose path is not complete yet stays unlabelled (label NULL, labels_computed_at set) and is
  labelled when D+1 is materialised, because every run re-evaluates the previous day's unlabelled rows;
- the dataset of D holds D's labelled rows, so it depends on the labels of D and of D+1.
"""

import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field
from sqlalchemy import text

from winiswin_pipelines import settings
from winiswin_pipelines.db.bulk import EMPTY_RESULT
from winiswin_pipelines.defs.partitions import DAY, daily_partitions, partition_days, range_tags
from winiswin_pipelines.features import BOOK_STATES
from winiswin_pipelines.features.store import (
    FEATURES,
    LABELS,
    REQUIRED_FEATURES,
    look_ahead_difference,
    read_day_book,
    stored_features,
    symbols_between,
    write_dataset_day,
    write_day_features,
    write_day_labels,
)
from winiswin_pipelines.resources import PostgresResource

# Every training-data asset: a UTC day per partition, a range of days in one run when backfilling.
_DAILY = {"group_name": "training_data", "partitions_def": daily_partitions,
          "backfill_policy": dg.BackfillPolicy.single_run()}


def _daily_dep(asset, *, start_offset: int = 0, end_offset: int = 0) -> dg.AssetDep:
    """Depends on `asset`'s days from `start_offset` to `end_offset` around the partition's day."""
    return dg.AssetDep(asset, partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=start_offset, end_offset=end_offset, allow_nonexistent_upstream_partitions=True))


# --- features ---------------------------------------------------------------------------------------


@dg.asset(
    **_DAILY,
    deps=[_daily_dep("book_snapshots", start_offset=-1)],
    kinds={"postgres", "numpy"},
    pool="pg_write",
    description="Order-book features per snapshot (obi, depth obi, spread, mid, micro-price, cyclic time, OFI, "
    "short return, realised volatility) from data at or before each snapshot, in training_features.",
)
def microstructure_features(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    manager = postgres.manager
    total, states, symbols = EMPTY_RESULT, dict.fromkeys(BOOK_STATES, 0), set()
    for day in partition_days(context.partition_time_window):
        result = write_day_features(manager, day)
        context.log.info(f"features {day:%Y-%m-%d}: {result.written}; book states {result.states}")
        total += result.written
        states = {state: states[state] + result.states[state] for state in BOOK_STATES}
        symbols.update(result.symbols)
    return dg.MaterializeResult(metadata={
        "rows": total.staged, "inserted": total.inserted, "updated": total.updated, "unchanged": total.unchanged,
        "skipped_crossed_books": states["crossed"], "skipped_one_sided_books": states["one_sided"],
        "locked_books": states["locked"],
        "symbols": ", ".join(sorted(symbols)) or "none",
        "windows": f"ofi {FEATURES.ofi_window}, return {FEATURES.return_horizon}, volatility {FEATURES.vol_window}",
    })


# --- labels -----------------------------------------------------------------------------------------


@dg.asset(
    **_DAILY,
    deps=[_daily_dep("microstructure_features", start_offset=-1)],
    kinds={"postgres", "numpy"},
    pool="pg_write",
    description=f"Triple-barrier labels (AFML ch. 3) on the mid price: barriers at +/-{LABELS.pt_sl} x the EWM "
    f"std of {LABELS.horizon} returns, vertical barrier {LABELS.horizon}; completes the previous day's pending labels.",
)
def triple_barrier_labels(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    counts, pending, skipped, completed = dict.fromkeys(("upper", "lower", "vertical"), 0), 0, 0, 0
    total = EMPTY_RESULT
    for day in partition_days(context.partition_time_window):
        result = write_day_labels(postgres.manager, day)
        context.log.info(f"labels {day:%Y-%m-%d}: {result.labels}, {result.pending} pending, "
                         f"{result.completed_previous_day} of the previous day completed")
        counts = {k: counts[k] + result.labels[k] for k in counts}
        completed += result.completed_previous_day
        skipped += result.skipped
        total += result.written
        # A day's pending rows are completed by the next day of the same run.
        pending = result.pending
    labelled = sum(counts.values())
    return dg.MaterializeResult(metadata={
        "labelled": labelled,
        "labels": ", ".join(f"{n:,} {barrier}" for barrier, n in counts.items()),
        "label_distribution": dg.MetadataValue.md(_distribution_table(counts)),
        "pending_next_day": pending,
        "skipped_without_vol_target": skipped,
        "completed_previous_day": completed,
        "rows": total.staged, "updated": total.updated + total.inserted, "unchanged": total.unchanged,
        "horizon": str(LABELS.horizon), "pt_sl": str(LABELS.pt_sl), "min_ret": LABELS.min_ret,
    })


def _distribution_table(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    names = {"upper": "1 (upper)", "lower": "-1 (lower)", "vertical": "0 (vertical)"}
    lines = ["| label | rows | share |", "|---|---:|---:|"]
    lines += [f"| {names[k]} | {v:,} | {v / total:.1%} |" for k, v in counts.items()]
    return "\n".join(lines)


# --- training dataset -------------------------------------------------------------------------------


class TrainingDatasetConfig(dg.Config):
    output_dir: str = Field(default="", description="dataset root; empty: <state dir>/datasets")


def dataset_root(config: TrainingDatasetConfig) -> Path:
    return Path(config.output_dir) if config.output_dir else settings.state_dir() / "datasets"


@dg.asset(
    **_DAILY,
    deps=[_daily_dep(triple_barrier_labels, end_offset=1)],
    kinds={"parquet", "postgres"},
    description="Features joined with their labels, one Parquet file per UTC day, Hive-partitioned by date "
    "(only labelled rows; rows waiting for the next day's prices come when it is materialised).",
)
def training_dataset(
    context: dg.AssetExecutionContext, config: TrainingDatasetConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    root = dataset_root(config)
    files, rows, pending = [], 0, 0
    for day in partition_days(context.partition_time_window):
        path, written, waiting = write_dataset_day(postgres.manager, day, root)
        context.log.info(f"dataset {day:%Y-%m-%d}: {written} rows -> {path} ({waiting} waiting for labels)")
        files += [path] if written else []
        rows += written
        pending += waiting
    return dg.MaterializeResult(metadata={
        "rows": rows, "rows_waiting_for_labels": pending,
        "dataset": dg.MetadataValue.path(str(root / "training_dataset")),
        "files": dg.MetadataValue.md("\n".join(f"- `{p.relative_to(root)}`" for p in files)),
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
    nulls = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL)" for c in REQUIRED_FEATURES)
    with postgres.manager.engine.connect() as conn:
        total, *counts = conn.execute(
            text(f"SELECT count(*), {nulls} FROM training_features WHERE ts >= :start AND ts < :end "
                 "AND features_computed_at IS NOT NULL"),
            {"start": window.start, "end": window.end},
        ).one()
    null_counts = {c: n for c, n in zip(REQUIRED_FEATURES, counts, strict=True) if n}
    return dg.AssetCheckResult(passed=not null_counts, metadata={"rows": total, "null_counts": null_counts or "none"})


@dg.asset_check(asset=microstructure_features, partitions_def=daily_partitions, blocking=True)
def features_in_range(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """obi and depth obi lie in [-1, 1]; spread_pct >= 0."""
    window = _check_window(context)
    with postgres.manager.engine.connect() as conn:
        total, bad_obi, bad_spread = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE obi NOT BETWEEN -1 AND 1 OR obi_depth NOT BETWEEN -1 AND 1), "
                 "count(*) FILTER (WHERE spread_pct < 0) FROM training_features WHERE ts >= :start AND ts < :end"),
            {"start": window.start, "end": window.end},
        ).one()
    return dg.AssetCheckResult(
        passed=bad_obi == 0 and bad_spread == 0,
        metadata={"rows": total, "obi_out_of_range": bad_obi, "negative_spread": bad_spread},
    )


_LOOK_AHEAD_SAMPLES = 16


@dg.asset_check(asset=microstructure_features, partitions_def=daily_partitions, blocking=True)
def features_no_look_ahead(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """Stored features equal features recomputed from the snapshots at or before their timestamp only.

    At sampled rows of each day the book is cut right after the row's timestamp and the features are
    computed again; a feature that read later data cannot come out the same.
    """
    window = _check_window(context)
    checked, mismatches, archived = 0, [], []
    with postgres.manager.engine.connect() as conn:
        for day in partition_days(window):
            for symbol in symbols_between(conn, "training_features", "ts", day, day + DAY):
                stored = stored_features(conn, symbol, day)
                book = read_day_book(conn, symbol, day)
                if stored.empty or not (book.ts >= pd.Timestamp(day).value).any():
                    archived += [f"{symbol} {day:%Y-%m-%d}"] if not stored.empty else []
                    continue  # no snapshots left to recompute from (the day's book was archived)
                picks = np.unique(np.linspace(0, len(stored) - 1, _LOOK_AHEAD_SAMPLES).round().astype(int))
                for row in stored.iloc[picks].itertuples(index=False):
                    checked += 1
                    if difference := look_ahead_difference(book, day, row):
                        mismatches.append(f"{symbol} {row.ts:%Y-%m-%d %H:%M:%S.%f}: {difference}")
    return dg.AssetCheckResult(
        passed=not mismatches,
        metadata={"rows_checked": checked, "mismatches": len(mismatches),
                  "first_mismatches": dg.MetadataValue.md("\n".join(f"- {m}" for m in mismatches[:10]) or "none"),
                  "not_checked_book_archived": ", ".join(archived) or "none"},
    )


@dg.asset_check(asset=triple_barrier_labels, partitions_def=daily_partitions, blocking=True)
def labels_consistent(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """Labels match their barrier, end at or after their event, and their distribution is reported."""
    window = _check_window(context)
    with postgres.manager.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(label_barrier, 'pending'), count(*), count(*) FILTER (WHERE NOT ("
                "(label_barrier = 'upper' AND label = 1) OR (label_barrier = 'lower' AND label = -1) OR "
                "(label_barrier = 'vertical' AND label = 0) OR (label_barrier IS NULL AND label IS NULL)) "
                "OR label_t1 < ts) FROM training_features WHERE ts >= :start AND ts < :end "
                "AND features_computed_at IS NOT NULL GROUP BY 1"
            ),
            {"start": window.start, "end": window.end},
        ).all()
    counts = {barrier: n for barrier, n, _ in rows}
    inconsistent = sum(bad for _, _, bad in rows)
    distribution = {b: counts.get(b, 0) for b in ("upper", "lower", "vertical")}
    return dg.AssetCheckResult(
        passed=inconsistent == 0,
        metadata={"label_distribution": dg.MetadataValue.md(_distribution_table(distribution)),
                  "pending": counts.get("pending", 0), "inconsistent": inconsistent},
    )


# --- jobs, schedules, definitions -------------------------------------------------------------------

training_data_job = dg.define_asset_job(
    "training_data_job",
    selection=dg.AssetSelection.assets(microstructure_features, triple_barrier_labels, training_dataset),
    description="Features, labels and the training dataset for a range of UTC days, in one run.",
)


@dg.schedule(job=training_data_job, cron_schedule="0 1 * * *", execution_timezone="UTC")
def training_data_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """At 01:00 UTC, after the market-data import (00:20): yesterday, and the day before, whose pending
    labels need yesterday's prices and whose dataset file then gains them."""
    yesterday = (context.scheduled_execution_time.astimezone(dt.UTC) - DAY).date()
    first = yesterday - dt.timedelta(days=1)
    return dg.RunRequest(
        run_key=f"training-data-{first}..{yesterday}",
        tags=range_tags(first, yesterday),
    )


defs = dg.Definitions(
    assets=[microstructure_features, triple_barrier_labels, training_dataset],
    asset_checks=[features_required_not_null, features_in_range, features_no_look_ahead, labels_consistent],
    jobs=[training_data_job],
    schedules=[training_data_daily],
)
