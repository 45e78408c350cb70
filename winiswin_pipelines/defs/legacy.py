"""Dagster: the legacy migration, one partition per trade store found in the legacy folder.

The folder is `WINISWIN_LEGACY_DIR` (default `data/` in the working directory); its stores are
discovered from their content when the definitions load. `legacy_trades` migrates the selected
stores into `trades` / `trade_partial_exits` / `legacy_quarantine`; the blocking check
`legacy_accounting` proves, against PostgreSQL, that every record read is there.

    dagster asset materialize -m winiswin_pipelines.definitions --select legacy_trades --partition trades.jsonl
"""

import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.legacy.accounting import SourceReport
from winiswin_pipelines.legacy.load import BATCH_SIZE, Verification, migrate_store, verify_store
from winiswin_pipelines.legacy.records import LegacySourceError
from winiswin_pipelines.legacy.sniff import SkippedFile, Store, discover_stores, store_for
from winiswin_pipelines.resources import PostgresResource

_PROGRESS_EVERY_SECONDS = 10.0


class LegacyMigrationConfig(dg.Config):
    naive_timezone: str = Field(
        default="UTC", description="IANA timezone assumed for naive legacy timestamps (recorded in trades.origin)"
    )
    batch_size: int = Field(default=BATCH_SIZE, description="records per COPY + upsert batch")


def build_legacy_migration(legacy_dir: Path) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The migration asset and its blocking accounting check for the stores found in `legacy_dir`."""
    stores, skipped = _discover(legacy_dir)
    partitions = dg.StaticPartitionsDefinition([store.relpath for store in stores])

    @dg.asset(
        name="legacy_trades",
        group_name="legacy",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"python", "postgres"},
        pool="pg_write",
        description=f"Legacy trade stores of {legacy_dir} migrated into trades, trade_partial_exits and "
        "legacy_quarantine (one partition per store).",
    )
    def legacy_trades(
        context: dg.AssetExecutionContext, config: LegacyMigrationConfig, postgres: PostgresResource
    ) -> dg.MaterializeResult:
        engine = postgres.manager.engine
        reports = []
        for key in context.partition_keys:
            store = store_for(legacy_dir, key)
            context.log.info(f"migrating {store.path} ({store.format.value}) as {store.source}")
            report = migrate_store(
                engine, store, naive_timezone=config.naive_timezone, batch_size=config.batch_size,
                progress=_progress_logger(context, store),
            )
            context.log.info(report.summary_line())
            reports.append(report)
        return dg.MaterializeResult(metadata=migration_metadata(reports, skipped))

    @dg.asset_check(
        asset=legacy_trades,
        name="legacy_accounting",
        blocking=True,
        description="For each store: records in the file = records read = inserted + updated + unchanged + "
        "duplicates + quarantined, and every migrated or quarantined record is in PostgreSQL.",
    )
    def legacy_accounting(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
        results = [verify_store(postgres.manager.engine, store_for(legacy_dir, key)) for key in _partition_keys(context)]
        return dg.AssetCheckResult(
            passed=bool(results) and all(r.passed for r in results), metadata=verification_metadata(results)
        )

    return legacy_trades, legacy_accounting


def _partition_keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    if context.has_partition_key:  # also when the check runs alone, for one partition
        return [context.partition_key]
    return context.partition_keys if context.has_partition_key_range else []


def _discover(legacy_dir: Path) -> tuple[list[Store], list[SkippedFile]]:
    # Definitions must load without the folder (a fresh checkout has no data/): no partitions then.
    try:
        return discover_stores(legacy_dir)
    except LegacySourceError:
        return [], []


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


def migration_metadata(reports: list[SourceReport], skipped: list[SkippedFile]) -> dict[str, dg.MetadataValue]:
    totals = {name: sum(getattr(r, name) for r in reports) for name in
              ("read", "inserted", "updated", "unchanged", "duplicates", "quarantined")}
    seconds = sum(r.seconds for r in reports)
    metadata: dict[str, dg.MetadataValue] = {
        f"records {name}": dg.MetadataValue.int(value) for name, value in totals.items()
    }
    metadata["balanced"] = dg.MetadataValue.bool(all(r.balanced for r in reports))
    metadata["records/s"] = dg.MetadataValue.float(round(totals["read"] / seconds, 1) if seconds else 0.0)
    metadata["per source"] = dg.MetadataValue.md(_sources_table(reports))
    metadata["per variant"] = dg.MetadataValue.md(_variants_table(reports))
    metadata["summary"] = dg.MetadataValue.text("\n".join(r.summary_line() for r in reports))
    if skipped:
        metadata["files skipped (no trades)"] = dg.MetadataValue.md(
            "\n".join(f"- `{s.relpath}`: {s.reason}" for s in skipped)
        )
    return metadata


def _sources_table(reports: list[SourceReport]) -> str:
    lines = ["| source | format | read | inserted | updated | unchanged | duplicates | quarantined | time range (UTC) |",
             "|---|---|--:|--:|--:|--:|--:|--:|---|"]
    for r in reports:
        first, last = r.time_range
        lines.append(
            f"| `{r.file}` | {r.format} | {r.read:,} | {r.inserted:,} | {r.updated:,} | {r.unchanged:,} | "
            f"{r.duplicates:,} | {r.quarantined:,} | {_span(first, last)} |"
        )
    lines.append("\nunchanged: already stored identically (a re-run) or the same trade already migrated from another "
                 "store; duplicates: the same trade twice in one store, or an OPEN row paired with its CLOSE row.")
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
        "stores verified": dg.MetadataValue.int(len(results)),
        "records missing in PostgreSQL": dg.MetadataValue.int(sum(sum(v.missing.values()) for v in results)),
        "accounting": dg.MetadataValue.md("\n".join(lines)),
    }
    if examples:
        metadata["missing (examples)"] = dg.MetadataValue.md("\n".join(f"- `{e}`" for e in examples))
    return metadata


legacy_trades, legacy_accounting = build_legacy_migration(settings.legacy_dir())

defs = dg.Definitions(assets=[legacy_trades], asset_checks=[legacy_accounting])
