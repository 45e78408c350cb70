"""The steps of `make run`, in order: each materializes an area's assets on the bundled sample data
and returns the lines to print."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from winiswin_pipelines import settings
from winiswin_pipelines.archive import read_history
from winiswin_pipelines.archive.archiver import days_to_archive, first_kept_day
from winiswin_pipelines.archive.repository import has_hot_rows
from winiswin_pipelines.archive.tables import ARCHIVED_TABLES
from winiswin_pipelines.defs.capture import MarketDataCaptureConfig
from winiswin_pipelines.defs.partitions import daily_partitions, day_runs, range_tags, register_legacy_stores
from winiswin_pipelines.defs.trading import TradingSessionConfig
from winiswin_pipelines.demo.runner import DemoRunner, checks_verdict, materialization
from winiswin_pipelines.legacy.sniff import discover_stores
from winiswin_pipelines.legacy.sources import all_sources
from winiswin_pipelines.marketdata.feed import DEFAULT_CAPTURES
from winiswin_pipelines.marketdata.repository import read_capture_row, snapshot_days
from winiswin_pipelines.resources import LegacyFolderResource
from winiswin_pipelines.trading.repository import session_trades
from winiswin_pipelines_tests.binance_server import LocalBinanceServer  # the project's own server, on 127.0.0.1

Step = Callable[[DemoRunner], list[str]]

_MARKET_DAYS = {
    "klines": [("2023-04-01", "2023-04-30"), ("2024-07-18", "2024-07-19")],
    "book_snapshots": [("2023-04-04", "2023-04-05"), ("2024-07-18", "2024-07-19")],
}


def live_capture(runner: DemoRunner) -> list[str]:
    """The live capture job on loopback: the project's local Binance server replays the bundled capture
    over a real websocket; the job writes the book rows the import makes, with its gaps and heartbeat."""
    with LocalBinanceServer(replay=DEFAULT_CAPTURES) as server:
        config = MarketDataCaptureConfig(capture_id="demo-replay", symbols=["BTCUSDT", "ETHUSDT"],
                                         ws_url=server.ws_url, rest_url=server.rest_url, flush_seconds=0.5,
                                         stop_after_idle_seconds=2)
        runner.execute_job("market_data_capture_job", dg.RunConfig(ops={"market_data_capture": config}))
    row = read_capture_row(runner.manager, "demo-replay")
    seconds = (row.stopped_at - row.started_at).total_seconds()
    return [f"market_data_capture_job, local server replaying the bundled 8-minute capture: {row.messages:,} "
            f"messages in {seconds:.1f} s, {row.book_rows:,} book snapshots, {row.kline_rows} klines, "
            f"{row.gaps} gaps ({row.status})"]


def market_data(runner: DemoRunner) -> list[str]:
    lines = []
    for asset, ranges in _MARKET_DAYS.items():
        for first, last in ranges:
            result = runner.materialize(asset, tags=range_tags(first, last))
            m = materialization(result, asset)
            detail = f"{m['gaps_detected']} gaps" if asset == "book_snapshots" else f"intervals {m['intervals']}"
            lines.append(f"{asset} {first}..{last}: {m['dagster/row_count']:,} rows ({m['inserted']:,} new, "
                         f"{m['unchanged']:,} unchanged), {m['symbols']}; {checks_verdict(result)}; {detail}")
    return lines


def _each_book_day_run(runner: DemoRunner, asset: str, describe: Callable[[dict[str, Any]], str]) -> list[str]:
    lines = []
    for first, last in day_runs(snapshot_days(runner.manager)):
        result = runner.materialize(asset, tags=range_tags(first, last))
        verdict = f"; {checks_verdict(result)}" if result.get_asset_check_evaluations() else ""
        lines.append(f"{first}..{last}: {describe(materialization(result, asset))}{verdict}")
    return lines or ["no book snapshots stored: nothing to do"]


def features(runner: DemoRunner) -> list[str]:
    return _each_book_day_run(
        runner, "microstructure_features",
        lambda m: f"{m['dagster/row_count']:,} feature rows ({m['inserted']:,} new), {m['symbols']}; "
        f"{m['skipped_crossed_books']} crossed and {m['skipped_one_sided_books']} one-sided books skipped",
    )


def labels(runner: DemoRunner) -> list[str]:
    return _each_book_day_run(
        runner, "triple_barrier_labels",
        lambda m: f"{m['labelled']:,} labelled ({m['labels']}), {m['pending_next_day']} pending the next day",
    )


def dataset(runner: DemoRunner) -> list[str]:
    return _each_book_day_run(
        runner, "training_dataset", lambda m: f"{m['dagster/row_count']:,} rows to {m['dataset']}",
    )


def signal_model(runner: DemoRunner) -> list[str]:
    """A small LightGBM model on every bundled dataset day, registered in MLflow; its check says
    whether it beats the class prior out of sample (only then is it the `champion`)."""
    result = runner.materialize("signal_model", ops={"signal_model": {"config": {"days": 0}}}, raise_on_error=False)
    m = materialization(result, "signal_model")
    (check,) = result.get_asset_check_evaluations()
    verdict = ("beats the class prior: registered as champion" if check.passed else
               "no better than the class prior out of sample: registered, not promoted to champion")
    return [
        f"{m['model_name']} version {m['model_version']} on {m['days']}: {m['dagster/row_count']:,} rows",
        f"out-of-sample log loss {m['oos_log_loss']:.3f} vs class prior {m['baseline_log_loss']:.3f}: {verdict}",
        f"tracking in PostgreSQL (database mlflow), artifacts at {m['artifacts']}",
    ]


def model_gated_backtest(runner: DemoRunner) -> list[str]:
    """The strategy gated by a signal model, against rules only, on days the model never saw: a model
    trained on the July 2024 days replays the April 2023 days that have book snapshots."""
    trained = runner.materialize("signal_model", ops={"signal_model": {"config": {"days": 2}}}, raise_on_error=False)
    model = materialization(trained, "signal_model")
    first, last = "2023-04-04", "2023-04-05"
    config = {"model": str(model["model_version"]), "min_win_probability": 0.4}
    result = runner.materialize("backtest", tags=range_tags(first, last), ops={"backtest": {"config": config}})
    m = materialization(result, "backtest")
    return [f"signal_model version {model['model_version']} trained on {model['days']}; replayed {first}..{last}",
            *m["comparison"].splitlines()]


def legacy_migration(runner: DemoRunner) -> list[str]:
    folder = settings.SAMPLE_DATA_DIR / "legacy"
    stores, skipped = discover_stores(folder)
    keys = [store.relpath for store in stores]
    register_legacy_stores(runner.instance, keys)  # what the discovery sensor does for WINISWIN_LEGACY_DIR
    result = runner.materialize("legacy_trades", tags=range_tags(keys[0], keys[-1]),
                                resources={"legacy_folder": LegacyFolderResource(legacy_dir=str(folder))})
    m = materialization(result, "legacy_trades")
    lines = [f"{folder}: {len(keys)} trade stores", *m["summary"].splitlines()]
    lines += [f"skipped {file.relpath}: {file.reason}" for file in skipped]
    lines += [f"original {Path(row.path).name} ({row.size:,} B, sha256 {row.sha256[:12]}...) kept in cold storage: "
              f"{row.cold_uri}" for row in all_sources(runner.manager)]
    evaluations = result.get_asset_check_evaluations()
    lines.append(f"accounting check: {'passed' if evaluations and all(e.passed for e in evaluations) else 'FAILED'}")
    return lines


_BACKTEST_PROFILES = {
    "scalping": "the former default: the stored 5m bars, stops from 0.3%",
    "default": "1h bars made of the stored 5m ones, stops of two ATRs and at least 0.6%",
}


def backtest(runner: DemoRunner) -> list[str]:
    """Both profiles on the same month: the fee burner first, then the default (whose trades stay recorded)."""
    lines = []
    for profile, what in _BACKTEST_PROFILES.items():
        lines += _backtest_profile(runner, profile, what)
    return lines


def _backtest_profile(runner: DemoRunner, profile: str, what: str) -> list[str]:
    first, last = "2023-04-01", "2023-04-30"
    result = runner.materialize("backtest", tags=range_tags(first, last),
                                ops={"backtest": {"config": {"strategy_profile": profile}}})
    m = materialization(result, "backtest")
    win_rate = f"{m['win_rate']:.1%}" if isinstance(m["win_rate"], float) else "n/a"
    return [
        f"profile {profile!r} ({what}): {m['symbols']}, {first}..{last}; {checks_verdict(result)}",
        f"{m['trades']} trades, win rate {win_rate}",
        f"PnL {m['pnl']:+,.2f} USDT ({m['return_pct']:+.2%} of the paper account), "
        f"max drawdown {m['max_drawdown']:,.2f} USDT",
        f"costs (in the PnL): {m['costs']}",
        f"cost model: {m['cost_model']}",
        f"exits: {m['exit_reasons']}",
    ]


def paper_session(runner: DemoRunner) -> list[str]:
    session_id = "sample-replay"  # a fixed id: a second `make run` rewrites the same rows (deterministic replay)
    # Eight minutes hold 7 one-minute bars per symbol: the short-horizon profile can trade them.
    config = TradingSessionConfig(session_id=session_id, strategy_profile="short_horizon", max_events=100_000)
    runner.execute_job("trading_session_job", dg.RunConfig(ops={"trading_session": config}))
    decisions, trades = session_trades(runner.manager, session_id)
    lines = [f"session {session_id}: {len(decisions)} decisions, {len(trades)} trades"]
    lines += [
        f"{t.side:<5} {t.symbol} {t.quantity:.3f} @ {t.entry_price:,.2f} ({t.entry_time:%H:%M:%S}) -> "
        f"{t.exit_price or 0:,.2f} ({t.exit_time:%H:%M:%S}) {t.exit_reason}: PnL {t.pnl:+.2f} USDT"
        for t in trades
    ]
    return lines


def archival(runner: DemoRunner) -> list[str]:
    keep_from = first_kept_day(settings.retention_days())
    days = [day for day in days_to_archive(runner.manager, keep_from) if day >= daily_partitions.start.date()]
    if not days:
        return ["no day older than the retention has rows in PostgreSQL"]
    keys = [f"archive/{table}" for table in ARCHIVED_TABLES]
    totals: dict[str, dict[str, int]] = {}
    waiting: list[str] = []
    passed = checked = 0
    # First as the schedule runs it: a day of a table leaves once the assets reading it have used it
    # (that day and the next). The sample data ends where no next day follows, so the rest is forced.
    for force in (False, True):
        for first, last in day_runs(days, max_hole=1):  # one single-run backfill per block of days
            result = runner.materialize(*keys, tags=range_tags(first, last),
                                        ops={"cold_archive": {"config": {"force": force}}})
            waiting += [] if force else _waiting(result)
            for key in keys:
                _add_archived(totals, key.removeprefix("archive/"), result)
            checks = result.get_asset_check_evaluations()
            passed, checked = passed + sum(check.passed for check in checks), checked + len(checks)
    lines = [f"{table:<20} {t['days']:>3} day(s) {t['rows']:>9,} rows -> {t['bytes']:>10,} B of Parquet; "
             f"table on disk {t['before']:,} B -> {t['after']:,} B" for table, t in totals.items()]
    lines.append(f"{len(waiting)} table-day(s) first waited for their readers, then were forced, e.g. {waiting[0]}"
                 if waiting else "no table-day had to wait for its readers")
    lines.append(f"manifest matches storage: {passed}/{checked} checks passed")
    history = read_history("klines", days[0], days[-1] + dt.timedelta(days=1), ["BTCUSDT"], manager=runner.manager)
    still_hot = [day for day in days_to_archive(runner.manager, keep_from) if day >= days[0]]
    lines.append(f"history reader: klines BTCUSDT {days[0]}..{days[-1]} -> {len(history):,} rows "
                 f"({history['open_time'].min()} .. {history['open_time'].max()}) read back from cold storage; "
                 f"days older than the retention still in PostgreSQL: {len(still_hot)}")
    return lines


def _waiting(result: dg.ExecuteInProcessResult) -> list[str]:
    """'<table> <day> waits for <readers>' of the run's waiting observations."""
    lines = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            observation = event.event_specific_data.asset_observation
            if "waiting_for" in observation.metadata:
                readers = observation.metadata["waiting_for"].value.replace("- ", "").replace("\n", "; ")
                lines.append(f"{observation.asset_key.path[-1]} {observation.partition} waits for {readers}")
    return lines


def _add_archived(totals: dict[str, dict[str, int]], table: str, result: dg.ExecuteInProcessResult) -> None:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == table]
    if not events:
        return
    # A range run repeats its metadata for every day of the range: the first event says it all.
    m = {key: value.value for key, value in events[0].materialization.metadata.items()}
    if m.get("status") not in (None, "archived"):  # a day archived before: counted then
        return
    total = totals.setdefault(table, {"days": 0, "rows": 0, "bytes": 0, "before": m["table_bytes_on_disk_before"]})
    total["days"] += m.get("days_archived", 1 if m["dagster/row_count"] else 0)
    total["rows"] += m["dagster/row_count"]
    total["bytes"] += m["bytes"]
    total["after"] = m["table_bytes_on_disk_after"]


def archived_day_again(runner: DemoRunner) -> list[str]:
    """An archived day re-materialized: its rows are read in place from cold storage and recompute
    unchanged, so nothing is written back to PostgreSQL; archiving again keeps the day as it is."""
    day = dt.date(2024, 7, 18)
    def rows():
        return read_history("training_features", day, day + dt.timedelta(days=1), manager=runner.manager)
    before = rows()
    result = runner.materialize("microstructure_features", "triple_barrier_labels", tags=range_tags(day, day))
    m = materialization(result, "microstructure_features")
    with runner.manager.engine.connect() as conn:
        hot = {table: has_hot_rows(conn, ARCHIVED_TABLES[table], day) for table in ("book_snapshots", "training_features")}
    same = before.equals(rows())
    runner.materialize(*(f"archive/{t}" for t in hot), tags=range_tags(day, day),
                       ops={"cold_archive": {"config": {"force": True}}})
    return [
        f"{day}: {len(before):,} training_features rows in cold storage; re-materialized features and labels: "
        f"{m['dagster/row_count']:,} rows, {m['unchanged']:,} unchanged; {checks_verdict(result)}",
        "hot rows of the day afterwards: " + ", ".join(f"{t} {'SOME' if any_hot else 'none'}" for t, any_hot in hot.items())
        + " (read in place: nothing restored, nothing rewritten)",
        f"read_history before and after: {'identical in every column' if same else 'DIFFERENT'}; "
        f"identical after archiving again: {rows().equals(before)}",
    ]


STEPS: list[tuple[str, Step]] = [
    ("Live capture: market_data_capture_job against the local Binance server replaying a capture", live_capture),
    ("Market data: Binance klines and order-book snapshots from the bundled samples", market_data),
    ("Microstructure features for the days with book snapshots", features),
    ("Triple-barrier labels for the same days", labels),
    ("Training dataset (Parquet, Hive-partitioned by date)", dataset),
    ("Signal model: LightGBM on the dataset, purged CV, registered in MLflow", signal_model),
    ("Legacy migration: the bundled legacy samples", legacy_migration),
    ("Backtest: April 2023 BTCUSDT klines through the strategy (paper execution, source 'backtest')", backtest),
    ("Model-gated backtest: the strategy with and without the signal model, on days the model never saw",
     model_gated_backtest),
    ("Paper trading: a bounded session over the bundled 8-minute BTCUSDT + ETHUSDT capture (ReplayFeed)",
     paper_session),
    ("Archival: the sample days (all older than 30 days) to the local cold folder, read back", archival),
    ("An archived day re-materialized through cold storage", archived_day_again),
]
