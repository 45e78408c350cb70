"""Restore archived days of a table from cold storage into PostgreSQL (idempotent).

    .venv/bin/python scripts/restore_archive.py --table book_snapshots --start 2024-03-01 --end 2024-03-31
    .venv/bin/python scripts/restore_archive.py --table all --start 2024-03-01

Reads DATABASE_URL (else the embedded server) and the cold storage the environment names
(BUCKET_NAME, S3_ENDPOINT_URL, S3_PREFIX, AWS keys; else the local cold folder). Rows already in
PostgreSQL win, so running it twice restores nothing the second time. Restored days stay eligible
for archival: the next archive run moves them back to cold storage unless the retention changes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from tqdm import tqdm

from winiswin_pipelines import factories
from winiswin_pipelines.archive import restore_days
from winiswin_pipelines.archive.restore import RestoreError
from winiswin_pipelines.archive.tables import ARCHIVED_TABLES, archived_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help=f"one of {', '.join(ARCHIVED_TABLES)}, or 'all'")
    parser.add_argument("--start", required=True, type=dt.date.fromisoformat, help="first UTC day, YYYY-MM-DD")
    parser.add_argument("--end", type=dt.date.fromisoformat, help="last UTC day, inclusive (default: --start)")
    args = parser.parse_args(argv)
    args.end = args.end or args.start
    if args.end < args.start:
        parser.error(f"--end {args.end} is before --start {args.start}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # Parents before children: a partial exit needs its trade in PostgreSQL first.
        tables = list(reversed(ARCHIVED_TABLES.values())) if args.table == "all" else [archived_table(args.table)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manager, store = factories.database_manager(), factories.cold_store()
    total_rows = total_days = 0
    with tqdm(desc="days restored", unit="day") as progress:
        for table in tables:
            try:
                days = restore_days(manager, store, table, args.start, args.end, on_day=lambda _: progress.update())
            except RestoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            total_days += len(days)
            total_rows += sum(day.inserted for day in days)
            for day in days:
                tqdm.write(f"{day.table} {day.day}: {day.inserted:,} of {day.rows_in_copy:,} rows restored")
    print(f"restored {total_rows:,} rows over {total_days} archived table-days ({args.start} .. {args.end})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
