"""Benchmark: replay the bundled ~8-minute capture through the trading session, against real time.

Target (issue 6): replaying the capture through the strategy runs at least 50x faster than real
time. Measured end to end with a fresh `ReplayFeed` (parse the captures, rebuild the books, build
the klines) through the whole session: strategy, risk rules, paper execution, the trade recorder
and the session's heartbeats and decisions in PostgreSQL. The session loop alone (books and klines
already built) is measured too, so the feed's and the loop's shares are visible side by side.
Both strategy profiles run: `default` (which the 7 one-minute bars of the capture never warm up)
and `short_horizon` (which trades them). Runs on --database-url, else on a throwaway embedded
PostgreSQL in a temporary folder.

    .venv/bin/python benchmarks/bench_replay.py [--repeat 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.scratch import scratch_database
from winiswin_pipelines.marketdata.feed import ReplayFeed
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines.trading.session import SessionConfig
from winiswin_pipelines.trading.strategy import StrategyConfig

TARGET_SPEEDUP = 50.0
PROFILES = {"default": StrategyConfig(), "short_horizon": StrategyConfig.short_horizon()}


class Preloaded:
    """The replay's events, already built: times the session loop on its own."""

    def __init__(self, events):
        self._events = events

    async def events(self):
        for event in self._events:
            yield event


def replay(manager: DatabaseManager, name: str, feed, profile: str) -> tuple[float, object]:
    config = SessionConfig(strategy=PROFILES[profile], interval="1m", flatten_on_end=True)
    started = time.perf_counter()
    result = run_session(manager, session_id=name, mode="paper", feed=feed, config=config,
                         symbols=["BTCUSDT", "ETHUSDT"])
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", help="a server to create a scratch database on (default: a throwaway embedded server)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
        os.environ["WINISWIN_STATE_DIR"] = str(Path(folder) / "state")  # the recorder's spool
        with scratch_database(Path(folder), args.database_url) as manager:
            events = ReplayFeed().load()
            span = (events[-1].time - events[0].time).total_seconds()
            print(f"capture: {len(events):,} events (klines and 1 s book snapshots, BTCUSDT + ETHUSDT), "
                  f"{span:.0f} s of market time ({events[0].time:%Y-%m-%d %H:%M:%S} -> {events[-1].time:%H:%M:%S} UTC)")
            for profile in PROFILES:
                end_to_end, loop_only = [], []
                for n in range(args.repeat):
                    seconds, result = replay(manager, f"bench-{profile}-e2e-{n}", ReplayFeed(), profile)
                    end_to_end.append(seconds)
                    loop_only.append(replay(manager, f"bench-{profile}-loop-{n}", Preloaded(events), profile)[0])
                best, median, loop = min(end_to_end), statistics.median(end_to_end), min(loop_only)
                print(f"[{profile}] {len(result.closed)} trades, {len(result.decisions)} decisions, "
                      f"status {result.status}")
                print(f"  end to end (feed + session): best {best:.2f} s, median {median:.2f} s -> "
                      f"{span / best:,.0f}x real time (target {TARGET_SPEEDUP:.0f}x; ratio "
                      f"{span / best / TARGET_SPEEDUP:.2f})")
                print(f"  session loop alone         : best {loop:.2f} s -> {span / loop:,.0f}x real time, "
                      f"{len(events) / loop:,.0f} events/s; feed build {max(best - loop, 0):.2f} s")


if __name__ == "__main__":
    main()
