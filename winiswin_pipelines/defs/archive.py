"""Archival in Dagster: one daily-partitioned cold-copy asset per growing table, a check that the
manifest and the storage agree, the 24-hourly catch-up schedule and a restore job.

The assets call `archive_old_data`, the same code as the plain function. A partition is one UTC
day; a day inside the retention is never archived (its asset is simply not materialized).
"""

import datetime as dt
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from winiswin_pipelines.archive import archive_old_data, repository, restore_days
from winiswin_pipelines.archive.archiver import (
    ALREADY_ARCHIVED,
    ARCHIVED,
    DEFAULT_DAYS_TO_KEEP,
    EMPTY,
    DayResult,
    days_to_archive,
    first_kept_day,
)
from winiswin_pipelines.archive.parquet import day_prefix
from winiswin_pipelines.archive.tables import ARCHIVED_TABLES, archived_table
from winiswin_pipelines.defs.partitions import daily_partitions, run_days
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource


def archive_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["archive", table])


class ArchiveConfig(dg.Config):
    days_to_keep: int = Field(default=DEFAULT_DAYS_TO_KEEP, description="days kept hot in PostgreSQL")
    as_of: str = Field(default="", description="ISO date-time (UTC) the retention counts back from; empty: now")

    def as_of_datetime(self) -> dt.datetime:
        if not self.as_of:
            return dt.datetime.now(dt.UTC)
        moment = dt.datetime.fromisoformat(self.as_of)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _day_metadata(result: DayResult) -> dict[str, dg.MetadataValue]:
    return {
        "status": dg.MetadataValue.text(result.status),
        "dagster/row_count": dg.MetadataValue.int(result.rows),
        "bytes": dg.MetadataValue.int(result.bytes),
        "compression_ratio": dg.MetadataValue.float(result.compression_ratio or 0.0),
        "uri": dg.MetadataValue.url(result.uri or ""),
        "checksum_sha256": dg.MetadataValue.text(result.checksum or ""),
        "duration_s": dg.MetadataValue.float(round(result.duration_s, 3)),
        "removed_from_postgres_by": dg.MetadataValue.text(result.removed_by or ""),
    }


def _table_metadata(results: list[DayResult], before: int, after: int) -> dict[str, dg.MetadataValue]:
    archived = [r for r in results if r.status == ARCHIVED]
    metadata = _day_metadata(results[0]) if len(results) == 1 else {
        "days_archived": dg.MetadataValue.int(len(archived)),
        "dagster/row_count": dg.MetadataValue.int(sum(r.rows for r in archived)),
        "bytes": dg.MetadataValue.int(sum(r.bytes for r in archived)),
        "duration_s": dg.MetadataValue.float(round(sum(r.duration_s for r in results), 3)),
        "days": dg.MetadataValue.md("\n".join(f"- {r.day}: {r.status}, {r.rows:,} rows, {r.uri}" for r in results)),
    }
    return {
        **metadata,
        "table_bytes_on_disk_before": dg.MetadataValue.int(before),
        "table_bytes_on_disk_after": dg.MetadataValue.int(after),
    }


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            archive_key(table), skippable=True, group_name="archive", kinds={"parquet", "s3", "postgres"},
            description=f"UTC days of `{table}` older than the retention, as verified Parquet in cold storage "
                        "(the hot rows removed after verification).",
        )
        for table in ARCHIVED_TABLES
    ],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
    pool="archive",
)
def cold_archive(
    context: dg.AssetExecutionContext, config: ArchiveConfig, postgres: PostgresResource,
    cold_storage: ColdStorageResource,
) -> Iterator[dg.MaterializeResult]:
    as_of = config.as_of_datetime()
    keep_from = first_kept_day(config.days_to_keep, as_of)
    days = [dt.date.fromisoformat(key) for key in context.partition_keys]
    old_days = [day for day in days if day < keep_from]
    if len(old_days) < len(days):
        context.log.info(f"{len(days) - len(old_days)} day(s) from {keep_from} on are inside the retention: kept hot")
    store, failures = cold_storage.store(), []
    for table in ARCHIVED_TABLES:
        if archive_key(table) not in context.selected_asset_keys or not old_days:
            continue
        summary = archive_old_data(
            config.days_to_keep, manager=postgres.manager, store=store, as_of=as_of, tables=[table], days=old_days,
            progress=lambda step, name, day, details: context.log.info(f"{name} {day}: {step} {details}"),
        )
        results = summary.results
        if not results and len(old_days) == 1:  # nothing hot: report what the manifest holds
            results = [_already(postgres, table, old_days[0])]
        incomplete = [r for r in results if r.status not in (ARCHIVED, ALREADY_ARCHIVED, EMPTY)]
        failures += incomplete
        if not results or incomplete:  # not materialized: the run fails and the schedule retries
            continue
        if len(days) > 1:
            for result in results:
                context.log_event(dg.AssetObservation(archive_key(table), partition=result.day.isoformat(),
                                                      metadata=_day_metadata(result)))
        yield dg.MaterializeResult(
            asset_key=archive_key(table),
            metadata=_table_metadata(results, summary.size_before[table], summary.size_after[table]),
        )
    if failures:
        raise dg.Failure(
            description=f"{len(failures)} table-day(s) not archived; their rows are still in PostgreSQL",
            metadata={"failures": dg.MetadataValue.md("\n".join(f"- {r.table} {r.day}: {r.status}: {r.error}"
                                                                 for r in failures))},
        )


def _already(postgres: PostgresResource, table: str, day: dt.date) -> DayResult:
    """What an already archived (or empty) day looks like when its partition is materialized again."""
    entry = repository.manifest_entry(postgres.manager, table, day)
    if entry is None or entry.status != repository.ARCHIVED:
        return DayResult(table, day, EMPTY)
    return DayResult(table, day, ALREADY_ARCHIVED, rows=entry.rows or 0, bytes=entry.bytes or 0,
                     arrow_bytes=entry.details.get("arrow_bytes", 0), uri=entry.uri, checksum=entry.checksum)


def _manifest_check(table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=archive_key(table), name="manifest_matches_storage")
    def check(
        context: dg.AssetCheckExecutionContext, postgres: PostgresResource, cold_storage: ColdStorageResource
    ) -> dg.AssetCheckResult:
        """Every object the manifest lists for the run's days exists with its recorded size and
        SHA-256, and no object of those days is missing from the manifest."""
        store = cold_storage.store()
        first, last = run_days(context) or (dt.date.min, dt.date.max)
        entries = repository.manifest_entries(
            postgres.manager, table, first, last, {repository.ARCHIVED, repository.VERIFIED, repository.RESTORED}
        )
        problems, listed = [], set()
        for entry in entries:
            for part in entry.parts:
                listed.add(part["key"])
                stored = store.head(part["key"])
                if stored is None:
                    problems.append(f"{part['uri']}: missing")
                elif (stored.size, stored.sha256) != (part["size"], part["sha256"]):
                    problems.append(f"{part['uri']}: size/SHA-256 {stored.size}/{stored.sha256} in storage, "
                                    f"{part['size']}/{part['sha256']} in the manifest")
            unlisted = set(store.list_keys(day_prefix(table, entry.day) + "/")) - listed
            problems += [f"{store.uri(key)}: in storage but not in the manifest" for key in sorted(unlisted)]
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={"days_checked": len(entries), "objects_checked": len(listed),
                      "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
        )

    return check


manifest_checks = [_manifest_check(table) for table in ARCHIVED_TABLES]


archive_job = dg.define_asset_job(
    "archive_job", selection=dg.AssetSelection.assets(*[archive_key(t) for t in ARCHIVED_TABLES]),
    description="Archive one UTC day of every growing table to cold storage.",
)


@dg.schedule(job=archive_job, cron_schedule="15 0 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def archive_every_24_hours(context: dg.ScheduleEvaluationContext, postgres: PostgresResource):
    """Every eligible day not yet archived gets a run, so days missed while down are caught up."""
    keep_from = first_kept_day(DEFAULT_DAYS_TO_KEEP, context.scheduled_execution_time)
    first_partition = daily_partitions.start.date()
    days = days_to_archive(postgres.manager, keep_from)
    too_old = [day for day in days if day < first_partition]
    if too_old:
        context.log.warning(f"{len(too_old)} day(s) before {first_partition} need archive_old_data() directly")
    tick = context.scheduled_execution_time.date().isoformat()
    requests = [dg.RunRequest(partition_key=day.isoformat(), run_key=f"archive-{day}-at-{tick}")
                for day in days if day >= first_partition]
    return requests or dg.SkipReason(f"no day before {keep_from} has rows left in PostgreSQL")


class RestoreConfig(dg.Config):
    table: str = Field(description="archived table to restore, e.g. book_snapshots")
    first_day: str = Field(description="first UTC day (YYYY-MM-DD)")
    last_day: str = Field(description="last UTC day (YYYY-MM-DD), inclusive")


@dg.op(pool="archive")
def restore_archived_days(
    context: dg.OpExecutionContext, config: RestoreConfig, postgres: PostgresResource, cold_storage: ColdStorageResource
) -> dg.Output[int]:
    """Copy archived days back into PostgreSQL by the merge rule (hot values win, archived values fill hot
    NULLs), so re-running changes nothing."""
    table = archived_table(config.table)
    days = restore_days(
        postgres.manager, cold_storage.store(), table,
        dt.date.fromisoformat(config.first_day), dt.date.fromisoformat(config.last_day),
        on_day=lambda day: context.log.info(f"{day.table} {day.day}: {day.inserted:,} of {day.rows_in_copy:,} rows restored"),
    )
    inserted = sum(day.inserted for day in days)
    return dg.Output(inserted, metadata={"days": len(days), "rows_inserted": inserted,
                                         "rows_filled": sum(day.filled for day in days),
                                         "rows_in_copies": sum(day.rows_in_copy for day in days)})


@dg.job(description="Restore a table's archived days from cold storage into PostgreSQL (idempotent).")
def restore_archive_job() -> None:
    restore_archived_days()
