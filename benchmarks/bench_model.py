"""Benchmark: purged k-fold splits and average uniqueness, vectorised vs a plain pandas loop of the same rules;
then training the signal model and predicting one row with it.

Targets (issue 14): 1,000,000 labels in seconds, not minutes; training on 1,000,000 rows x 20 features
within 60 s on 2 cores; one prediction within 1 ms at p99 (as a trading session makes them: one row,
the model loaded once). The labels sit on 1-minute bars, one
starting on every bar, each ending 1 to 240 bars later at random (as triple-barrier labels do, so
the ends are not monotonic). The plain loops, one sample at a time as AFML writes them (written here
and in the tests, not in the package), are timed on the first `--sample` labels and extrapolated
linearly to all of them: the split loop makes n_splits passes over the samples, the uniqueness loop
two `.loc` slices per label, so both grow linearly with the number of labels. On that sample the
vectorised code must give the same splits and the same weights.

The model part trains `ml.training.fit` (the LightGBM booster the `signal_model` asset keeps, with its
default parameters and uniqueness weights) on 1,000,000 labelled rows of 20 features whose labels
overlap, and reports the whole protocol of the asset too (purged CV, the walk-forward model and the
kept one: n_splits + 2 fits). Inference is `SignalModel.predict_proba` on one row at a time, the
model loaded from its text as the registry stores it.

    .venv/bin/python benchmarks/bench_model.py [--labels 1000000] [--sample 20000] [--splits 5]
        [--train-rows 1000000] [--features 20] [--predictions 20000] [--no-protocol] [--only splits|model]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from winiswin_pipelines.marketdata.feed import BookEvent
from winiswin_pipelines.ml import PurgedKFold, average_uniqueness, concurrent_events
from winiswin_pipelines.ml.model import SignalModel
from winiswin_pipelines.ml.training import ModelParams, TrainingConfig, fit, train_signal_model, training_data
from winiswin_pipelines.trading.model_gate import ModelChoice, ModelGate

TARGET_SECONDS = 10.0
TRAIN_TARGET_SECONDS = 60.0
# The signal model's features (defs/models.py: MODEL_FEATURES), as the gate computes them from the book.
GATE_FEATURES = ("obi", "obi_depth", "spread_pct", "hour_sin", "hour_cos", "dow_sin", "dow_cos", "ofi", "ret_short",
                 "realized_vol")
PREDICT_TARGET_MS = 1.0
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


def model_dataset(rows: int, features: int, seed: int = 7) -> pd.DataFrame:
    """Dataset-like rows on 1-minute bars: `features` columns, three of which carry a weak signal, and a
    triple-barrier-like label (-1, 0, 1) ending 1 to LONGEST_LABEL_BARS bars later."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, features)).astype(np.float64)
    latent = values[:, :3] @ np.array([0.6, -0.4, 0.3]) + rng.normal(size=rows)
    bars = pd.date_range("2024-01-01", periods=rows + LONGEST_LABEL_BARS, freq="1min", tz="UTC")
    frame = pd.DataFrame(values, columns=[f"feature_{i:02d}" for i in range(features)])
    frame["ts"] = bars[:rows]
    frame["label_t1"] = bars[np.arange(rows) + rng.integers(1, LONGEST_LABEL_BARS + 1, rows)]
    frame["label"] = np.select([latent > 0.5, latent < -0.5], [1, -1], 0)
    return frame


def percentile_us(latencies_ns: np.ndarray, q: float) -> float:
    return float(np.percentile(latencies_ns, q)) / 1_000


def bench_training(args) -> None:
    frame = model_dataset(args.train_rows, args.features)
    columns = [c for c in frame.columns if c.startswith("feature_")]
    params = ModelParams()
    print(f"signal model: {args.train_rows:,} rows x {len(columns)} features, LightGBM {params.num_boost_round} "
          f"rounds x 3 classes, {params.num_leaves} leaves, {params.num_threads} threads")
    prepare_s, data = timed(lambda: training_data(frame, columns))
    print(f"  {'rows -> X, y, t1, uniqueness weights':<44} {prepare_s:8.1f} s")
    fit_s, model = timed(lambda: fit(data, params))
    verdict = "met" if fit_s <= TRAIN_TARGET_SECONDS else "NOT met"
    print(f"  {'fit (the model the asset keeps)':<44} {fit_s:8.1f} s   target <= {TRAIN_TARGET_SECONDS:.0f} s: {verdict}")
    if args.protocol:
        config = TrainingConfig(n_splits=args.splits, pct_embargo=args.embargo)
        protocol_s, result = timed(lambda: train_signal_model(data, config))
        print(f"  {f'whole protocol ({args.splits} purged folds + 2 fits)':<44} {protocol_s:8.1f} s   "
              f"out-of-sample log loss {result.oos.log_loss:.4f} vs class prior {result.baseline_log_loss:.4f}")
    bench_inference(model, data.features.to_numpy(np.float64), args.predictions)
    bench_session_inference(min(args.predictions, 5_000))


def bench_inference(model: SignalModel, rows: np.ndarray, predictions: int) -> None:
    """One row at a time, as a trading session asks: the model loaded once from the registry's text format."""
    load_s, loaded = timed(lambda: SignalModel.from_text(model.booster.model_to_string(), model.features))
    for row in rows[:200]:  # warm-up
        loaded.predict_proba(row)
    latencies = np.empty(predictions, dtype=np.int64)
    for i, row in enumerate(rows[:predictions]):
        started = time.perf_counter_ns()
        loaded.predict_proba(row)
        latencies[i] = time.perf_counter_ns() - started
    p99_ms = percentile_us(latencies, 99) / 1_000
    verdict = "met" if p99_ms <= PREDICT_TARGET_MS else "NOT met"
    print(f"  {'load the model from its text (once)':<44} {load_s * 1_000:8.1f} ms")
    print(f"  {f'predict one row, {predictions:,} calls':<44} p50 {percentile_us(latencies, 50):6.0f} us, "
          f"p99 {percentile_us(latencies, 99):6.0f} us, max {latencies.max() / 1_000:8.0f} us   "
          f"target p99 <= {PREDICT_TARGET_MS:.0f} ms: {verdict}")


def session_model(rows: int = 100_000) -> SignalModel:
    """A model of the default size on the microstructure features, as the registry hands it to a session."""
    frame = model_dataset(rows, len(GATE_FEATURES)).rename(
        columns={f"feature_{i:02d}": name for i, name in enumerate(GATE_FEATURES)})
    return fit(training_data(frame, GATE_FEATURES), ModelParams())


def books(count: int, seed: int = 11) -> list[BookEvent]:
    """Ten levels a side every 100 ms (a live feed's pace), a random walk of the mid."""
    rng = np.random.default_rng(seed)
    start, mid, events = dt.datetime(2024, 7, 18, tzinfo=dt.UTC), 60_000.0, []
    for step in range(count):
        mid += rng.normal(scale=2.0)
        bids, asks = [mid - 0.05 - i * 0.1 for i in range(10)], [mid + 0.05 + i * 0.1 for i in range(10)]
        bid_sizes, ask_sizes = rng.uniform(0.1, 5, 10).tolist(), rng.uniform(0.1, 5, 10).tolist()
        events.append(BookEvent("BTCUSDT", start + dt.timedelta(milliseconds=100 * step), None, step, bids[0],
                                bid_sizes[0], asks[0], ask_sizes[0], bids, bid_sizes, asks, ask_sizes))
    return events


def bench_session_inference(predictions: int) -> None:
    """Inference inside the session: on an entry signal the gate computes the features of the newest book
    it kept (from the last 61 s of books, as the training rows were made) and predicts one row."""
    gate = ModelGate(ModelChoice("bench", 1, session_model(), 0.5))
    events = books(700 + predictions * 10)
    for event in events[:700]:  # 70 s: every feature window observed
        gate.on_book(event)
    latencies = np.empty(predictions, dtype=np.int64)
    for i in range(predictions):
        for event in events[700 + i * 10: 710 + i * 10]:  # a second of books between two signals
            gate.on_book(event)
        now = events[709 + i * 10].exchange_time
        started = time.perf_counter_ns()
        judged = gate.judge("BTCUSDT", "LONG" if i % 2 else "SHORT", now)
        latencies[i] = time.perf_counter_ns() - started
        assert judged.probability is not None
    p99_ms = percentile_us(latencies, 99) / 1_000
    verdict = "met" if p99_ms <= PREDICT_TARGET_MS else "NOT met"
    print(f"  {f'inference inside the session, {predictions:,} calls':<44} p50 {percentile_us(latencies, 50):6.0f} us, "
          f"p99 {percentile_us(latencies, 99):6.0f} us, max {latencies.max() / 1_000:8.0f} us   "
          f"target p99 <= {PREDICT_TARGET_MS:.0f} ms: {verdict}")
    print("    (features of the newest book from its window, then one prediction: trading.model_gate.ModelGate.judge)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="labels run through the pandas loops")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--embargo", type=float, default=0.01, help="pct_embargo")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--predictions", type=int, default=20_000, help="one-row predictions timed")
    parser.add_argument("--no-protocol", dest="protocol", action="store_false",
                        help="skip timing the asset's whole protocol (n_splits + 2 fits)")
    parser.add_argument("--only", choices=["splits", "model"], help="run one part only")
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    if args.only != "model":
        bench_splits(args)
    if args.only != "splits":
        print()
        bench_training(args)


def bench_splits(args) -> None:
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
