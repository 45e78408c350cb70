"""Benchmark: market-data readers on the bundled real BTCUSDT capture (2023-04-04/05, ~8.5 minutes).

Target (issue 5): a whole day of capture imports in seconds. The capture is read and processed
as the import assets do it; the figures are then scaled to 24 hours of the same market activity.
Measured side by side in one run: reading every message vs reading only the streams a step needs
(the book needs depth diffs and the REST snapshot, bars need trades).

    .venv/bin/python benchmarks/bench_marketdata.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator

from winiswin_pipelines.marketdata import samples
from winiswin_pipelines.marketdata.capture import REST_DEPTH, CaptureMessage, read_capture
from winiswin_pipelines.marketdata.klines import aggregate_trades_to_klines, read_kline_csv, trades_from_capture
from winiswin_pipelines.marketdata.orderbook import rebuild_book_snapshots

CAPTURE = [samples.CAPTURE_BTCUSDT_20230404, samples.CAPTURE_BTCUSDT_20230405]
DAY_SECONDS = 86_400


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - started)
    return min(timings), result


def stream(kinds: set[str] | None) -> Iterator[CaptureMessage]:
    return itertools.chain.from_iterable(read_capture(path, kinds=kinds) for path in CAPTURE)


def count(kinds: set[str] | None) -> int:
    return sum(1 for _ in stream(kinds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat

    first, last = next(stream(None)), deque(stream(None), maxlen=1)[0]
    covered = (last.receive_time - first.receive_time).total_seconds()
    scale = DAY_SECONDS / covered
    depth = [m.data for m in stream({"depth"})]
    diffs, levels = len(depth), sum(len(d["b"]) + len(d["a"]) for d in depth)
    del depth

    every_s, messages = best_of(repeat, lambda: count(None))
    depth_read_s, depth_messages = best_of(repeat, lambda: count({"depth", REST_DEPTH}))
    # End to end as the import assets run: messages streamed from the files, never all in memory.
    book_s, snapshots = best_of(repeat, lambda: rebuild_book_snapshots(
        stream({"depth", REST_DEPTH}), symbol="BTCUSDT", cadence=dt.timedelta(seconds=1), depth=10))
    trades_s, trades = best_of(repeat, lambda: trades_from_capture(stream({"trade"})))
    bars_s, bars = best_of(repeat, lambda: aggregate_trades_to_klines(trades, symbol="BTCUSDT", interval="1m"))
    csv_s, csv = best_of(
        repeat, lambda: read_kline_csv(samples.BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    )

    print(f"capture: {messages:,} messages over {covered:.0f} s ({diffs:,} depth diffs, {levels:,} levels, "
          f"{len(trades):,} trades); one day of this activity = {scale:.0f}x")
    print(f"read every message          {every_s:7.3f} s  {messages / every_s:>11,.0f} msg/s")
    print(f"read depth + snapshot only  {depth_read_s:7.3f} s  {depth_messages / depth_read_s:>11,.0f} msg/s  "
          f"(the whole file in {every_s / depth_read_s:.1f}x less time)")
    print(f"read + rebuild book, 1 s    {book_s:7.3f} s  {diffs / book_s:>11,.0f} diffs/s  "
          f"{levels / book_s:>11,.0f} levels/s  -> {len(snapshots):,} snapshots "
          f"(rebuild alone {book_s - depth_read_s:.3f} s)")
    print(f"read trades -> frame        {trades_s:7.3f} s  {len(trades) / trades_s:>11,.0f} trades/s")
    print(f"trades -> 1m klines         {bars_s:7.3f} s  {len(trades) / bars_s:>11,.0f} trades/s -> {len(bars)} bars")
    print(f"kline CSV (1 month of 5m)   {csv_s:7.3f} s  {len(csv) / csv_s:>11,.0f} rows/s")
    print(f"one day of BTCUSDT capture, estimated: book snapshots {book_s * scale:.0f} s, "
          f"klines {(trades_s + bars_s) * scale:.0f} s (target: seconds)")


if __name__ == "__main__":
    main()
