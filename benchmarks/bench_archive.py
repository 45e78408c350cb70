"""Benchmark: archive one day of 1,000,000 `book_snapshots` rows (10 book levels) end to end.

Target (issue 4): export, upload to the loopback S3 server, verify and delete at >= 150,000 rows/s,
within 2x of a bare `COPY ... TO STDOUT` of the same rows measured in the same run, with a peak
memory under 1.5 GB. Runs on DATABASE_URL's server, else on an embedded PostgreSQL in a temporary
folder; the S3 server (moto) runs in its own process, as a real endpoint would.

    .venv/bin/python benchmarks/bench_archive.py [--rows 1000000] [--levels 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import psycopg
from sqlalchemy import text

from winiswin_pipelines import factories, settings
from winiswin_pipelines.archive import archive_old_data
from winiswin_pipelines.archive.repository import table_sizes
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.partitions import ensure_daily_partitions
from winiswin_pipelines.db.scratch import scratch_database

DAY = dt.date(2024, 1, 10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the moto S3 server did not start")


def fill(manager: DatabaseManager, rows: int, levels: int, symbols: int = 2) -> None:
    """One UTC day of `symbols` symbols' (BTCUSDT, ETHUSDT, then SYM002USDT...) `levels`-level books on
    a 0.1 tick grid, interleaved in time, generated inside PostgreSQL."""
    names = ", ".join(f"'{name}'" for name in symbol_names(symbols))
    bids = ", ".join(f"round((mid - {i} * 0.1)::numeric, 1)::float8" for i in range(levels))
    asks = ", ".join(f"round((mid + {i + 1} * 0.1)::numeric, 1)::float8" for i in range(levels))
    sizes = ", ".join("round((random() * 5)::numeric, 3)::float8" for _ in range(levels))
    step_us = 86_400_000_000 // rows
    with manager.engine.begin() as conn:
        ensure_daily_partitions(conn, "book_snapshots", [DAY])
        conn.execute(text(f"""
            INSERT INTO book_snapshots
            SELECT (ARRAY[{names}])[g % {symbols} + 1], ts, ts + interval '3 ms', 3000000000 + g,
                   round(mid::numeric, 1)::float8, round((random() * 5)::numeric, 3)::float8,
                   round((mid + 0.1)::numeric, 1)::float8, round((random() * 5)::numeric, 3)::float8,
                   ARRAY[{bids}], ARRAY[{sizes}], ARRAY[{asks}], ARRAY[{sizes}], 'bench'
            FROM (SELECT g, timestamptz '{DAY.isoformat()} 00:00:00+00' + g * interval '{step_us} microseconds' AS ts,
                         40000 + 50 * sin(g / 5000.0) AS mid
                  FROM generate_series(0, {rows - 1}) g) s"""))
        conn.execute(text("ANALYZE book_snapshots"))


def symbol_names(count: int) -> list[str]:
    return ["BTCUSDT", "ETHUSDT", *(f"SYM{i:03d}USDT" for i in range(2, count))][:count]


def bare_copy_seconds(manager: DatabaseManager) -> tuple[float, int]:
    url = manager.url
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=url.database) as conn, conn.cursor() as cur:
        started, size = time.perf_counter(), 0
        query = (f"COPY (SELECT * FROM book_snapshots WHERE exchange_time >= '{DAY}' "
                 f"AND exchange_time < '{DAY + dt.timedelta(days=1)}') TO STDOUT")
        with cur.copy(query) as copy:
            for chunk in copy:
                size += len(chunk)
        return time.perf_counter() - started, size


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--levels", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-archive-") as folder, \
            scratch_database(Path(folder), settings.database_url()) as manager:
        s3, endpoint = start_s3()
        try:
            run(manager, endpoint, args.rows, args.levels)
        finally:
            s3.terminate()


def run(manager: DatabaseManager, endpoint: str, rows: int, levels: int) -> None:
    started = time.perf_counter()
    fill(manager, rows, levels)
    print(f"generated {rows:,} book_snapshots rows ({levels} levels) of {DAY} in {time.perf_counter() - started:.1f} s")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="bench")
    store = factories.cold_store(
        "bench", "bench", client=factories.s3_client(endpoint, "bench", "bench", region="us-east-1"),
    )

    copy_s, copy_bytes = bare_copy_seconds(manager)
    before = table_sizes(manager, ["book_snapshots"])["book_snapshots"]
    steps: dict[str, float] = {}
    started = time.perf_counter()
    summary = archive_old_data(manager=manager, store=store, tables=["book_snapshots"], days=[DAY],
                               progress=lambda step, *_: steps.setdefault(step, time.perf_counter() - started))
    archive_s = time.perf_counter() - started
    after = table_sizes(manager, ["book_snapshots"])["book_snapshots"]
    with manager.engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM book_snapshots")).scalar_one()
    result = summary.results[0]
    if result.status != "archived" or left:
        raise SystemExit(f"archival did not complete: {result.status} {result.error}; {left} rows left")

    ratio = archive_s / copy_s
    print(f"bare COPY TO STDOUT (text)  {copy_s:7.2f} s  {rows / copy_s:>10,.0f} rows/s  {copy_bytes / 1e6:,.0f} MB")
    print(f"archive end to end          {archive_s:7.2f} s  {rows / archive_s:>10,.0f} rows/s  "
          f"(export, upload to S3, read back + verify, drop partition)")
    marks = [("export", "exported"), ("upload", "uploaded"), ("verify", "verified"), ("delete", "archived")]
    previous = 0.0
    for label, step in marks:
        print(f"  {label:<26}{steps[step] - previous:7.2f} s")
        previous = steps[step]
    print(f"ratio archive / bare COPY   {ratio:7.2f}x  (target <= 2x)")
    print(f"throughput target           {'met' if rows / archive_s >= 150_000 else 'MISSED'} (>= 150,000 rows/s)")
    print(f"Parquet                     {result.bytes:,} B in {len(result.object_uris)} object(s), "
          f"compression ratio {result.compression_ratio} (Arrow in memory / Parquet zstd)")
    print(f"peak memory (RSS)           {peak_rss_bytes() / 2**20:,.0f} MiB  (target < 1,536 MiB; whole process)")
    print(f"book_snapshots on disk      {before:,} B before -> {after:,} B after")


if __name__ == "__main__":
    main()
