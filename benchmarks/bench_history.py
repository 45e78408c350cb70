"""Benchmark: read one symbol-day of `book_snapshots` from the hot tier and, once archived, from the
cold tier through the same reader (`read_history`), side by side in one run; the cold tier both as a
local folder and as S3 (a moto server on loopback, read in place by ranged GETs).

Target (data-lifecycle issue): the cold read of one symbol-day takes <= 1.5x the hot read of the same
rows. The day holds `--symbols` symbols interleaved in time (generated as in bench_archive.py); the
archived objects are ordered by symbol, so the reader's symbol filter skips the other symbols' row
groups by their statistics. The row groups it reads are printed.

    .venv/bin/python benchmarks/bench_history.py [--rows 2000000] [--symbols 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import boto3
import pyarrow.parquet as pq
from bench_archive import DAY, fill, start_s3

from winiswin_pipelines import factories, settings
from winiswin_pipelines.archive import archive_old_data, read_history
from winiswin_pipelines.coldstore import ColdStore, LocalColdStore
from winiswin_pipelines.db.scratch import scratch_database

TARGET_RATIO = 1.5
SYMBOL = "BTCUSDT"


def best_read_seconds(manager, store: ColdStore, rounds: int) -> tuple[float, int]:
    """The fastest of `rounds` reads of SYMBOL's day, and the rows it returned."""
    best, rows = float("inf"), 0
    for _ in range(rounds):
        started = time.perf_counter()
        frame = read_history("book_snapshots", DAY, DAY + dt.timedelta(days=1), [SYMBOL], manager=manager, store=store)
        best, rows = min(best, time.perf_counter() - started), len(frame)
    return best, rows


def row_groups_with_symbol(folder: Path) -> tuple[int, int]:
    """(row groups whose symbol statistics admit SYMBOL, all row groups) of the archived objects."""
    admitted = total = 0
    for path in folder.rglob("*.parquet"):
        metadata = pq.ParquetFile(path).metadata
        column = metadata.schema.names.index("symbol")
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(column).statistics
            total += 1
            admitted += stats is None or stats.min <= SYMBOL <= stats.max
    return admitted, total


def s3_copy(local: Path, endpoint: str) -> ColdStore:
    """The local cold folder's objects uploaded as they are to a bucket on `endpoint`."""
    access = (endpoint, "bench", "bench", "us-east-1")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="bench")
    store = factories.cold_store("bench", "", client=factories.s3_client(*access),
                                 filesystem=factories.s3_filesystem(*access))
    for path in local.rglob("*.parquet"):
        key = path.relative_to(local).as_posix()
        store.put_file(path, key, LocalColdStore(local).head(key).sha256)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as folder, \
            scratch_database(Path(folder), settings.database_url()) as manager:
        fill(manager, args.rows, 10, args.symbols)
        local = LocalColdStore(Path(folder) / "cold")
        hot_s, hot_rows = best_read_seconds(manager, local, args.rounds)
        archive_old_data(manager=manager, store=local, tables=["book_snapshots"], days=[DAY])
        local_s, local_rows = best_read_seconds(manager, local, args.rounds)
        server, endpoint = start_s3()
        try:
            s3_s, s3_rows = best_read_seconds(manager, s3_copy(local.root, endpoint), args.rounds)
        finally:
            server.terminate()
        admitted, groups = row_groups_with_symbol(local.root)
    for name, rows in (("local", local_rows), ("S3", s3_rows)):
        if rows != hot_rows:
            raise SystemExit(f"the cold read ({name}) returned {rows:,} rows, the hot read {hot_rows:,}")
    print(f"one symbol-day: {hot_rows:,} of {args.rows:,} rows, {args.symbols} symbols (best of {args.rounds})")
    print(f"row groups read: {admitted} of {groups} (the others hold only other symbols)")
    print(f"hot read  (PostgreSQL)             {hot_s:7.3f} s  {hot_rows / hot_s:>12,.0f} rows/s")
    for name, seconds in (("Parquet, local folder", local_s), ("Parquet on S3, in place", s3_s)):
        ratio = seconds / hot_s
        print(f"cold read ({name:<23}) {seconds:7.3f} s  {hot_rows / seconds:>12,.0f} rows/s  "
              f"ratio {ratio:5.2f}x  target <= {TARGET_RATIO}x  {'OK' if ratio <= TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
