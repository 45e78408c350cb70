"""Market data import: Binance kline CSVs and recorded websocket captures -> `klines`, `book_snapshots`.

Both assets are daily-partitioned by UTC day and idempotent (rows are upserted; re-running a day
changes nothing). With `rest_backfill`, `klines` also fetches from Binance's `/fapi/v1/klines` the
days of `backfill_symbols` that no file covers (paged, within a request-weight budget); the daily
schedule turns it on, so a day the capture missed is filled from Binance's own bars. A range of days imports in one run (`BackfillPolicy.single_run()`), reading each
source file once. A day's book needs the state left by the day before (the REST snapshot is taken
once, when recording starts), so the previous day's capture is replayed too and only the day's
own rows are written.
`funding_rates` fetches each day's funding events from Binance's `/fapi/v1/fundingRate` (paged,
within its own request limit): what backtests and paper sessions charge positions held across them.
"""

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.catalog import table_asset
from winiswin_pipelines.db.bulk import UpsertResult
from winiswin_pipelines.defs.partitions import daily_partitions
from winiswin_pipelines.marketdata.binance import BINANCE_FUTURES_REST, DEFAULT_WEIGHT_PER_MINUTE, BinanceAPIError
from winiswin_pipelines.marketdata.capture import CaptureMessage, RejectedLine, read_capture
from winiswin_pipelines.marketdata.feed import kline_from_stream
from winiswin_pipelines.marketdata.funding import FUNDING_COLUMNS, fetch_funding_rates, funding_frame
from winiswin_pipelines.marketdata.kline_backfill import days_without_files, fetch_klines
from winiswin_pipelines.marketdata.klines import (
    KLINE_COLUMNS,
    complete_klines_from_trades,
    read_kline_csv,
    trades_from_capture,
)
from winiswin_pipelines.marketdata.orderbook import (
    BookSnapshotter,
    InvalidPeriod,
    snapshot_frame,
)
from winiswin_pipelines.marketdata.repository import (
    count_crossed_books,
    count_inconsistent_klines,
    write_book_snapshots,
    write_klines,
)
from winiswin_pipelines.marketdata.samples import MARKET_SAMPLES_DIR, CaptureFile, MarketFiles, scan_market_folder
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines.trading.repository import write_funding_rates


class MarketImportConfig(dg.Config):
    source_dir: str = Field(
        default="", description="folder of Binance kline CSVs and captures; empty: the bundled samples"
    )
    book_cadence_ms: int = Field(default=1000, description="book snapshot every N ms of exchange time")
    book_depth: int = Field(default=10, description="levels kept per side in each snapshot")
    capture_kline_interval: str = Field(default="1m", description="interval of the bars built from captured trades")
    rest_backfill: bool = Field(default=False, description="klines: fetch the days no file covers from Binance's "
                                "/fapi/v1/klines (reaches the network)")
    backfill_symbols: list[str] = Field(default=[], description="symbols backfilled; empty: WINISWIN_CAPTURE_SYMBOLS")
    backfill_interval: str = Field(default="1m", description="interval of the backfilled bars")
    rest_url: str = Field(default=BINANCE_FUTURES_REST)
    rest_weight_per_minute: int = Field(default=DEFAULT_WEIGHT_PER_MINUTE,
                                        description="request weight allowed a minute (Binance: 2400 per IP)")

    def files(self) -> MarketFiles:
        return scan_market_folder(Path(self.source_dir) if self.source_dir else MARKET_SAMPLES_DIR)


def _window(context: dg.AssetExecutionContext) -> tuple[dt.datetime, dt.datetime]:
    window = context.partition_time_window
    return window.start, window.end


def _days(start: dt.datetime, end: dt.datetime) -> tuple[dt.date, dt.date]:
    """First and last UTC day of [start, end)."""
    return start.date(), (end - dt.timedelta(days=1)).date()


def _upsert_metadata(result: UpsertResult) -> dict[str, int]:
    return {"dagster/row_count": result.rows, **result.counts()}


def _time_range(frame: pd.DataFrame, column: str) -> str:
    if frame.empty:
        return "no rows"
    return f"{frame[column].min():%Y-%m-%d %H:%M:%S} -> {frame[column].max():%Y-%m-%d %H:%M:%S} UTC"


def _capture_chains(files: MarketFiles, first: dt.date, last: dt.date) -> dict[str, list[CaptureFile]]:
    """Per symbol, the captures of [first - 1 day, last] in day order (the day before holds the book's
    starting snapshot and the first minutes' trades)."""
    chains: dict[str, list[CaptureFile]] = {}
    for capture in sorted(files.captures_between(first - dt.timedelta(days=1), last), key=lambda c: c.day):
        chains.setdefault(capture.symbol, []).append(capture)
    return {symbol: chain for symbol, chain in chains.items() if chain[-1].day >= first}


def _messages(chain: list[CaptureFile], kinds: set[str], rejected: list[RejectedLine]) -> Iterator[CaptureMessage]:
    return itertools.chain.from_iterable(read_capture(c.path, kinds=kinds, rejected=rejected) for c in chain)


def _rejected_metadata(context: dg.AssetExecutionContext, rejected: list[RejectedLine]) -> dict[str, object]:
    for line in rejected:
        context.log.warning(f"rejected {line.path.name}:{line.line_number}: {line.reason}")
    examples = "\n".join(f"- {r.path.name}:{r.line_number}: {r.reason}" for r in rejected[:5])
    return {"rejected_lines": len(rejected), "rejected_examples": dg.MetadataValue.md(examples or "none")}


def _capture_klines(
    chain: list[CaptureFile], symbol: str, interval: str, rejected: list[RejectedLine]
) -> pd.DataFrame:
    """Complete bars built from the captured trades, then the closed klines the capture recorded from
    Binance's kline stream (the live capture's files hold those), which win where both exist."""
    trade_messages, closed = [], []
    for message in _messages(chain, {"trade", "aggTrade", f"kline_{interval}"}, rejected):
        if message.kind in ("trade", "aggTrade"):
            trade_messages.append(message)
        elif message.data.get("k", {}).get("x"):
            closed.append(kline_from_stream(message.data))
    frame = complete_klines_from_trades(trades_from_capture(trade_messages), symbol=symbol, interval=interval,
                                        source="capture:trades")
    if closed:
        recorded = pd.DataFrame([astuple(event)[:-1] for event in closed], columns=list(KLINE_COLUMNS[:-1]))
        recorded["source"] = "capture:klines"
        frame = pd.concat([frame, recorded], ignore_index=True) if len(frame) else recorded
    return frame


@dg.asset(
    **table_asset("klines"),
    group_name="market_data",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"postgres", "pandas"},
    pool="pg_write",
    description="Binance USDT-M klines: official kline CSVs, plus complete bars built from captured MARKET trades.",
)
def klines(
    context: dg.AssetExecutionContext, config: MarketImportConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    start, end = _window(context)
    first, last = _days(start, end)
    files = config.files()
    frames, rejected, backfill_metadata = [], [], {}
    if config.rest_backfill:
        frame, backfill_metadata = _rest_backfill(context, config, files, first, last)
        frames.append(frame)
    for symbol, chain in _capture_chains(files, first, last).items():
        context.log.info(f"{symbol}: bars from the trades of {', '.join(c.path.name for c in chain)}")
        frames.append(_capture_klines(chain, symbol, config.capture_kline_interval, rejected))
    # Official files last: where a capture bar has the same key, Binance's row wins within the batch.
    for kline_file in files.klines_between(first, last):
        context.log.info(f"reading {kline_file.path.name}")
        frames.append(read_kline_csv(kline_file.path, symbol=kline_file.symbol, interval=kline_file.interval))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(KLINE_COLUMNS))
    frame = frame[(frame["open_time"] >= start) & (frame["open_time"] < end)]
    frame = frame.drop_duplicates(["symbol", "interval", "open_time"], keep="last")
    result = write_klines(postgres.manager, frame)
    context.log.info(f"klines {first}..{last}: {result}")
    return dg.MaterializeResult(metadata={
        **_upsert_metadata(result),
        "symbols": ", ".join(sorted(frame["symbol"].unique())) or "none",
        "intervals": ", ".join(sorted(frame["interval"].unique())) or "none",
        "time_range": _time_range(frame, "open_time"),
        "days": f"{first} .. {last}",
        **backfill_metadata,
        **_rejected_metadata(context, rejected),
    })


def _rest_backfill(
    context: dg.AssetExecutionContext, config: MarketImportConfig, files: MarketFiles, first: dt.date, last: dt.date
) -> tuple[pd.DataFrame, dict[str, object]]:
    symbols = config.backfill_symbols or settings.capture_symbols()
    wanted = days_without_files(files, symbols, first, last)
    if not wanted:
        return pd.DataFrame(columns=list(KLINE_COLUMNS)), {"rest_backfill": "every day has a file"}
    for symbol, days in wanted.items():
        context.log.info(f"{symbol}: {len(days)} days without a file, fetched from {config.rest_url}/fapi/v1/klines")
    try:
        fetched = fetch_klines(config.rest_url, wanted, config.backfill_interval,
                               weight_per_minute=config.rest_weight_per_minute)
    except (BinanceAPIError, ValueError) as error:
        raise dg.Failure(f"kline backfill of {', '.join(wanted)} from {config.rest_url} failed: {error}") from None
    listing = "\n".join(f"- {symbol}: {', '.join(str(d) for d in days)}" for symbol, days in wanted.items())
    return fetched.frame, {
        "rest_backfill_rows": len(fetched.frame),
        "rest_backfill_requests": fetched.requests,
        "rest_backfill_days": dg.MetadataValue.md(listing),
        "rest_weight_wait_seconds": round(fetched.waited_seconds, 1),
    }


@dg.asset(
    **table_asset("book_snapshots"),
    group_name="market_data",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"postgres", "pandas"},
    pool="pg_write",
    description="Top-of-book and top-N levels sampled on an exchange-time grid from L2 books rebuilt "
    "from captures by Binance's futures rules (no snapshot while the book is out of sync).",
)
def book_snapshots(
    context: dg.AssetExecutionContext, config: MarketImportConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    start, end = _window(context)
    first, last = _days(start, end)
    cadence = dt.timedelta(milliseconds=config.book_cadence_ms)
    frames, gaps, invalid, rejected = [], [], [], []
    for symbol, chain in _capture_chains(config.files(), first, last).items():
        context.log.info(f"{symbol}: rebuilding the book from {', '.join(c.path.name for c in chain)}")
        snapshotter = BookSnapshotter(symbol, cadence, config.book_depth)
        for message in _messages(chain, {"depth", "rest_depth"}, rejected):
            snapshotter.process(message)
        frame = snapshotter.frame()
        frame = frame[(frame["exchange_time"] >= start) & (frame["exchange_time"] < end)].copy()
        file_of_day = {c.day: f"capture:{c.path.name}"[:64] for c in chain}
        frame["source"] = frame["exchange_time"].dt.date.map(file_of_day)
        context.log.info(f"{symbol}: {len(frame):,} snapshots, {len(snapshotter.gaps)} gaps in the files read")
        frames.append(frame)
        gaps += [(symbol, gap) for gap in snapshotter.gaps if start <= gap.exchange_time < end]
        invalid += [(symbol, period) for period in snapshotter.invalid_periods if _overlaps(period, start, end)]
    frame = pd.concat(frames, ignore_index=True) if frames else snapshot_frame([])
    result = write_book_snapshots(postgres.manager, frame)
    context.log.info(f"book_snapshots {first}..{last}: {result}; {len(gaps)} gaps")
    return dg.MaterializeResult(metadata={
        **_upsert_metadata(result),
        "symbols": ", ".join(sorted(frame["symbol"].unique())) or "none",
        "time_range": _time_range(frame, "exchange_time"),
        "days": f"{first} .. {last}",
        "cadence_ms": config.book_cadence_ms,
        "depth": config.book_depth,
        "gaps_detected": len(gaps),
        "invalid_book_periods": len(invalid),
        "invalid_periods": dg.MetadataValue.md(_invalid_table(invalid)),
        **_rejected_metadata(context, rejected),
    })


def _overlaps(period: InvalidPeriod, start: dt.datetime, end: dt.datetime) -> bool:
    return (period.start is None or period.start < end) and (period.end is None or period.end > start)


def _invalid_table(invalid: list[tuple[str, InvalidPeriod]]) -> str:
    if not invalid:
        return "none"
    lines = ["| symbol | from | until | reason |", "|---|---|---|---|"]
    for symbol, period in invalid:
        start, end = period.start or "start of data", period.end or "end of data"
        lines.append(f"| {symbol} | {start} | {end} | {period.reason} |")
    return "\n".join(lines)


def _partition_bounds(context: dg.AssetCheckExecutionContext) -> tuple[dt.datetime, dt.datetime]:
    window = context.op_execution_context.partition_time_window
    return window.start, window.end


@dg.asset_check(asset=book_snapshots, partitions_def=daily_partitions, blocking=True)
def book_snapshots_not_crossed(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult:
    """Every stored snapshot of the days has best bid < best ask (snapshots exist only while valid)."""
    total, crossed = count_crossed_books(postgres.manager, *_partition_bounds(context))
    return dg.AssetCheckResult(passed=crossed == 0, metadata={"snapshots": total, "crossed_or_locked": crossed})


@dg.asset_check(asset=klines, partitions_def=daily_partitions, blocking=True)
def klines_ohlc_consistent(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
    """low <= open, close <= high; taker buy volume within volume; non-negative volumes and counts."""
    total, bad = count_inconsistent_klines(postgres.manager, *_partition_bounds(context))
    return dg.AssetCheckResult(passed=bad == 0, metadata={"bars": total, "inconsistent": bad})


market_data_import_job = dg.define_asset_job(
    "market_data_import", selection=dg.AssetSelection.assets(klines, book_snapshots),
    description="Import a day of kline files and captures from the source folder.",
)


@dg.schedule(cron_schedule="20 0 * * *", job=market_data_import_job, execution_timezone="UTC")
def market_data_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Imports the UTC day that just ended (a recorder rolls its capture file at midnight); the klines
    of symbols without a file that day come from Binance's REST API."""
    day = (context.scheduled_execution_time.astimezone(dt.UTC) - dt.timedelta(days=1)).date()
    return dg.RunRequest(run_key=day.isoformat(), partition_key=day.isoformat(),
                         run_config={"ops": {"klines": {"config": {"rest_backfill": True}}}})


# A day's market data is expected by 01:00 UTC the next day (capture or import); the check fails otherwise.
market_data_freshness = dg.build_time_partition_freshness_checks(
    assets=[klines, book_snapshots], deadline_cron="0 1 * * *", timezone="UTC",
)
market_data_freshness_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=market_data_freshness, name="market_data_freshness_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
)


class FundingRatesConfig(dg.Config):
    symbols: list[str] = Field(default=[], description="symbols fetched; empty: WINISWIN_CAPTURE_SYMBOLS")
    rest_url: str = Field(default=BINANCE_FUTURES_REST)
    rest_weight_per_minute: int = Field(default=DEFAULT_WEIGHT_PER_MINUTE,
                                        description="request weight allowed a minute (Binance: 2400 per IP)")


@dg.asset(
    **table_asset("funding_rates"),
    group_name="market_data",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"postgres", "api"},
    pool="pg_write",
    description="Funding-rate history of USDT-M perpetuals from Binance's /fapi/v1/fundingRate (paged, within "
    "its 500-requests-per-5-minutes limit): what backtests and paper sessions charge open positions.",
)
def funding_rates(
    context: dg.AssetExecutionContext, config: FundingRatesConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    start, end = _window(context)
    symbols = config.symbols or settings.capture_symbols()
    context.log.info(f"funding rates of {', '.join(symbols)} {start:%Y-%m-%d}..{end:%Y-%m-%d} from {config.rest_url}")
    try:
        fetched = fetch_funding_rates(config.rest_url, symbols, start, end,
                                      weight_per_minute=config.rest_weight_per_minute)
    except (BinanceAPIError, ValueError) as error:
        raise dg.Failure(f"funding rates of {', '.join(symbols)} from {config.rest_url} failed: {error}") from None
    frame = funding_frame(fetched.rates)
    result = write_funding_rates(postgres.manager, list(frame[list(FUNDING_COLUMNS)].itertuples(index=False, name=None)))
    context.log.info(f"funding_rates {start:%Y-%m-%d}..{end:%Y-%m-%d}: {result}")
    return dg.MaterializeResult(metadata={
        **_upsert_metadata(result),
        "symbols": ", ".join(symbols),
        "time_range": _time_range(frame, "funding_time"),
        "requests": fetched.requests,
        "rest_wait_seconds": round(fetched.waited_seconds, 1),
        "rates": dg.MetadataValue.md(_funding_table(frame)),
    })


def _funding_table(frame: pd.DataFrame) -> str:
    """Per symbol: events, mean and extreme rates (in % per funding)."""
    if frame.empty:
        return "no funding events"
    lines = ["| symbol | events | mean rate | min | max |", "|---|---|---|---|---|"]
    for symbol, rates in frame.groupby("symbol")["funding_rate"]:
        lines.append(f"| {symbol} | {len(rates)} | {rates.mean():+.4%} | {rates.min():+.4%} | {rates.max():+.4%} |")
    return "\n".join(lines)
