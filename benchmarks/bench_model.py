"""Benchmark: purged k-fold splits and average uniqueness, vectorised vs a plain pandas loop of the same rules.

Target (issue 14): 1,000,000 labels in seconds, not minutes. The labels sit on 1-minute bars, one
starting on every bar, each ending 1 to 240 bars later at random (as triple-barrier labels do, so
the ends are not monotonic). The plain loops, one sample at a time as AFML writes them (written here
and in the tests, not in the package), are timed on the first `--sample` labels and extrapolated
linearly to all of them: the split loop makes n_splits passes over the samples, the uniqueness loop
two `.loc` slices per label, so both grow linearly with the number of labels. On that sample the
vectorised code must give the same splits and the same weights.

    .venv/bin/python benchmarks/bench_model.py [--labels 1000000] [--sample 20000] [--splits 5]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from winiswin_pipelines.ml import PurgedKFold, average_uniqueness, concurrent_events

TARGET_SECONDS = 10.0
LONGEST_LABEL_BARS = 240


def purged_kfold_loop(info: pd.Series, n_splits: int, pct_embargo: float) -> list[tuple[list[int], list[int]]]:
    """Issue 14's rule one sample at a time: window [t0_i, max t1 of the fold], strict inequalities, embargo."""
    t0, t1 = info.index, info
    embargo = int(len(info) * pct_embargo)
    folds = []
    for block in np.array_split(np.arange(len(info)), n_splits):
        i, j = int(block[0]), int(block[-1]) + 1
        window_start, window_end = t0[i], t1.iloc[i:j].max()
        train, embargoed = [], 0
        for k in tqdm(range(len(info)), desc="split loop", unit="sample", leave=False):
            if i <= k < j:
                continue
            if t0[k] > window_end:
                if embargoed < embargo:
                    embargoed += 1
                    continue
                train.append(k)
            elif t1.iloc[k] < window_start:
                train.append(k)
        folds.append((train, list(range(i, j))))
    return folds


def uniqueness_loop(t1: pd.Series, close_index: pd.DatetimeIndex) -> pd.Series:
    """AFML snippets 4.1-4.2: count the labels on each bar with `.loc` slices, then average 1/c per label."""
    count = pd.Series(0, index=close_index)
    for start, end in tqdm(t1.items(), total=len(t1), desc="concurrency loop", unit="label", leave=False):
        count.loc[start:end] += 1
    weights = [
        (1.0 / count.loc[start:end]).mean()
        for start, end in tqdm(t1.items(), total=len(t1), desc="uniqueness loop", unit="label", leave=False)
    ]
    return pd.Series(weights, index=t1.index)


def timed(run):
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def best_of(repeat: int, run):
    runs = [timed(run) for _ in range(repeat)]
    return min(seconds for seconds, _ in runs), runs[-1][1]


def all_splits(info: pd.Series, n_splits: int, pct_embargo: float) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(PurgedKFold(n_splits, info, pct_embargo).split(info))


def fsum_uniqueness_error(info: pd.Series, bars: pd.DatetimeIndex, weights: pd.Series, sample: int) -> float:
    """Largest relative error of the running-sum means at full size, against an exact sum per sampled label."""
    with np.errstate(divide="ignore"):  # bars after the last label have none; no label averages them
        inverse = 1.0 / concurrent_events(info, bars).to_numpy().astype(float)
    first = bars.searchsorted(info.index[:sample], side="left")
    stop = bars.searchsorted(pd.DatetimeIndex(info.iloc[:sample]), side="right")
    exact = np.array([math.fsum(inverse[a:b]) / (b - a) for a, b in zip(first, stop, strict=True)])
    return float(np.max(np.abs(weights.to_numpy()[:sample] / exact - 1)))


def report(name: str, n: int, vectorised_s: float, loop_s: float, sample: int, agree: str) -> None:
    extrapolated_s = loop_s * n / sample
    verdict = "met" if vectorised_s <= TARGET_SECONDS else "NOT met"
    print(f"{name}")
    print(f"  {f'vectorised, {n:,} labels':<36} {vectorised_s:8.3f} s   target <= {TARGET_SECONDS:.0f} s: {verdict}")
    print(f"  {f'pandas loop, first {sample:,} labels':<36} {loop_s:8.3f} s   -> {extrapolated_s:,.0f} s for {n:,} "
          f"(extrapolated linearly, x{n / sample:,.0f})")
    print(f"  speed-up {extrapolated_s / vectorised_s:,.0f}x; {agree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="labels run through the pandas loops")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--embargo", type=float, default=0.01, help="pct_embargo")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    rng = np.random.default_rng(42)
    bars = pd.date_range("2024-01-01", periods=args.labels + LONGEST_LABEL_BARS, freq="1min", tz="UTC")
    ends = np.arange(args.labels) + rng.integers(1, LONGEST_LABEL_BARS + 1, args.labels)
    info = pd.Series(bars[ends], index=bars[: args.labels].rename("t0"), name="t1")
    head = info.iloc[: args.sample]
    print(f"{args.labels:,} labels on 1-minute bars, one per bar, each 1 to {LONGEST_LABEL_BARS} bars long; "
          f"PurgedKFold(n_splits={args.splits}, pct_embargo={args.embargo})\n")

    split_s, _ = best_of(args.repeat, lambda: all_splits(info, args.splits, args.embargo))
    loop_s, loop_splits = timed(lambda: purged_kfold_loop(head, args.splits, args.embargo))
    same = [(train.tolist(), test.tolist()) for train, test in all_splits(head, args.splits, args.embargo)] == loop_splits
    report(f"PurgedKFold: all {args.splits} (train, test) splits, best of {args.repeat}", args.labels, split_s,
           loop_s, args.sample, "same splits on the sample" if same else "MISMATCH on the sample")

    unique_s, weights = best_of(args.repeat, lambda: average_uniqueness(info, bars))
    head_bars = bars[: args.sample + LONGEST_LABEL_BARS]
    loop_s, expected = timed(lambda: uniqueness_loop(head, head_bars))
    difference = float(np.max(np.abs(average_uniqueness(head, head_bars).to_numpy() / expected.to_numpy() - 1)))
    full_error = fsum_uniqueness_error(info, bars, weights, 2_000)
    print()
    report(f"average_uniqueness, best of {args.repeat}", args.labels, unique_s, loop_s, args.sample,
           f"largest relative difference on the sample {difference:.1e}, at full size vs an exact sum {full_error:.1e}")
    assert same and difference < 1e-9 and full_error < 1e-9


if __name__ == "__main__":
    main()
