"""Archival in Dagster: one daily-partitioned cold-copy asset per growing table, a check that the
manifest and the storage agree, the 24-hourly catch-up schedule and a restore job.

The assets call `archive_old_data`, the same code as the plain function. A partition is one UTC
day; a day inside the retention (`WINISWIN_RETENTION_DAYS`, or the table's own in the run config)
is never archived. Data leaves only after it is used: a day of a table waits until every asset
reading the table has materialized that day and the next (whose warm-up reads it),
unless the run is forced; the waiting days show as observations on the archive asset, with why.
"""

import datetime as dt
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.archive import archive_old_data, repository, restore_days
from winiswin_pipelines.archive.archiver import (
    ALREADY_ARCHIVED,
    ARCHIVED,
    EMPTY,
    DayResult,
    first_kept_day,
    frees_no_disk,
)
from winiswin_pipelines.archive.parquet import day_prefix
from winiswin_pipelines.archive.tables import ARCHIVED_TABLES, archived_table
from winiswin_pipelines.catalog import table_asset
from winiswin_pipelines.defs.partitions import DAY, daily_partitions, run_days
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource


def archive_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["archive", table])


# The assets that read each table (a test holds this to the code location's asset graph): a day of
# the table leaves only once they all have materialized it.
TABLE_READERS = {
    "klines": ["backtest"],
    "book_snapshots": ["backtest", "microstructure_features", "triple_barrier_labels"],
    "training_features": ["training_dataset", "triple_barrier_labels"],
}


class ArchiveConfig(dg.Config):
    days_to_keep: int = Field(default=settings.retention_days(),
                              description="days kept hot in PostgreSQL (WINISWIN_RETENTION_DAYS, default 30)")
    days_to_keep_by_table: dict[str, int] = Field(
        default={}, description='a table\'s own retention, e.g. {"book_snapshots": 7, "trades": 365}'
    )
    force: bool = Field(default=False, description="archive days whose downstream assets have not materialized yet")
    as_of: str = Field(default="", description="ISO date-time (UTC) the retention counts back from; empty: now")

    def retention(self, table: str) -> int:
        return self.days_to_keep_by_table.get(table, self.days_to_keep)

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


class Readiness:
    """Which days of a table can leave: those every reader of the table has materialized, with the
    next day (whose warm-up reads the day)."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self._materialized: dict[str, set[str]] = {}

    def waiting_for(self, table: str, day: dt.date) -> list[str]:
        """'<asset> <days>' for every reader that has not materialized the day or the next one."""
        needed = {day.isoformat(), (day + DAY).isoformat()}
        waiting = []
        for reader in TABLE_READERS.get(table, []):
            if reader not in self._materialized:
                self._materialized[reader] = set(self.instance.get_materialized_partitions(dg.AssetKey(reader)))
            if missing := needed - self._materialized[reader]:
                waiting.append(f"{reader} {', '.join(sorted(missing))}")
        return waiting


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            archive_key(table), skippable=True, group_name="archive", kinds={"parquet", "s3", "postgres"},
            **table_asset(table, tier="cold"),
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
    days = [dt.date.fromisoformat(key) for key in context.partition_keys]
    store, manager, failures = cold_storage.store(), postgres.manager, []
    readiness = Readiness(context.instance)
    honesty = _disk_honesty(context, store, manager)
    for table in ARCHIVED_TABLES:
        if archive_key(table) not in context.selected_asset_keys:
            continue
        keep_from = first_kept_day(config.retention(table), as_of)
        old_days = [day for day in days if day < keep_from]
        if len(old_days) < len(days):
            context.log.info(f"{table}: {len(days) - len(old_days)} day(s) from {keep_from} on are inside the "
                             f"retention ({config.retention(table)} days): kept hot")
        waiting = {} if config.force else {d: w for d in old_days if (w := readiness.waiting_for(table, d))}
        for day, readers in waiting.items():
            context.log.warning(f"{table} {day}: kept hot until these have materialized: {'; '.join(readers)}")
            context.log_event(dg.AssetObservation(archive_key(table), partition=day.isoformat(), metadata={
                "status": "waiting", "waiting_for": dg.MetadataValue.md("\n".join(f"- {r}" for r in readers))}))
        ready = [day for day in old_days if day not in waiting]
        if not ready:
            continue
        summary = archive_old_data(
            config.retention(table), manager=manager, store=store, as_of=as_of, tables=[table], days=ready,
            progress=lambda step, name, day, details: context.log.info(f"{name} {day}: {step} {details}"),
        )
        results = summary.results
        if not results and len(ready) == 1:  # nothing hot: report what the manifest holds
            results = [_already(postgres, table, ready[0])]
        incomplete = [r for r in results if r.status not in (ARCHIVED, ALREADY_ARCHIVED, EMPTY)]
        failures += incomplete
        if not results or incomplete:  # not materialized: the run fails and the schedule retries
            continue
        if len(days) > 1 or waiting:
            for result in results:
                context.log_event(dg.AssetObservation(archive_key(table), partition=result.day.isoformat(),
                                                      metadata=_day_metadata(result)))
        if waiting:
            continue  # a materialization would also claim the days that wait: the observations say what left
        yield dg.MaterializeResult(
            asset_key=archive_key(table),
            metadata={**_table_metadata(results, summary.size_before[table], summary.size_after[table]),
                      **_tiers(manager, table), **honesty},
        )
    if failures:
        raise dg.Failure(
            description=f"{len(failures)} table-day(s) not archived; their rows are still in PostgreSQL",
            metadata={"failures": dg.MetadataValue.md("\n".join(f"- {r.table} {r.day}: {r.status}: {r.error}"
                                                                 for r in failures))},
        )


def _disk_honesty(context: dg.AssetExecutionContext, store, manager) -> dict[str, dg.MetadataValue]:
    if not frees_no_disk(store, manager):
        return {"frees_disk_space": dg.MetadataValue.bool(True)}
    context.log.warning("the cold store is a local folder on PostgreSQL's own filesystem: archival moves the rows "
                        "to another folder of the same disk and frees no disk space; set BUCKET_NAME (S3 / R2) or "
                        "COLD_STORAGE_DIR on another disk")
    return {"frees_disk_space": dg.MetadataValue.bool(False)}


def _tiers(manager, table: str) -> dict[str, dg.MetadataValue]:
    """How many days of the table are hot and how many cold, with their span."""
    hot = repository.hot_days(manager, ARCHIVED_TABLES[table])
    cold = [entry.day for entry in repository.manifest_entries(manager, table, dt.date.min, dt.date.max,
                                                                {repository.ARCHIVED})]
    return {"hot_days": dg.MetadataValue.text(_span(hot)), "cold_days": dg.MetadataValue.text(_span(cold))}


def _span(days: list[dt.date]) -> str:
    return f"{len(days)} ({days[0]} .. {days[-1]})" if days else "0"


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
    """Every day older than the retention with rows left in PostgreSQL gets a run, once all the
    assets reading it have materialized it, so days missed while down are caught up."""
    config = ArchiveConfig()
    first_partition = daily_partitions.start.date()
    readiness = Readiness(context.instance)
    eligible = repository.eligible_days(postgres.manager, ARCHIVED_TABLES.values(), dt.date.max)
    ready, waiting, too_old = set(), [], set()
    for table, table_days in eligible.items():
        keep_from = first_kept_day(config.retention(table), context.scheduled_execution_time)
        for day in (d for d in table_days if d < keep_from):
            if day < first_partition:
                too_old.add(day)
            elif readers := readiness.waiting_for(table, day):
                waiting.append(f"{table} {day}: waiting for {'; '.join(readers)}")
            else:
                ready.add(day)
    if too_old:
        context.log.warning(f"{len(too_old)} day(s) before {first_partition} need archive_old_data() directly")
    for line in waiting:
        context.log.info(line)
    tick = context.scheduled_execution_time.date().isoformat()
    requests = [dg.RunRequest(partition_key=day.isoformat(), run_key=f"archive-{day}-at-{tick}") for day in sorted(ready)]
    if requests:
        return requests
    return dg.SkipReason(f"{len(waiting)} table-day(s) older than the retention wait for their readers"
                         if waiting else "no day older than the retention has rows left in PostgreSQL")


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
