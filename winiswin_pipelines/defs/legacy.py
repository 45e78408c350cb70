"""Dagster: the legacy migration, one partition per trade store of the legacy folder.

The folder is the `legacy_folder` resource (`WINISWIN_LEGACY_DIR`, default `data/` in the working
directory). Its stores become partitions of `legacy_store_partitions` when they are discovered: by
the `legacy_store_discovery` sensor, `scripts/migrate_system.py` or `make run`; loading the
definitions reads nothing. `legacy_trades` migrates the selected stores into `trades` /
`trade_partial_exits` / `legacy_quarantine`; the blocking check `legacy_accounting` proves, against
PostgreSQL, that every record read is there.

    dagster asset materialize -m winiswin_pipelines.definitions --select legacy_trades --partition trades.jsonl
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from pydantic import Field

from winiswin_pipelines.catalog import table_asset
from winiswin_pipelines.defs.partitions import legacy_store_partitions, new_legacy_stores
from winiswin_pipelines.legacy.accounting import SourceReport
from winiswin_pipelines.legacy.links import LinkSummary
from winiswin_pipelines.legacy.load import BATCH_SIZE, Verification, link_partial_exits, migrate_store, verify_store
from winiswin_pipelines.legacy.records import LegacySourceError
from winiswin_pipelines.legacy.sniff import SkippedFile, Store, legacy_files, sniff_file, store_for
from winiswin_pipelines.resources import ColdStorageResource, LegacyFolderResource, PostgresResource

_PROGRESS_EVERY_SECONDS = 10.0


class LegacyMigrationConfig(dg.Config):
    naive_timezone: str = Field(
        default="UTC", description="IANA timezone assumed for naive legacy timestamps (recorded in trades.origin)"
    )
    batch_size: int = Field(default=BATCH_SIZE, description="records per COPY + upsert batch")
    force: bool = Field(default=False, description="migrate a store whose bytes were migrated before again")


@dg.asset(
    **table_asset("trades"),
    partitions_def=legacy_store_partitions,
    group_name="legacy",
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"python", "postgres"},
    pool="pg_write",
    description="Legacy trade stores of the legacy folder migrated into trades, trade_partial_exits and "
    "legacy_quarantine (one partition per store).",
)
def legacy_trades(
    context: dg.AssetExecutionContext, config: LegacyMigrationConfig, postgres: PostgresResource,
    legacy_folder: LegacyFolderResource, cold_storage: ColdStorageResource,
) -> dg.MaterializeResult:
    reports, cold = [], cold_storage.store()
    for key in context.partition_keys:
        store = store_for(legacy_folder.path, key)
        context.log.info(f"migrating {store.path} ({store.format.value}) as {store.source}")
        report = migrate_store(
            postgres.manager, store, naive_timezone=config.naive_timezone, batch_size=config.batch_size,
            progress=_progress_logger(context, store), cold=cold, force=config.force,
        )
        context.log.info(report.summary_line())
        reports.append(report)
    links = link_partial_exits(postgres.manager)
    context.log.info(links.summary_line())
    return dg.MaterializeResult(metadata=migration_metadata(reports, links))


@dg.asset_check(
    asset=legacy_trades,
    blocking=True,
    description="For each store: records in the file = records read = inserted + updated + unchanged + "
    "duplicates + quarantined, and every migrated or quarantined record is in PostgreSQL or, archived since, "
    "in cold storage.",
)
def legacy_accounting(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource, legacy_folder: LegacyFolderResource,
    cold_storage: ColdStorageResource,
) -> dg.AssetCheckResult:
    cold = cold_storage.store()
    results = [verify_store(postgres.manager, store_for(legacy_folder.path, key), cold=cold)
               for key in _partition_keys(context)]
    return dg.AssetCheckResult(passed=bool(results) and all(r.passed for r in results),
                               metadata=verification_metadata(results))


def _partition_keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    if context.has_partition_key:  # also when the check runs alone, for one partition
        return [context.partition_key]
    return context.partition_keys if context.has_partition_key_range else []


@dg.sensor(minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Adds a legacy_trades partition for every trade store that appears in the legacy folder.")
def legacy_store_discovery(
    context: dg.SensorEvaluationContext, legacy_folder: LegacyFolderResource
) -> dg.SensorResult | dg.SkipReason:
    # The cursor remembers each file's size and modification time: only new or changed files are sniffed.
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    try:
        root, paths = legacy_files(legacy_folder.path)
    except LegacySourceError as missing:
        return dg.SkipReason(str(missing))
    current = {path.relative_to(root).as_posix(): _signature(path) for path in paths}
    found = [sniff_file(root, root / relpath) for relpath, signature in current.items() if seen.get(relpath) != signature]
    stores = [store.relpath for store in found if isinstance(store, Store)]
    for skipped in found:
        if isinstance(skipped, SkippedFile):
            context.log.info(f"skipped {skipped.relpath}: {skipped.reason}")
    new = new_legacy_stores(context.instance, stores)
    if new:
        context.log.info(f"new legacy stores: {', '.join(new)}")
    return dg.SensorResult(
        dynamic_partitions_requests=[legacy_store_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps(current),
    )


def _signature(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _progress_logger(context: dg.AssetExecutionContext, store: Store) -> Callable[[int, int], None]:
    total_bytes = store.path.stat().st_size
    done = {"records": 0, "bytes": 0, "logged": time.monotonic()}

    def progress(records: int, size: int) -> None:
        done["records"] += records
        done["bytes"] += size
        if time.monotonic() - done["logged"] >= _PROGRESS_EVERY_SECONDS:
            done["logged"] = time.monotonic()
            share = f" ({done['bytes'] / total_bytes:.0%} of the file)" if done["bytes"] and total_bytes else ""
            context.log.info(f"{store.relpath}: {done['records']:,} records read{share}")

    return progress


def migration_metadata(reports: list[SourceReport], links: LinkSummary | None = None) -> dict[str, dg.MetadataValue]:
    totals = {name: sum(getattr(r, name) for r in reports) for name in
              ("read", "inserted", "updated", "unchanged", "duplicates", "quarantined")}
    seconds = sum(r.seconds for r in reports)
    metadata: dict[str, dg.MetadataValue] = {
        f"records_{name}": dg.MetadataValue.int(value) for name, value in totals.items()
    }
    metadata["dagster/row_count"] = dg.MetadataValue.int(totals["inserted"] + totals["updated"] + totals["unchanged"])
    metadata["balanced"] = dg.MetadataValue.bool(all(r.balanced for r in reports))
    metadata["records_per_second"] = dg.MetadataValue.float(round(totals["read"] / seconds, 1) if seconds else 0.0)
    metadata["per_source"] = dg.MetadataValue.md(_sources_table(reports))
    metadata["cold_copies"] = dg.MetadataValue.json(
        {r.file: {"sha256": r.sha256, "cold_uri": r.cold_uri} for r in reports if r.cold_uri})
    metadata["per_variant"] = dg.MetadataValue.md(_variants_table(reports))
    metadata["records_gone_from_files"] = dg.MetadataValue.int(sum(r.gone_total for r in reports))
    gone = [f"- `{r.file}` {entry}" for r in reports for entry in r.gone_ids[:50]]
    if gone:
        metadata["gone_from_files"] = dg.MetadataValue.md(
            "Records an earlier migration wrote that the file no longer holds; their rows are left in place.\n\n"
            + "\n".join(gone))
    metadata["summary"] = dg.MetadataValue.text("\n".join(r.summary_line() for r in reports))
    if links is not None:
        metadata.update(_links_metadata(links))
        metadata["summary"] = dg.MetadataValue.text(f"{metadata['summary'].value}\n{links.summary_line()}")
    return metadata


def _links_metadata(links: LinkSummary) -> dict[str, dg.MetadataValue]:
    unlinked = links.unlinked_lines()
    return {
        "partial_exits_linked": dg.MetadataValue.int(links.linked),
        "partial_exits_unlinked": dg.MetadataValue.int(len(unlinked)),
        "partial_exits_unlinked_why": dg.MetadataValue.md("\n".join(f"- `{line}`" for line in unlinked) or "none"),
    }


def _sources_table(reports: list[SourceReport]) -> str:
    lines = ["| source | format | read | inserted | updated | unchanged | duplicates | quarantined | time range (UTC) | "
             "confidence scale | cold copy |", "|---|---|--:|--:|--:|--:|--:|--:|---|---|---|"]
    for r in reports:
        first, last = r.time_range
        cold = f"[{r.sha256[:12]}…]({r.cold_uri})" if r.cold_uri and r.sha256 else "-"
        lines.append(
            f"| `{r.file}` | {r.format} | {r.read:,} | {r.inserted:,} | {r.updated:,} | {r.unchanged:,} | "
            f"{r.duplicates:,} | {r.quarantined:,} | {_span(first, last)} | {r.confidence_scale or 'per writer'} | "
            f"{cold}{' (skipped: migrated before)' if r.skipped else ''} |"
        )
    lines.append("\nunchanged: already stored identically (a re-run) or the same trade already migrated from another "
                 "store; duplicates: the same trade twice in one store, or an OPEN row paired with its CLOSE row; "
                 "confidence scale: decided for the whole store from its values (1.0 is 1 % in a 0..100 store), or "
                 "per writer where legacy-system.md documents it.")
    return "\n".join(lines)


def _variants_table(reports: list[SourceReport]) -> str:
    lines = ["| source | variant | read | migrated | quarantined | time range (UTC) |", "|---|---|--:|--:|--:|---|"]
    for r in reports:
        for name, stats in sorted(r.variants.items()):
            lines.append(f"| `{r.file}` | {name} | {stats.read:,} | {stats.migrated:,} | {stats.quarantined:,} | "
                         f"{_span(stats.first_time, stats.last_time)} |")
    return "\n".join(lines)


def _span(first, last) -> str:
    return f"{first:%Y-%m-%d %H:%M:%S} .. {last:%Y-%m-%d %H:%M:%S}" if first and last else "-"


def verification_metadata(results: list[Verification]) -> dict[str, dg.MetadataValue]:
    lines = ["| source | in file | read | accounted | missing in PostgreSQL | quarantine rows | held by another store | "
             "result |", "|---|--:|--:|--:|--:|--:|--:|---|"]
    for v in results:
        report = v.report
        read, accounted = (f"{report.read:,}", f"{report.accounted:,}") if report else ("-", "-")
        verdict = "passed" if v.passed else "FAILED: " + "; ".join(v.problems)
        lines.append(f"| `{v.source}` | {v.records_in_store:,} | {read} | {accounted} | {sum(v.missing.values()):,} | "
                     f"{v.quarantine_rows:,} | {v.held_by_other_stores:,} | {verdict} |")
    examples = [example for v in results for example in v.missing_examples]
    metadata = {
        "stores_verified": dg.MetadataValue.int(len(results)),
        "records_missing_in_postgres": dg.MetadataValue.int(sum(sum(v.missing.values()) for v in results)),
        "accounting": dg.MetadataValue.md("\n".join(lines)),
    }
    if examples:
        metadata["missing_examples"] = dg.MetadataValue.md("\n".join(f"- `{e}`" for e in examples))
    return metadata
