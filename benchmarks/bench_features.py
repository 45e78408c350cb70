"""Benchmark: microstructure features in memory.

Target (issue 5): at least 2,000,000 snapshots/s for `compute_features` on 10-level books (obi,
depth obi, spread, mid, micro-price, cyclic time, OFI, short return and realised volatility), with
some locked, crossed and one-sided books and missing levels mixed in. Best of --repeat runs.

    .venv/bin/python benchmarks/bench_features.py [--snapshots 1000000] [--levels 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from winiswin_pipelines.features import BookArrays, FeatureConfig, compute_features

TARGET_PER_S = 2_000_000


def synthetic_book(n: int, levels: int, seed: int = 1) -> BookArrays:
    """A BTCUSDT-like book on a 0.1 tick, one snapshot every ~100 ms on average."""
    rng = np.random.default_rng(seed)
    mid = 28_000 + np.cumsum(rng.normal(0, 0.3, n)).round(1)
    half_spread = rng.choice([0.05, 0.05, 0.05, 0.1, 0.0], n)
    steps = np.arange(levels) * 0.1
    bids, asks = (mid - half_spread)[:, None] - steps, (mid + half_spread)[:, None] + steps
    bid_qty, ask_qty = rng.exponential(2, (n, levels)).round(3), rng.exponential(2, (n, levels)).round(3)
    bid_qty[rng.random((n, levels)) < 0.01] = np.nan  # missing levels
    crossed = rng.random(n) < 0.001
    bids[crossed, 0] = asks[crossed, 0] + 0.1
    asks[rng.random(n) < 0.001, 0] = np.nan  # one-sided
    ts = 1_680_652_800_000_000_000 + np.cumsum(rng.integers(1, 200, n)) * 1_000_000
    return BookArrays(ts, bids, bid_qty, asks, ask_qty)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=1_000_000)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    book = synthetic_book(args.snapshots, args.levels)
    config = FeatureConfig(depth_levels=args.levels)
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        features = compute_features(book, config)
        timings.append(time.perf_counter() - started)
    best, median = min(timings), float(np.median(timings))
    states = features["book_state"].value_counts().to_dict()
    print(f"{args.snapshots:,} snapshots x {args.levels} levels, "
          f"{pd.Timedelta(int(book.ts[-1] - book.ts[0]), 'ns')} of book; states {states}")
    print(f"compute_features  best {best:.3f} s  {args.snapshots / best:>12,.0f} snapshots/s   "
          f"median {median:.3f} s  {args.snapshots / median:>12,.0f} snapshots/s")
    print(f"target {TARGET_PER_S:,} snapshots/s: {'met' if args.snapshots / best >= TARGET_PER_S else 'NOT met'} "
          f"({args.snapshots / best / TARGET_PER_S:.2f}x best, {args.snapshots / median / TARGET_PER_S:.2f}x median)")


if __name__ == "__main__":
    main()
