"""Benchmark: triple-barrier labels, vectorised vs a per-event pandas loop of the same semantics.

Targets (issue 5): 1,000,000 bars with a 240-bar vertical barrier and an event on every bar in at
most 2 s, and at least 100x faster per event than a per-event pandas loop (the AFML snippet 3.2
style, written here and not in the package) measured in the same run on a sample of events; the two
must agree on every label, first-touch time, barrier and return.

    .venv/bin/python benchmarks/bench_labels.py [--bars 1000000] [--horizon 240] [--sample 2000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from winiswin_pipelines.labels import get_return_vol, get_triple_barrier_label

TARGET_SECONDS = 2.0
TARGET_RATIO = 100


def per_event_pandas_loop(price: pd.Series, vol: pd.Series, horizon: int, pt_sl, events) -> pd.DataFrame:
    """One event at a time, as AFML snippet 3.2 does it: slice the path, compare returns, take the first touch."""
    rows = []
    for t0 in tqdm(events, desc="pandas loop", unit="event", leave=False):
        target = vol.loc[t0]
        if not target > 0:
            continue
        start = price.index.get_loc(t0)
        vertical = start + horizon
        path = price.iloc[start : vertical + 1]
        returns = path / price.loc[t0] - 1
        upper = returns[returns > pt_sl[0] * target].index.min()
        lower = returns[returns < -pt_sl[1] * target].index.min()
        touches = pd.Series({"upper": upper, "lower": lower}).dropna()
        if len(touches):
            barrier = touches.astype("datetime64[ns, UTC]").idxmin()
            t1 = touches[barrier]
        elif vertical < len(price):
            barrier, t1 = "vertical", price.index[vertical]
        else:
            continue  # not finished: no label yet
        label = {"upper": 1, "lower": -1, "vertical": 0}[barrier]
        rows.append((t0, label, price.loc[t1] / price.loc[t0] - 1, t1, barrier))
    return pd.DataFrame(rows, columns=["t0", "label", "ret", "t1", "barrier"]).set_index("t0")


def timed(run):
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--horizon", type=int, default=240)
    parser.add_argument("--sample", type=int, default=2_000, help="events labelled by the pandas loop")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    rng = np.random.default_rng(42)
    index = pd.date_range("2024-01-01", periods=args.bars, freq="1min", tz="UTC")
    price = pd.Series(30_000 * np.exp(np.cumsum(rng.normal(0, 6e-4, args.bars))), index=index).round(1)
    vol = get_return_vol(price, pd.Timedelta(minutes=args.horizon), span=500).reindex(index)
    pt_sl = (1.0, 1.0)

    timings = []
    for _ in range(args.repeat):
        seconds, labels = timed(lambda: get_triple_barrier_label(price, vol, args.horizon, pt_sl=pt_sl))
        timings.append(seconds)
    vectorised_s = min(timings)
    events = rng.choice(index[args.horizon + 1000:], size=args.sample, replace=False)
    events = pd.DatetimeIndex(np.sort(events))
    loop_s, reference = timed(lambda: per_event_pandas_loop(price, vol, args.horizon, pt_sl, events))
    sample_s, sample = timed(lambda: get_triple_barrier_label(price, vol, args.horizon, pt_sl=pt_sl, events=events))

    full = labels.reindex(reference.index)
    agree = ((full["label"] == reference["label"]) & (full["t1"] == reference["t1"])
             & (full["barrier"] == reference["barrier"]) & (full["ret"] == reference["ret"]))
    per_event_vectorised = vectorised_s / len(labels)
    per_event_loop = loop_s / len(reference)
    ratio = per_event_loop / per_event_vectorised
    print(f"{args.bars:,} bars, vertical barrier {args.horizon} bars, an event on every bar, pt_sl {pt_sl}: "
          f"{len(labels):,} labels {labels['label'].value_counts().to_dict()}")
    print(f"vectorised, every bar   best {vectorised_s:6.3f} s (of {args.repeat})  "
          f"{len(labels) / vectorised_s:>12,.0f} events/s   target <= {TARGET_SECONDS} s: "
          f"{'met' if vectorised_s <= TARGET_SECONDS else 'NOT met'}")
    print(f"pandas loop, sample     {loop_s:6.3f} s  {len(reference) / loop_s:>12,.0f} events/s  "
          f"({len(reference):,} events)")
    print(f"vectorised, same sample {sample_s:6.3f} s  {len(sample) / sample_s:>12,.0f} events/s")
    verdict = "met" if ratio >= TARGET_RATIO and loop_s / sample_s >= TARGET_RATIO else "NOT met"
    print(f"speed-up: {ratio:,.0f}x per event (every bar vs the loop), {loop_s / sample_s:,.0f}x on the same sample; "
          f"target >= {TARGET_RATIO}x: {verdict}")
    print(f"agreement on the sample: {int(agree.sum()):,} of {len(reference):,} events "
          f"(label, t1, barrier and return) {'- all agree' if agree.all() else '- MISMATCH'}")
    pd.testing.assert_frame_equal(sample, full, check_names=False)


if __name__ == "__main__":
    main()
