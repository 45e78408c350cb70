"""Benchmark: the live capture path (parse, book, snapshot grid, COPY) fed from captures as fast as it goes.

Target (continuous capture): one core keeps up with at least 200 symbols of Binance's depth@100ms
stream, i.e. 2,000 depth messages a second (10 a second per symbol). The bundled BTCUSDT and ETHUSDT
captures (2024-07-18/19, 8 minutes, depth diffs and their REST snapshots) are replicated as `--copies`
independent symbols, interleaved in receive order, and fed through the capture's own code:
`BinanceStream.handle_message` (JSON parse, routing, the symbol's `LiveBook`, i.e. the import's
`BookSnapshotter`), `BinanceStream.apply_snapshot`, and every 2 s of capture time
`MarketDataCapture.flush` (book rows, gaps and heartbeat COPYed into PostgreSQL in one transaction,
partitions kept ahead). Only the websocket transport is left out. Measured twice, side by side: with
and without the raw capture files (gzip, as `raw_capture` writes them). The capture process's CPU time
(this process; PostgreSQL's own is the server's) gives messages per core-second; wall time is shown too.
The sample's diffs are depth@0ms ones (about 42 price levels each); depth@100ms messages batch 100 ms of
changes, so they are fewer but larger: levels per second is printed as well.

    .venv/bin/python benchmarks/bench_capture.py [--copies 100] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import heapq
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from winiswin_pipelines.db.scratch import scratch_database
from winiswin_pipelines.marketdata import repository, samples
from winiswin_pipelines.marketdata.binance import BinanceStream
from winiswin_pipelines.marketdata.capture import open_text_or_gzip
from winiswin_pipelines.marketdata.capture_files import CaptureFileWriter
from winiswin_pipelines.marketdata.live_capture import CaptureConfig, MarketDataCapture

TARGET_SYMBOLS = 200
MESSAGES_PER_SYMBOL = 10  # depth@100ms: one diff every 100 ms
FLUSH_US = 2_000_000
CAPTURES = {"btcusdt": [samples.CAPTURE_BTCUSDT_20240718, samples.CAPTURE_BTCUSDT_20240719],
            "ethusdt": [samples.CAPTURE_ETHUSDT_20240718, samples.CAPTURE_ETHUSDT_20240719]}


def load() -> tuple[list[tuple[int, str, bytes | dict]], int, int]:
    """(receive µs, symbol, raw websocket message or REST snapshot) of the two sampled symbols, in
    receive order; the number of depth diffs and of price levels in them."""
    per_symbol = []
    diffs = levels = 0
    for symbol, paths in CAPTURES.items():
        lines = []
        for path in paths:
            with open_text_or_gzip(path) as handle:
                for line in handle:
                    stamp, _, payload = line.strip().partition(b" ")
                    micros = int(stamp) // 1000  # the samples are in ns
                    if payload.startswith(b'{"lastUpdateId"'):
                        lines.append((micros, symbol, orjson.loads(payload)))
                    elif b"@depth" in payload[:40]:
                        lines.append((micros, symbol, payload))
                        data = orjson.loads(payload)["data"]
                        diffs, levels = diffs + 1, levels + len(data["b"]) + len(data["a"])
        per_symbol.append(lines)
    return list(heapq.merge(*per_symbol, key=lambda item: item[0])), diffs, levels


def copies_of(items, copies: int) -> Iterator[tuple[int, str, bytes | dict]]:
    """Each message once per copy, the copy's own symbol in its stream name (what another symbol's
    connection would deliver): `c<copy>btcusdt`, ..."""
    prefixes = {symbol: [(f"C{k:03d}{symbol.upper()}", f'"stream":"c{k:03d}{symbol}@'.encode())
                         for k in range(copies)] for symbol in CAPTURES}
    for micros, symbol, raw in items:
        if isinstance(raw, dict):
            for name, _ in prefixes[symbol]:
                yield micros, name, raw
        else:
            head = f'"stream":"{symbol}@'.encode()
            start = raw.index(head) + len(head)
            rest = raw[start:]
            for name, prefix in prefixes[symbol]:
                yield micros, name, b'{' + prefix + rest


class _NoRest:
    """The snapshots come from the captures, in place: a request is never answered."""

    async def depth(self, symbol: str, limit: int) -> dict:
        await asyncio.Event().wait()


async def feed(manager, items, copies: int, raw_dir: Path | None) -> tuple[float, float, int, int]:
    symbols = [f"C{k:03d}{symbol.upper()}" for k in range(copies) for symbol in CAPTURES]
    config = CaptureConfig(tuple(symbols), book_cadence=dt.timedelta(seconds=1), depth_stream="depth@0ms")
    capture_id = f"bench-{'raw' if raw_dir else 'plain'}-{time.time_ns()}"
    capture = MarketDataCapture(manager, config, capture_id=capture_id, notify=lambda *_: None)
    raw = CaptureFileWriter(raw_dir, capture_id, dt.datetime.now(dt.UTC)) if raw_dir else None
    stream = BinanceStream("ws://unused", [f"{s.lower()}@depth@0ms" for s in symbols], _NoRest(),
                           book_updates=False, on_message=raw.write if raw else None, streams_per_connection=1024)
    capture.bind(stream, raw)
    repository.start_capture(manager, capture_id, run_id=None, symbols=symbols, at=dt.datetime.now(dt.UTC),
                             details={})
    capture.upkeep.run()
    handle, apply_snapshot = stream.handle_message, stream.apply_snapshot
    messages = 0
    next_flush = items[0][0] + FLUSH_US
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    for micros, symbol, raw_message in copies_of(items, copies):
        if isinstance(raw_message, dict):
            apply_snapshot(symbol, micros, raw_message)
        else:
            handle(micros, raw_message)
            messages += 1
        if micros >= next_flush:
            await capture.flush()
            next_flush = micros + FLUSH_US
    await capture.flush(status="completed")
    if raw:
        raw.close()
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()
    return wall, cpu, messages, capture.book_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=100, help="copies of the BTCUSDT + ETHUSDT capture (symbols / 2)")
    parser.add_argument("--database-url", help="a server to create a scratch database on (default: a throwaway "
                                               "embedded server)")
    args = parser.parse_args()
    items, diffs, levels = load()
    span = (items[-1][0] - items[0][0]) / 1e6
    print(f"{2 * args.copies} symbols (the 2 sampled, x{args.copies}), {diffs * args.copies:,} depth diffs over "
          f"{span:.0f} s of capture, {levels / diffs:.1f} price levels a diff")
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as folder, \
            scratch_database(Path(folder), args.database_url) as manager:
        results = {}
        for label, raw_dir in (("capture", None), ("capture + raw files", Path(folder) / "raw")):
            results[label] = asyncio.run(feed(manager, items, args.copies, raw_dir))
    levels *= args.copies
    print(f"{'path':<22}{'wall s':>8}{'cpu s':>8}{'msg/s (cpu)':>13}{'msg/s (wall)':>14}{'levels/s':>12}"
          f"{'rows':>9}{'symbols @10/s':>15}{'vs goal':>9}")
    for label, (wall, cpu, messages, rows) in results.items():
        per_core = messages / cpu
        sustained = per_core / MESSAGES_PER_SYMBOL
        print(f"{label:<22}{wall:>8.2f}{cpu:>8.2f}{per_core:>13,.0f}{messages / wall:>14,.0f}"
              f"{levels / cpu:>12,.0f}{rows:>9,}{sustained:>15,.0f}{sustained / TARGET_SYMBOLS:>8.1f}x")
    print(f"goal: {TARGET_SYMBOLS} symbols of depth@100ms ({TARGET_SYMBOLS * MESSAGES_PER_SYMBOL:,} msg/s) on one core")


if __name__ == "__main__":
    main()
