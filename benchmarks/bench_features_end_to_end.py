"""Benchmark: one partition of microstructure features end to end (read PostgreSQL, compute, write back).

Target (issue 5): at least 100,000 rows/s for one daily partition, from `book_snapshots` (10 levels)
to upserted `training_features` rows, as the `microstructure_features` asset does it. Measured side
by side in one run: the read and the in-memory compute alone (one symbol after the other), then end
to end as the asset runs it (two symbols side by side), first write and re-run; then the day's
labels as the `triple_barrier_labels` asset writes them (no target: for comparison). Runs on a
throwaway embedded PostgreSQL in a temporary folder, or on --database-url (a scratch database).

    .venv/bin/python benchmarks/bench_features_end_to_end.py [--rows 200000] [--symbols 2] [--repeat 3]
        [--database-url URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.partitions import ensure_daily_partitions
from winiswin_pipelines.db.scratch import scratch_database
from winiswin_pipelines.factories import cold_store
from winiswin_pipelines.features.days import FEATURES, day_features
from winiswin_pipelines.features.training import book_symbols, read_day_book, write_day_features, write_day_labels

DAY = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
TARGET_ROWS_PER_S = 100_000


def fill(manager: DatabaseManager, rows: int, symbols: int) -> None:
    """One UTC day (plus the previous day's last hour) of 10-level books, generated inside PostgreSQL."""
    levels = FEATURES.depth_levels
    bids = ", ".join(f"round((mid - {i} * 0.1)::numeric, 1)::float8" for i in range(levels))
    asks = ", ".join(f"round((mid + {i + 1} * 0.1)::numeric, 1)::float8" for i in range(levels))
    sizes = ", ".join("round((random() * 5)::numeric, 3)::float8" for _ in range(levels))
    per_symbol = rows // symbols
    step_us = 86_400_000_000 // per_symbol
    warmup = 3_600_000_000 // step_us
    with manager.engine.begin() as conn:
        ensure_daily_partitions(conn, "book_snapshots", [DAY.date() - dt.timedelta(days=1), DAY.date()])
        conn.execute(text(f"""
            INSERT INTO book_snapshots
            SELECT 'SYM' || s, ts, ts + interval '3 ms', 3000000000 + g,
                   round(mid::numeric, 1)::float8, round((random() * 5)::numeric, 3)::float8,
                   round((mid + 0.1)::numeric, 1)::float8, round((random() * 5)::numeric, 3)::float8,
                   ARRAY[{bids}], ARRAY[{sizes}], ARRAY[{asks}], ARRAY[{sizes}], 'bench'
            FROM (SELECT s, g, timestamptz '{DAY.isoformat()}' + g * interval '{step_us} microseconds' AS ts,
                         40000 + 50 * sin(g / 5000.0) + 10 * random() AS mid
                  FROM generate_series(1, {symbols}) s, generate_series(-{warmup}, {per_symbol - 1}) g) b"""))
        conn.execute(text("ANALYZE book_snapshots"))


def timed(run):
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def best_of(repeat: int, run, before=lambda: None):
    timings, result = [], None
    for _ in range(repeat):
        before()
        seconds, result = timed(run)
        timings.append(seconds)
    return min(timings), result


def empty_training_features(manager: DatabaseManager) -> None:
    with manager.engine.begin() as conn:
        conn.execute(text("TRUNCATE training_features"))


def report(name: str, seconds: float, rows: int, detail: str) -> None:
    rate = rows / seconds
    verdict = "met" if rate >= TARGET_ROWS_PER_S else "NOT met"
    print(f"  {name:<24} {seconds:6.2f} s  {rate:>10,.0f} rows/s  ({detail})  "
          f"target {TARGET_ROWS_PER_S:,}: {verdict} ({rate / TARGET_ROWS_PER_S:.2f}x)")


def measure(manager: DatabaseManager, repeat: int) -> None:
    cold = cold_store()
    symbols = book_symbols(manager, cold, DAY, DAY + dt.timedelta(days=1))
    with manager.engine.connect() as conn:
        read_s, books = best_of(repeat, lambda: [read_day_book(manager, conn, cold, s, DAY) for s in symbols])
    compute_s, frames = best_of(repeat, lambda: [day_features(book, DAY) for book in books])
    rows = sum(len(f) for f in frames)
    first_s, first = best_of(repeat, lambda: write_day_features(manager, DAY),
                             before=lambda: empty_training_features(manager))
    again_s, again = best_of(repeat, lambda: write_day_features(manager, DAY))
    snapshots_read = sum(len(b.ts) for b in books)
    print(f"partition {DAY:%Y-%m-%d}: {rows:,} feature rows for {len(symbols)} symbols "
          f"({snapshots_read:,} snapshots read incl. warm-up); best of {repeat}")
    print(f"  read book_snapshots      {read_s:6.2f} s  {snapshots_read / read_s:>10,.0f} rows/s")
    print(f"  compute features         {compute_s:6.2f} s  {snapshots_read / compute_s:>10,.0f} rows/s")
    report("end to end, first write", first_s, rows, f"{first.written.inserted:,} inserted")
    report("end to end, re-run", again_s, rows, f"{again.written.unchanged:,} unchanged")
    labels_s, labels = timed(lambda: write_day_labels(manager, DAY))
    labels_again_s, labels_again = best_of(repeat, lambda: write_day_labels(manager, DAY))
    print(f"  labels, first write      {labels_s:6.2f} s  {labels.written.rows / labels_s:>10,.0f} rows/s  "
          f"({labels.written.updated:,} updated; {sum(labels.labels.values()):,} labelled, {labels.pending:,} pending)")
    print(f"  labels, re-run           {labels_again_s:6.2f} s  {labels_again.written.rows / labels_again_s:>10,.0f} "
          f"rows/s  ({labels_again.written.unchanged:,} unchanged)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="feature rows in the partition")
    parser.add_argument("--symbols", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", help="a server to create a scratch database on (default: a throwaway embedded server)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as folder:
        with scratch_database(Path(folder), args.database_url) as manager:
            started = time.perf_counter()
            fill(manager, args.rows, args.symbols)
            print(f"generated {args.rows:,} snapshots (+1 h warm-up) in {time.perf_counter() - started:.1f} s")
            print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
            measure(manager, args.repeat)


if __name__ == "__main__":
    main()
