"""Benchmark: UnifiedTradeRecorder throughput into PostgreSQL and the latency of one record call.

Targets (issue 6): at least 5,000 trade events/s sustained into PostgreSQL; a record call returns
in at most 100 µs at p99. Trades of 50 symbols are opened, partly closed and closed (3 events per
trade) as fast as the loop can produce them, yielding to the event loop every few calls as a
trading loop would; throughput counts from the first call until everything is committed.

Runs against a throwaway embedded PostgreSQL (durable settings: fsync on) unless --database-url.

    .venv/bin/python benchmarks/bench_recorder.py [--trades 40000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.scratch import scratch_database
from winiswin_pipelines.trading.events import TradeClosed, TradeEvent, TradeOpened, TradePartiallyClosed
from winiswin_pipelines.trading.recorder import UnifiedTradeRecorder

TARGET_EVENTS_PER_S = 5_000
TARGET_P99_US = 100.0
SYMBOLS = [f"SYM{i:02d}USDT" for i in range(50)]
YIELD_EVERY = 20


def trade_events(trades: int) -> list[TradeEvent]:
    start = dt.datetime(2024, 7, 19, tzinfo=dt.UTC)
    events: list[TradeEvent] = []
    for n in range(trades):
        uid, symbol, at = f"bench-{n}", SYMBOLS[n % len(SYMBOLS)], start + dt.timedelta(seconds=n)
        events += [
            TradeOpened(uid, symbol, "LONG" if n % 2 else "SHORT", at, 100.0 + n % 97, 1.5, leverage=2.0,
                        strategy="bench", confidence=0.55, features={"obi": 0.1, "spread_pct": 0.0002}),
            TradePartiallyClosed(f"{uid}-p1", uid, symbol, at + dt.timedelta(seconds=30), 101.0, 0.5, pnl=0.5),
            TradeClosed(uid, symbol, at + dt.timedelta(seconds=60), 102.0, pnl=2.0, pnl_pct=0.013, fees=0.05),
        ]
    return events


async def run(manager: DatabaseManager, events: list[TradeEvent], spool: Path) -> dict[str, float]:
    recorder = UnifiedTradeRecorder(manager, source="benchmark", spool_dir=spool)
    await recorder.start()
    calls = {TradeOpened: recorder.record_entry, TradePartiallyClosed: recorder.record_partial_exit,
             TradeClosed: recorder.record_exit}
    latencies_ns: list[int] = []
    started = time.perf_counter()
    for i, event in enumerate(tqdm(events, desc="recording", unit="event", mininterval=0.5)):
        method = calls[type(event)]
        before = time.perf_counter_ns()
        await method(event)
        latencies_ns.append(time.perf_counter_ns() - before)
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # the trading loop awaits between calls; the writer runs then
    produced = time.perf_counter() - started
    await recorder.flush()
    elapsed = time.perf_counter() - started
    metrics = recorder.metrics()
    await recorder.close()
    await manager.async_engine.dispose()
    latencies_ns.sort()
    quantiles = statistics.quantiles(latencies_ns, n=1000)
    return {
        "events": len(events), "written": metrics["written"], "spooled": metrics["spooled"],
        "produce_s": produced, "elapsed_s": elapsed, "events_per_s": metrics["written"] / elapsed,
        "p50_us": quantiles[499] / 1000, "p99_us": quantiles[989] / 1000, "max_us": latencies_ns[-1] / 1000,
        "batch_p50_ms": metrics["write_latency_p50_ms"], "batch_p99_ms": metrics["write_latency_p99_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=40_000, help="trades to record (3 events each)")
    parser.add_argument("--database-url", help="a server to create a scratch database on (default: a throwaway embedded server)")
    args = parser.parse_args()
    events = trade_events(args.trades)
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as folder:
        with scratch_database(Path(folder), args.database_url) as manager:
            result = asyncio.run(run(manager, events, Path(folder) / "spool"))
    print(f"recorded {result['events']:,} events, written {result['written']:,}, spooled {result['spooled']:,}")
    print(f"throughput : {result['events_per_s']:,.0f} events/s into PostgreSQL "
          f"(target {TARGET_EVENTS_PER_S:,}; ratio {result['events_per_s'] / TARGET_EVENTS_PER_S:.2f}x); "
          f"{result['elapsed_s']:.2f} s in all, calls done after {result['produce_s']:.2f} s")
    print(f"record call: p50 {result['p50_us']:.1f} µs, p99 {result['p99_us']:.1f} µs, max {result['max_us']:.1f} µs "
          f"(target p99 <= {TARGET_P99_US:.0f} µs; ratio {result['p99_us'] / TARGET_P99_US:.2f})")
    print(f"batch write: p50 {result['batch_p50_ms']:.1f} ms, p99 {result['batch_p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
