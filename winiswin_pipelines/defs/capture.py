"""Live market-data capture: the long-running `market_data_capture_job` and its supervisor sensor.

Pattern (dagster-notes.md §4, as `trading_session_job`): one long-running capture run, kept alive by
`market_data_capture_supervisor`. The job runs in-process, carries the `winiswin/lane:
market-data-capture` tag (dagster.yaml limits that lane to one run) and a `dagster/max_runtime`
(run monitoring is on); the capture ends itself a little earlier, cleanly. It writes rows, gaps and
heartbeats to PostgreSQL (`book_snapshots`, `klines`, `market_data_gaps`, `market_data_captures`)
rather than a log line per message: the run's log gets one line per gap or lost connection and a
progress line every `report_every_seconds`, and its output metadata the totals and the gaps.

The sensor skips while a capture run is queued, starting or running; otherwise it launches the
next attempt of the UTC day under the run key `capture-<day>-a<attempt>` (run keys are deduplicated
forever, so a crashed or finished capture comes back under a new key). It is stopped by default: the
capture reaches Binance over the network, so it is turned on deliberately, in the UI.
"""

import datetime as dt
import json
import queue
from pathlib import Path

import dagster as dg
from pydantic import Field

from winiswin_pipelines import settings
from winiswin_pipelines.marketdata.binance import (
    BINANCE_FUTURES_REST,
    BINANCE_FUTURES_WS,
    DEFAULT_STREAMS_PER_CONNECTION,
    DEFAULT_WEIGHT_PER_MINUTE,
)
from winiswin_pipelines.marketdata.live_capture import (
    CaptureConfig,
    CaptureResult,
    MarketDataCapture,
    run_capture_in_thread,
)
from winiswin_pipelines.marketdata.livebook import Gap
from winiswin_pipelines.marketdata.repository import stale_captures
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource
from winiswin_pipelines.supervision import ATTEMPT_TAG, LANE_TAG, run_in_flight

LANE = "market-data-capture"
CAPTURE_TAG = "winiswin/capture"
CAPTURE_MAX_RUNTIME = dt.timedelta(hours=24)
# The capture ends itself before Dagster would kill it, so it can write what it holds and stop cleanly.
CAPTURE_MAX_DURATION = CAPTURE_MAX_RUNTIME - dt.timedelta(minutes=10)
_GAPS_LISTED = 50


class MarketDataCaptureConfig(dg.Config):
    capture_id: str = Field(default="", description="names the heartbeat row and the files; empty: manual-<run id>")
    symbols: list[str] = Field(default=[], description="empty: WINISWIN_CAPTURE_SYMBOLS (default BTCUSDT,ETHUSDT)")
    ws_url: str = Field(default=BINANCE_FUTURES_WS)
    rest_url: str = Field(default=BINANCE_FUTURES_REST)
    depth_stream: str = Field(default="depth@100ms", description="the diff-depth stream of each symbol")
    kline_interval: str = Field(default="1m", description="closed klines of this interval go to `klines`")
    book_cadence_ms: int = Field(default=1000, description="a book snapshot every N ms of exchange time "
                                 "(the import's default grid)")
    book_depth: int = Field(default=10, description="levels kept per side in each snapshot")
    streams_per_connection: int = Field(default=DEFAULT_STREAMS_PER_CONNECTION,
                                        description="Binance allows 1024; a symbol takes 2 streams")
    snapshot_limit: int = Field(default=1000, description="levels of each REST depth snapshot (weight 20 at 1000)")
    rest_weight_per_minute: int = Field(default=DEFAULT_WEIGHT_PER_MINUTE,
                                        description="REST request weight allowed a minute (Binance: 2400 per IP)")
    flush_seconds: float = Field(default=2.0, description="rows, gaps and the heartbeat are written this often")
    max_messages: int = Field(default=0, description="stop after this many websocket messages; 0: no limit")
    max_duration_seconds: float = Field(default=CAPTURE_MAX_DURATION.total_seconds())
    stop_after_idle_seconds: float = Field(default=0, description="stop when no message came for this long; "
                                           "0: never (for replays and tests)")
    raw_capture: bool = Field(default=False, description="also write every message to compressed capture files "
                              "in the import's format, stored in cold storage under market_captures/")
    raw_capture_dir: str = Field(default="", description="spool of the capture files being written; empty: "
                                 "$WINISWIN_STATE_DIR/capture_spool")
    source: str = Field(default="binance:live", description="the `source` of the rows written")
    report_every_seconds: float = Field(default=900, description="a progress line in the run's log this often")

    def capture_config(self) -> CaptureConfig:
        spool = Path(self.raw_capture_dir) if self.raw_capture_dir else settings.state_dir() / "capture_spool"
        return CaptureConfig(
            symbols=tuple(self.symbols or settings.capture_symbols()), ws_url=self.ws_url, rest_url=self.rest_url,
            depth_stream=self.depth_stream, kline_interval=self.kline_interval,
            book_cadence=dt.timedelta(milliseconds=self.book_cadence_ms), book_depth=self.book_depth,
            streams_per_connection=self.streams_per_connection, snapshot_limit=self.snapshot_limit,
            rest_weight_per_minute=self.rest_weight_per_minute, flush_seconds=self.flush_seconds,
            max_messages=self.max_messages or None,
            max_duration=dt.timedelta(seconds=self.max_duration_seconds) if self.max_duration_seconds else None,
            stop_after_idle=dt.timedelta(seconds=self.stop_after_idle_seconds) if self.stop_after_idle_seconds else None,
            raw_capture_dir=spool if self.raw_capture else None, source=self.source,
        )


@dg.op(description="Captures Binance's depth diffs and klines of the configured symbols into book_snapshots and "
       "klines, with gaps and heartbeats, until bounded or terminated.")
def market_data_capture(
    context: dg.OpExecutionContext, config: MarketDataCaptureConfig, postgres: PostgresResource,
    cold_storage: ColdStorageResource,
) -> dg.Output[None]:
    try:
        capture_config = config.capture_config()
    except ValueError as error:
        raise dg.Failure(f"market_data_capture config: {error}") from None
    capture_id = config.capture_id or f"manual-{context.run_id[:8]}"
    notices: queue.Queue[tuple[str, str]] = queue.Queue()
    capture = MarketDataCapture(
        postgres.manager, capture_config, capture_id=capture_id, run_id=context.run_id,
        cold_store=cold_storage.store() if capture_config.raw_capture_dir else None,
        notify=lambda level, message: notices.put((level, message)),
    )
    next_report = [dt.datetime.now(dt.UTC) + dt.timedelta(seconds=config.report_every_seconds)]

    def idle() -> None:  # on this (the op's) thread: Dagster's log calls stay here
        while not notices.empty():
            level, message = notices.get_nowait()
            getattr(context.log, level)(message)
        now = dt.datetime.now(dt.UTC)
        if capture.stream is not None and now >= next_report[0]:
            next_report[0] = now + dt.timedelta(seconds=config.report_every_seconds)
            stats = capture.stream.stats
            in_sync = sum(book.is_synced for book in capture.stream.books.values())
            context.log.info(f"capture {capture_id}: {stats.messages:,} messages, {capture.book_rows:,} book rows, "
                             f"{capture.kline_rows:,} klines, {in_sync}/{len(capture.stream.books)} books in sync, "
                             f"{stats.reconnects} reconnects")

    context.log.info(f"capture {capture_id}: {', '.join(capture_config.symbols)} from {capture_config.ws_url}")
    result = run_capture_in_thread(capture, idle=idle)
    context.log.info(f"capture {capture_id} {result.status}: {result.messages:,} messages in "
                     f"{result.wall_seconds:.1f} s, {result.book_rows:,} book rows, {result.kline_rows:,} klines, "
                     f"{len(result.gaps)} gaps")
    return dg.Output(None, metadata=capture_metadata(result))


def capture_metadata(result: CaptureResult) -> dict[str, object]:
    open_gaps = [gap for gap in result.gaps if gap.is_open]
    return {
        "capture_id": result.capture_id,
        "status": result.status,
        "symbols": ", ".join(result.symbols),
        "messages": dg.MetadataValue.int(result.messages),
        "messages_per_second": dg.MetadataValue.float(round(result.messages_per_second, 1)),
        "book_snapshot_rows": dg.MetadataValue.int(result.book_rows),
        "kline_rows": dg.MetadataValue.int(result.kline_rows),
        "gaps": dg.MetadataValue.int(len(result.gaps)),
        "open_gaps": dg.MetadataValue.int(len(open_gaps)),
        "gap_list": dg.MetadataValue.md(gap_table(result.gaps)),
        "connections_opened": dg.MetadataValue.int(result.connections),
        "reconnects": dg.MetadataValue.int(result.reconnects),
        "depth_snapshots": dg.MetadataValue.int(result.snapshots),
        "failed_writes": dg.MetadataValue.int(result.flush_failures),
        "wall_seconds": dg.MetadataValue.float(round(result.wall_seconds, 1)),
        "last_message_at": result.last_message_at.isoformat() if result.last_message_at else "none",
        "raw_capture_files": dg.MetadataValue.md("\n".join(f"- {name}" for name in result.raw_files) or "none"),
    }


def gap_table(gaps: list[Gap]) -> str:
    if not gaps:
        return "none"
    lines = ["| symbol | from (exchange time, UTC) | until | seconds | reason |", "|---|---|---|---|---|"]
    for gap in gaps[:_GAPS_LISTED]:
        until = gap.end_time.isoformat() if gap.end_time else "still open"
        seconds = f"{gap.duration.total_seconds():.1f}" if gap.duration is not None else ""
        lines.append(f"| {gap.symbol} | {gap.start_time.isoformat()} | {until} | {seconds} | {gap.reason} |")
    if len(gaps) > _GAPS_LISTED:
        lines.append(f"\n{len(gaps) - _GAPS_LISTED} more in market_data_gaps")
    return "\n".join(lines)


@dg.job(
    tags={LANE_TAG: LANE, "dagster/max_runtime": str(int(CAPTURE_MAX_RUNTIME.total_seconds()))},
    executor_def=dg.in_process_executor,
    description="The long-running live market-data capture (one at a time: the market-data-capture lane is "
    "limited to 1 run).",
)
def market_data_capture_job():
    market_data_capture()


@dg.sensor(job=market_data_capture_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Keeps exactly one market-data capture run alive; restarts a crashed or finished one under "
           "a new run key.")
def market_data_capture_supervisor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    state = json.loads(context.cursor) if context.cursor else {"day": None, "attempt": 0}
    if run := run_in_flight(context.instance, market_data_capture_job.name):
        return dg.SkipReason(f"capture run {run.run_id} ({run.tags.get(CAPTURE_TAG)}) is {run.status.value}")
    symbols = settings.capture_symbols()
    if not symbols:
        return dg.SkipReason("WINISWIN_CAPTURE_SYMBOLS names no symbol: nothing to capture")
    day = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    attempt = state["attempt"] + 1 if state["day"] == day else 1
    run_key = f"capture-{day}-a{attempt}"
    config = MarketDataCaptureConfig(capture_id=run_key, symbols=symbols)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, run_config=dg.RunConfig(ops={"market_data_capture": config}),
                                    tags={CAPTURE_TAG: run_key, ATTEMPT_TAG: str(attempt)})],
        cursor=json.dumps({"day": day, "attempt": attempt}),
    )


HEARTBEAT_MAX_AGE = dt.timedelta(minutes=5)


@dg.asset_check(asset="book_snapshots", description="A capture marked running has written within the last 5 minutes.")
def capture_heartbeat_fresh(postgres: PostgresResource) -> dg.AssetCheckResult:
    """Fails when a running capture has not written for 5 minutes: it is stuck, or died without saying so."""
    stale = stale_captures(postgres.manager, HEARTBEAT_MAX_AGE)
    return dg.AssetCheckResult(
        passed=not stale,
        metadata={"stale_captures": dg.MetadataValue.md(
            "\n".join(f"- {capture}: last heartbeat {at or 'never'}" for capture, at in stale) or "none"),
                  "max_age_minutes": HEARTBEAT_MAX_AGE.total_seconds() / 60},
    )


capture_heartbeat_job = dg.define_asset_job(
    "capture_heartbeat_job", selection=dg.AssetSelection.checks(capture_heartbeat_fresh),
    description="Checks the live capture's heartbeat.",
)

capture_heartbeat_every_5_minutes = dg.ScheduleDefinition(
    name="capture_heartbeat_every_5_minutes", job=capture_heartbeat_job, cron_schedule="*/5 * * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs capture_heartbeat_fresh every 5 minutes (it passes while no capture is marked running).",
)
