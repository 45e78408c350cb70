"""Migrate the legacy bot's trade stores into PostgreSQL (the command line over the Dagster asset's code).

    .venv/bin/python scripts/migrate_system.py --legacy-dir data/ [--dry-run] [--naive-timezone UTC] [--force]
    .venv/bin/python scripts/migrate_system.py --show <trade_uid>
    .venv/bin/python scripts/migrate_system.py --legacy-dir data/ --retire [--retire-to FOLDER]

Every trade store found in the folder (sniffed from its content) first goes to cold storage as it
is (zstd, content-addressed by its SHA-256, read back and checked), then is read, normalised and
upserted into `trades` / `trade_partial_exits`, whose rows point to their record in those bytes;
what cannot be migrated goes to `legacy_quarantine` with the reason. Each store is then verified
against PostgreSQL, and the legacy partial exits are linked to their trades where the data allows
(the unlinked ones are listed with the reason); the `legacy_sources` rows are printed. Bytes
migrated before are skipped (`--force` reads them again). `--dry-run` reads and normalises only.
`--show` prints the exact bytes of a trade's original record, read from cold storage; the trade
(or partial exit) may be in the hot tables or archived to cold storage itself.
`--retire` deletes the legacy stores (`--retire-to` moves them) only when each one is migrated, its
accounting check passed and its cold copy reads back with the same SHA-256; otherwise it refuses,
touches nothing, and names what is not verified.
The stores found become `legacy_trades` partitions of the Dagster instance (DAGSTER_HOME, default
.state/dagster_home) when it exists, so they can be materialised from the UI or the CLI too.
The database is DATABASE_URL's, else the embedded server. The legacy files are never modified.
Exit status: 0 when every store balances and verifies (or is retired, or the record is shown), 1
otherwise, 2 on a missing folder, store or record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dagster as dg
from tqdm import tqdm

from winiswin_pipelines import factories, settings
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.defs.partitions import register_legacy_stores
from winiswin_pipelines.legacy.load import BATCH_SIZE, link_partial_exits, migrate_store, verify_store
from winiswin_pipelines.legacy.originals import ColdCopyError
from winiswin_pipelines.legacy.records import LegacySourceError
from winiswin_pipelines.legacy.retire import retire
from winiswin_pipelines.legacy.sniff import Store, discover_stores, store_for
from winiswin_pipelines.legacy.sources import all_sources, show_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Migrate the legacy trade stores into PostgreSQL.")
    parser.add_argument("--legacy-dir", type=Path, default=settings.legacy_dir(),
                        help="the legacy bot's folder (default: WINISWIN_LEGACY_DIR or data/)")
    parser.add_argument("--dry-run", action="store_true", help="read, normalise and report; write nothing")
    parser.add_argument("--naive-timezone", default="UTC", help="timezone assumed for naive timestamps (default UTC)")
    parser.add_argument("--store", action="append", dest="stores", metavar="PATH",
                        help="only this store (path inside the legacy folder); repeatable")
    parser.add_argument("--force", action="store_true", help="migrate stores whose bytes were migrated before again")
    parser.add_argument("--show", metavar="TRADE_UID", help="print the original bytes of this trade's record and exit")
    parser.add_argument("--retire", action="store_true", help="delete the legacy stores, once verified")
    parser.add_argument("--retire-to", type=Path, metavar="FOLDER", help="with --retire: move them here instead")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        return show(args.show)
    try:
        found, skipped = discover_stores(args.legacy_dir)
        stores = [store_for(args.legacy_dir, relpath) for relpath in args.stores] if args.stores else found
    except LegacySourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.legacy_dir.resolve()}: {len(found)} trade store(s)")
    for file in skipped:
        print(f"  skipped {file.relpath}: {file.reason}")
    if args.retire or args.retire_to:
        return retire_stores(stores, args.retire_to)
    manager = None if args.dry_run else factories.database_manager()
    if manager is not None:
        print(f"database: {manager.masked_url}")
        register_partitions(found)
    ok = True
    for store in stores:
        ok &= migrate_one(manager, store, args)
    if manager is not None:
        print_links(manager)
        print_sources(manager)
    return 0 if ok else 1


def show(uid: str) -> int:
    try:
        record = show_record(factories.database_manager(), factories.cold_store(), uid)
    except (LookupError, ColdCopyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(record + b"\n")
    return 0


def retire_stores(stores: list[Store], move_to: Path | None) -> int:
    manager = factories.database_manager()
    checks = retire(manager, factories.cold_store(), stores, move_to)
    if not all(check.ready for check in checks):
        print("refused: nothing was deleted or moved; not verified:")
        for check in checks:
            for problem in check.problems:
                print(f"  {check.store.relpath}: {problem}")
        return 1
    done = f"moved to {move_to.resolve()}" if move_to else "deleted"
    for check in checks:
        print(f"  retired {check.store.relpath} ({done}; cold copy {check.original.sha256[:12]}… verified)")
    return 0


def print_sources(manager: DatabaseManager) -> None:
    print("legacy_sources:")
    for row in all_sources(manager):
        span = f"{row.first_time:%Y-%m-%d %H:%M} .. {row.last_time:%Y-%m-%d %H:%M}" if row.first_time else "-"
        print(f"  {row.source} {row.format} {row.size:,} bytes, {row.records or 0:,} records, {span}, "
              f"sha256 {row.sha256[:12]}…, cold {row.cold_uri}, migrated {_at(row.migrated_at)}, "
              f"copy verified {_at(row.verified_at)}, accounting passed {_at(row.checked_at)}")


def _at(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment else "never"


def print_links(manager: DatabaseManager) -> None:
    links = link_partial_exits(manager)
    print(links.summary_line())
    for line in links.unlinked_lines():
        print(f"  unlinked {line}")


def register_partitions(stores: list[Store]) -> None:
    home = settings.dagster_home()
    if not (home / "dagster.yaml").is_file():
        print(f"  no Dagster instance in {home}: stores not registered as legacy_trades partitions")
        return
    with dg.DagsterInstance.from_config(str(home)) as instance:
        added = register_legacy_stores(instance, [store.relpath for store in stores])
    print(f"  legacy_trades partitions added: {', '.join(added) if added else 'none (all known)'}")


def migrate_one(manager: DatabaseManager | None, store: Store, args: argparse.Namespace) -> bool:
    with tqdm(total=store.path.stat().st_size, unit="B", unit_scale=True, desc=store.relpath, leave=False) as bar:
        def progress(records: int, size: int) -> None:
            bar.update(size)

        report = migrate_store(
            manager, store, naive_timezone=args.naive_timezone, dry_run=args.dry_run,
            batch_size=args.batch_size, progress=progress, force=args.force,
        )
    rate = f", {report.read / report.seconds:,.0f} records/s" if report.seconds and report.read else ""
    print(f"  {report.summary_line()} ({report.seconds:.1f} s{rate})")
    if args.dry_run:
        return True
    verification = verify_store(manager, store)
    verdict = "passed" if verification.passed else "FAILED: " + "; ".join(verification.problems)
    print(f"    verified against PostgreSQL: {verdict}")
    return report.balanced and verification.passed


if __name__ == "__main__":
    sys.exit(main())
