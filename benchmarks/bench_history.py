"""Benchmark: read one symbol-day of `book_snapshots` from the hot tier and, once archived, from the
cold tier through the same reader (`read_history`), side by side in one run.

Target (data-lifecycle issue): the cold read of one symbol-day takes <= 1.5x the hot read of the same
rows. The day holds two symbols (generated as in bench_archive.py); the cold store is a local folder.

    .venv/bin/python benchmarks/bench_history.py [--rows 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from bench_archive import DAY, fill

from winiswin_pipelines import settings
from winiswin_pipelines.archive import archive_old_data, read_history
from winiswin_pipelines.coldstore import LocalColdStore
from winiswin_pipelines.db.scratch import scratch_database

TARGET_RATIO = 1.5


def best_read_seconds(manager, store, rounds: int) -> tuple[float, int]:
    """The fastest of `rounds` reads of BTCUSDT's day, and the rows it returned."""
    best, rows = float("inf"), 0
    for _ in range(rounds):
        started = time.perf_counter()
        frame = read_history("book_snapshots", DAY, DAY + dt.timedelta(days=1), ["BTCUSDT"], manager=manager,
                             store=store)
        best, rows = min(best, time.perf_counter() - started), len(frame)
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as folder, \
            scratch_database(Path(folder), settings.database_url()) as manager:
        fill(manager, args.rows, 10)
        store = LocalColdStore(Path(folder) / "cold")
        hot_s, hot_rows = best_read_seconds(manager, store, args.rounds)
        archive_old_data(manager=manager, store=store, tables=["book_snapshots"], days=[DAY])
        cold_s, cold_rows = best_read_seconds(manager, store, args.rounds)
    if cold_rows != hot_rows:
        raise SystemExit(f"the cold read returned {cold_rows:,} rows, the hot read {hot_rows:,}")
    ratio = cold_s / hot_s
    print(f"one symbol-day: {hot_rows:,} of {args.rows:,} rows (best of {args.rounds})")
    print(f"hot read  (PostgreSQL)        {hot_s:7.3f} s  {hot_rows / hot_s:>12,.0f} rows/s")
    print(f"cold read (Parquet, local)    {cold_s:7.3f} s  {cold_rows / cold_s:>12,.0f} rows/s")
    print(f"ratio cold / hot              {ratio:7.2f}x  target <= {TARGET_RATIO}x  "
          f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
