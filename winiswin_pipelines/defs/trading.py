"""Trading: the long-running session job, its supervisor sensor, and the daily backtest asset.

Pattern (dagster-notes.md §4): one long-running `trading_session_job` run per session, kept alive
by `trading_session_supervisor`. The job runs in-process, carries the `winiswin/lane: live-trading`
tag (dagster.yaml limits that lane to one run) and a `dagster/max_runtime` (run monitoring is on),
and writes heartbeats and decisions to PostgreSQL rather than a log line per tick. The sensor
skips while a session run is queued or running; otherwise it launches the next attempt of the
day's session under the run key `<session>-a<attempt>` (run keys are deduplicated forever, so a
crashed session comes back under a new key). It is stopped by default: turn it on in the UI.
"""

import datetime as dt
import json
import os
import time
from dataclasses import replace
from functools import partial
from typing import Literal

import dagster as dg
from pydantic import Field

from winiswin_pipelines import factories, settings
from winiswin_pipelines.catalog import table_asset
from winiswin_pipelines.defs.partitions import daily_partitions, partition_days
from winiswin_pipelines.marketdata.binance import BINANCE_FUTURES_REST, BINANCE_FUTURES_WS
from winiswin_pipelines.marketdata.feed import BinanceFeed, MarketFeed, ReplayFeed
from winiswin_pipelines.resources import ColdStorageResource, ModelRegistryResource, PostgresResource
from winiswin_pipelines.supervision import ATTEMPT_TAG, IN_FLIGHT, LANE_TAG, run_in_flight
from winiswin_pipelines.trading import comparison, halts, monitoring, repository
from winiswin_pipelines.trading.backtest import SOURCE as BACKTEST_SOURCE
from winiswin_pipelines.trading.backtest import backtest_day
from winiswin_pipelines.trading.execution import MAKER_FEE_RATE, TAKER_FEE_RATE, LiveTradingRefused, PaperExecutor
from winiswin_pipelines.trading.funding import FundingSchedule
from winiswin_pipelines.trading.model_gate import MODEL_NAME, ModelChoice
from winiswin_pipelines.trading.performance import Performance, summarize
from winiswin_pipelines.trading.risk import RiskConfig
from winiswin_pipelines.trading.runner import check_mode, flatten_and_halt, run_session_in_thread
from winiswin_pipelines.trading.session import SessionConfig
from winiswin_pipelines.trading.strategy import PROFILES

SESSION_TAG = "winiswin/session"
# The run queue starts higher priorities first; batch work keeps the default 0.
LIVE_PRIORITY = {"dagster/priority": "10"}
SAFETY_PRIORITY = {"dagster/priority": "20"}  # flatten_and_halt and clearing a halt go before everything
SESSION_MAX_RUNTIME = dt.timedelta(hours=6)
# The session ends itself a little before Dagster would kill it, so it can stop cleanly.
SESSION_MAX_DURATION = SESSION_MAX_RUNTIME - dt.timedelta(minutes=5)


class TradingParameters(dg.Config):
    """The knobs of the strategy and risk rules most often changed; the rest keep their defaults."""

    starting_equity: float = Field(default=RiskConfig.starting_equity, description="paper account, USDT")
    risk_per_trade: float = Field(default=RiskConfig.risk_per_trade, description="equity fraction lost at the stop")
    max_open_positions: int = Field(default=RiskConfig.max_open_positions)
    max_leverage: float = Field(default=RiskConfig.max_leverage, description="live: the leverage set per symbol")
    max_symbol_notional: float | None = Field(default=None, description="USDT per position; empty: no cap")
    max_total_notional: float | None = Field(default=None, description="USDT over all positions; empty: no cap")
    daily_loss_limit: float | None = Field(default=None, description="USDT lost since 00:00 UTC after which no "
                                           "entry (counted from the trades in PostgreSQL: survives restarts)")
    max_drawdown: float | None = Field(default=None, description="live: fraction of the peak equity lost after "
                                       "which everything is closed and trading halts until the halt is cleared")
    time_stop_minutes: float | None = Field(default=None, description="close any position held this long; "
                                            "empty: the profile's (default 24 h, scalping 2 h)")
    strategy_profile: Literal["default", "scalping", "short_horizon"] = Field(
        default="default", description="default: 1h bars, stops of at least 0.6% (several round trips of fees); "
        "scalping: the feed's bars, stops from 0.3% (the former default); short_horizon: periods of a few bars, "
        "for replays of a few minutes"
    )
    model: str = Field(default="", description="signal_model version ('3') or alias ('champion') gating the "
                       "entries: its probability of the trade's side is recorded as confidence and win_probability; "
                       "empty: rules only")
    min_win_probability: float = Field(default=0.5, ge=0, le=1, description="model-gated entries need the model's "
                                       "probability of the trade's side to reach this")
    min_confidence: float | None = Field(default=None, description="entry threshold; empty: the profile's (0.6)")
    adx_min: float | None = Field(default=None, description="minimum trend strength; empty: the profile's (20)")

    def session_config(self, **overrides) -> SessionConfig:
        profile = PROFILES[self.strategy_profile]
        time_stop = profile.time_stop if self.time_stop_minutes is None else dt.timedelta(minutes=self.time_stop_minutes)
        risk = RiskConfig(starting_equity=self.starting_equity, risk_per_trade=self.risk_per_trade,
                          max_open_positions=self.max_open_positions, max_leverage=self.max_leverage,
                          time_stop=time_stop, stop_atr_multiple=profile.stop_atr_multiple,
                          min_stop_pct=profile.min_stop_pct, reward_risk=profile.reward_risk,
                          max_symbol_notional=self.max_symbol_notional, max_total_notional=self.max_total_notional,
                          daily_loss_limit=self.daily_loss_limit, max_drawdown=self.max_drawdown)
        strategy = profile.strategy
        changes = {"min_confidence": self.min_confidence, "adx_min": self.adx_min}
        strategy = replace(strategy, **{name: value for name, value in changes.items() if value is not None})
        return SessionConfig(strategy=strategy, risk=risk, **overrides)


class SimulatedCosts(dg.Config):
    """What paper sessions and backtests pay (live pays the exchange's real fees and funding)."""

    taker_fee: float = Field(default=TAKER_FEE_RATE, ge=0, description="per fill (market orders), as a fraction; "
                             f"Binance's regular tier: taker {TAKER_FEE_RATE:.2%}, maker {MAKER_FEE_RATE:.2%}")
    slippage_bps: float = Field(default=1.0, ge=0, description="a fill's distance from the price where no stored "
                                "book can be walked (and beyond the book's levels)")
    assumed_funding_rate: float | None = Field(
        default=0.0001, description="charged at funding times the funding_rates table holds no rate for "
        "(0.01%: Binance's baseline in a calm market); empty: such times are not charged, only counted")

    def paper_executor(self) -> PaperExecutor:
        return PaperExecutor(fee_rate=self.taker_fee, slippage_bps=self.slippage_bps)

    def funding_schedule(self, postgres: PostgresResource) -> FundingSchedule:
        return FundingSchedule(partial(repository.read_funding_rates, postgres.manager), self.assumed_funding_rate)


def costs_line(performance: Performance, funding_times: dict[str, int]) -> str:
    """Fees, funding and slippage apart (all already in the PnL), and how the funding times were charged."""
    return (f"fees {performance.fees:,.2f} USDT, funding {performance.funding:+,.2f} USDT "
            f"({funding_times.get('charged', 0)} funding times from history, {funding_times.get('assumed', 0)} "
            f"at the assumed rate, {funding_times.get('unknown', 0)} unknown), slippage {performance.slippage:,.2f} USDT")


class TradingSessionConfig(TradingParameters, SimulatedCosts):
    session_id: str = Field(default="", description="empty: manual-<run id>")
    mode: Literal["paper", "live"] = Field(
        default="paper", description="live needs BINANCE_API_KEY, BINANCE_API_SECRET and WINISWIN_LIVE_TRADING=1"
    )
    feed: Literal["replay", "binance"] = Field(default="replay", description="replay: recorded captures")
    symbols: list[str] = Field(default=["BTCUSDT"], description="symbols of the Binance feed")
    capture_paths: list[str] = Field(
        default=[], description="replay feed captures; empty: the bundled BTCUSDT + ETHUSDT capture (2024-07-18/19)"
    )
    interval: str = Field(default="1m", description="kline interval traded")
    max_events: int = Field(default=0, description="stop after this many feed events; 0: no limit")
    max_duration_seconds: float = Field(default=SESSION_MAX_DURATION.total_seconds())
    flatten_on_end: bool = Field(default=True, description="close open positions when a replay feed ends")
    rest_url: str = Field(default=BINANCE_FUTURES_REST)
    ws_url: str = Field(default=BINANCE_FUTURES_WS)

    def build_feed(self) -> MarketFeed:
        if self.feed == "binance":
            return BinanceFeed(self.symbols, ws_url=self.ws_url, rest_url=self.rest_url, intervals=(self.interval,))
        return ReplayFeed(self.capture_paths or None, kline_interval=self.interval)


@dg.op(description="One trading session: feed -> strategy -> risk -> execution -> recorder, "
       "until bounded or terminated.")
def trading_session(context: dg.OpExecutionContext, config: TradingSessionConfig, postgres: PostgresResource,
                    model_registry: ModelRegistryResource) -> None:
    check_mode(config.mode)  # live without keys AND opt-in fails here, before anything starts
    if config.mode == "live" and config.feed != "binance":
        raise dg.Failure(f"live trading takes its prices from the binance feed, not {config.feed!r}")
    session_id = config.session_id or f"manual-{context.run_id[:8]}"
    model = gating_model(model_registry, config)  # loaded once, before the session starts
    session_config = config.session_config(
        interval=config.interval, max_events=config.max_events or None,
        max_duration=dt.timedelta(seconds=config.max_duration_seconds),
        flatten_on_end=config.flatten_on_end and config.feed == "replay", model=model,
    )
    gate = f", entries gated by {MODEL_NAME} version {model.version} ({model.reference!r})" if model else ""
    context.log.info(f"session {session_id}: {config.mode} trading on the {config.feed} feed{gate}")
    result = run_session_in_thread(
        postgres.manager, session_id=session_id, mode=config.mode, feed=config.build_feed(),
        config=session_config, symbols=config.symbols, run_id=context.run_id, rest_url=config.rest_url,
        ws_url=config.ws_url if config.mode == "live" else None,
        paper=config.paper_executor(), funding=config.funding_schedule(postgres),
    )
    performance = summarize(result.closed, result.starting_equity)
    context.log.info(
        f"session {session_id} {result.status}: {result.events:,} events in {result.wall_seconds:.1f} s, "
        f"{performance.trades} closed trades, PnL {performance.pnl:+.2f} USDT, "
        f"{len(result.open_positions)} positions left open; costs: {costs_line(performance, result.funding_times)}"
    )
    if result.reconciliation:  # live: what the exchange held at the last reconciliation, and what it changed
        reconciled = result.reconciliation
        context.log.info(
            f"session {session_id}: last reconciliation at {reconciled['at']}: positions {reconciled['positions']}, "
            f"wallet {reconciled['wallet_balance']:.2f} USDT, {reconciled['open_algo_orders']} open algo orders; "
            f"changes: {'; '.join(reconciled['changes']) or 'none'}"
        )


@dg.job(
    tags={LANE_TAG: "live-trading", "dagster/max_runtime": str(int(SESSION_MAX_RUNTIME.total_seconds())),
          **LIVE_PRIORITY},
    executor_def=dg.in_process_executor,
    description="The long-running trading session (one at a time: the live-trading lane is limited to 1 run).",
)
def trading_session_job():
    trading_session()


def supervised_mode() -> str:
    """Sessions the sensor starts trade live only with WINISWIN_LIVE_TRADING=1 (and the keys)."""
    return "live" if settings.live_trading_opt_in() else "paper"


def session_feed(mode: str) -> str:
    return "binance" if mode == "live" else settings.trading_feed()  # live prices only from the exchange


def session_run_config(session_run_key: str, mode: str) -> dg.RunConfig:
    config = TradingSessionConfig(session_id=session_run_key, mode=mode, feed=session_feed(mode))
    return dg.RunConfig(ops={"trading_session": config})


def _session_completed(instance: dg.DagsterInstance, session: str) -> bool:
    last = instance.get_run_records(dg.RunsFilter(job_name=trading_session_job.name, tags={SESSION_TAG: session}),
                                    limit=1)
    return bool(last) and last[0].dagster_run.status == dg.DagsterRunStatus.SUCCESS


@dg.sensor(job=trading_session_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Keeps exactly one trading-session run alive; restarts a crashed one under a new run key.")
def trading_session_supervisor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    state = json.loads(context.cursor) if context.cursor else {"session": None, "attempt": 0}
    if run := run_in_flight(context.instance, trading_session_job.name):
        return dg.SkipReason(f"session run {run.run_id} ({run.tags.get(SESSION_TAG)}) is {run.status.value}")
    mode = supervised_mode()
    try:
        check_mode(mode)
    except LiveTradingRefused as refused:  # a run would only fail: say why instead, once per tick
        return dg.SkipReason(str(refused))
    if mode == "live" and (blocking := session_blocking_halts()):
        return dg.SkipReason("live trading halted: " + "; ".join(halt.describe() for halt in blocking)
                             + " (run clear_trading_halt to resume)")
    session = f"{mode}-{dt.datetime.now(dt.UTC):%Y-%m-%d}"  # one session per UTC day and mode
    feed = session_feed(mode)
    if feed != "binance" and _session_completed(context.instance, session):
        # A live feed never runs out, so a finished live session restarts; a replay has nothing left.
        return dg.SkipReason(f"session {session} completed: the {feed} feed has nothing more to replay")
    attempt = state["attempt"] + 1 if state["session"] == session else 1
    run_key = f"{session}-a{attempt}"
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, run_config=session_run_config(run_key, mode),
                                    tags={SESSION_TAG: session, ATTEMPT_TAG: str(attempt)})],
        cursor=json.dumps({"session": session, "attempt": attempt}),
    )


def session_blocking_halts() -> list[halts.Halt]:
    """The open-ended halts in force. The sensor reads them from DATABASE_URL's server (or the embedded
    one) itself: it takes no resource, so its tests and ticks need no PostgreSQL outside live mode."""
    return [halt for halt in halts.halts_in_force(factories.database_manager()) if halt.blocks_sessions]


# -- account safety: flatten and halt, clear the halt ------------------------------------------------


class FlattenAndHaltConfig(dg.Config):
    note: str = Field(default="", description="why (kept with the halt)")
    rest_url: str = Field(default=BINANCE_FUTURES_REST)
    session_stop_timeout_seconds: float = Field(default=150.0, description="how long to wait for the running "
                                                "trading session to stop before closing the positions")


def _stop_session_run(context: dg.OpExecutionContext, timeout: float) -> None:
    """Terminate the trading session run in flight (its positions are closed by this run instead) and wait
    until it has stopped."""
    run = run_in_flight(context.instance, trading_session_job.name)
    if run is None:
        return
    context.log.info(f"terminating trading session run {run.run_id} first")
    context.instance.run_coordinator.cancel_run(run.run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = context.instance.get_run_by_id(run.run_id)
        if current is None or current.status not in IN_FLIGHT:
            return
        time.sleep(1.0)
    raise dg.Failure(f"the trading session run {run.run_id} did not stop within {timeout:g} s; the halt is "
                     "recorded, no position was closed: run flatten_and_halt again")


@dg.op(description="Halt live trading (recorded first, kept across restarts), stop the running session, then "
       "close every live position after cancelling its protection.")
def flatten_positions_and_halt(context: dg.OpExecutionContext, config: FlattenAndHaltConfig,
                               postgres: PostgresResource) -> None:
    halt = halts.halt_trading(postgres.manager, halts.FLATTEN_AND_HALT,
                              details={"note": config.note, "run_id": context.run_id})
    context.log.info(f"live trading halted: {halt.describe()}")
    _stop_session_run(context, config.session_stop_timeout_seconds)
    try:
        _, result = flatten_and_halt(postgres.manager, rest_url=config.rest_url, note=config.note,
                                     run_id=context.run_id)
    except LiveTradingRefused as refused:
        raise dg.Failure(f"the halt is recorded, but no position was closed: {refused}") from None
    closed = ", ".join(f"{c.symbol} {c.side} at {c.exit_price:g}" for c in result.closed) or "none"
    context.log.info(f"flatten_and_halt: closed {closed}")
    if result.open_positions:
        raise dg.Failure(f"still open after flattening (protected again, retry the job): "
                         f"{', '.join(p.symbol for p in result.open_positions)}")


@dg.job(tags=SAFETY_PRIORITY, executor_def=dg.in_process_executor,
        description="Close every live position and halt live trading until clear_trading_halt runs.")
def flatten_and_halt_job():
    flatten_positions_and_halt()


class ClearHaltConfig(dg.Config):
    reason: str = Field(default="", description="clear only the halts of this reason (max_drawdown, "
                        "daily_loss_limit, flatten_and_halt); empty: every halt in force")


@dg.op(description="Clear the trading halts in force: the supervisor starts live sessions again.")
def clear_halts(context: dg.OpExecutionContext, config: ClearHaltConfig, postgres: PostgresResource) -> None:
    cleared = halts.clear_halts(postgres.manager, reason=config.reason or None)
    context.log.info("cleared: " + ("; ".join(halt.describe() for halt in cleared) or "no halt was in force"))


@dg.job(tags=SAFETY_PRIORITY, executor_def=dg.in_process_executor,
        description="Clear the trading halts (all, or one reason's); live sessions may start again.")
def clear_trading_halt():
    clear_halts()


# -- what Dagster shows of live trading ---------------------------------------------------------------

live_positions = dg.AssetSpec(
    "live_positions", group_name="trading", owners=["team:winiswin-data"], kinds={"binance", "postgres"},
    description="The live account's positions as the session's last reconciliation with the exchange saw them "
    "(every minute): amount, entry, mark, unrealised PnL, the protective orders on the exchange, and the heartbeat. "
    "Observed every minute by live_positions_observer.",
)


def _heartbeat_check(view: monitoring.LiveView) -> dg.AssetCheckResult:
    problem = monitoring.heartbeat_problem(view)
    age = view.heartbeat_age
    return dg.AssetCheckResult(
        passed=problem is None,
        metadata={"problem": problem or "none", "session_id": view.session_id or "none",
                  "heartbeat_age_seconds": dg.MetadataValue.float(round(age.total_seconds(), 1)) if age
                  else dg.MetadataValue.text("no heartbeat"),
                  "max_silence_seconds": monitoring.HEARTBEAT_MAX_SILENCE.total_seconds()},
    )


@dg.asset_check(asset=live_positions.key, description="The live session's heartbeat is at most 3 minutes old "
                "whenever a session is marked running or live positions are open.")
def trading_heartbeat_fresh(postgres: PostgresResource) -> dg.AssetCheckResult:
    return _heartbeat_check(monitoring.live_view(postgres.manager))


def _observation(view: monitoring.LiveView) -> dg.AssetObservation:
    age = view.heartbeat_age
    return dg.AssetObservation(asset_key=live_positions.key, metadata={
        "positions": dg.MetadataValue.md(monitoring.positions_table(view)),
        "unprotected": ", ".join(monitoring.unprotected(view)) or "none",
        "unrealised_pnl": dg.MetadataValue.float(round(sum(p["unrealised_pnl"] for p in view.positions.values()), 4)),
        "open_live_trades": ", ".join(view.open_trades) or "none",
        "wallet_balance": dg.MetadataValue.float(float(view.reconciliation.get("wallet_balance") or 0.0)),
        "reconciled_at": view.reconciliation.get("at") or "never",
        "session_id": view.session_id or "none",
        "session_status": view.status or "none",
        "last_heartbeat_at": view.last_heartbeat_at.isoformat() if view.last_heartbeat_at else "never",
        "heartbeat_age_seconds": dg.MetadataValue.float(round(age.total_seconds(), 1)) if age
        else dg.MetadataValue.text("no heartbeat"),
        "halts": "; ".join(view.halts) or "none",
    })


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Every minute: observes live_positions and evaluates trading_heartbeat_fresh, from PostgreSQL "
           "(no run is launched, no exchange request made).")
def live_positions_observer(context: dg.SensorEvaluationContext, postgres: PostgresResource) -> dg.SensorResult:
    view = monitoring.live_view(postgres.manager)
    check = _heartbeat_check(view)
    events: list = [dg.AssetCheckEvaluation(asset_key=live_positions.key, check_name=trading_heartbeat_fresh.check_key.name,
                                            passed=check.passed, metadata=check.metadata)]
    if view.session_id is not None or view.open_trades:  # nothing to observe before any live trading
        events.insert(0, _observation(view))
    return dg.SensorResult(asset_events=events)


# -- alerts -----------------------------------------------------------------------------------------------


def failure_text(run: dg.DagsterRun, message: str | None) -> str:
    """The alert of a failed run: job, run id, what failed (shortened; Dagster's own message)."""
    what = (message or "no message").strip().splitlines()[0][:400]
    return f"winiswin: run {run.run_id[:8]} of {run.job_name} failed: {what}"


@dg.run_failure_sensor(name="run_failure_alert", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Alerts on every failed run: to Slack (dagster-slack) when SLACK_TOKEN is set, "
                       "to SLACK_CHANNEL (default #winiswin-alerts); otherwise a warning in the sensor's log.")
def run_failure_alert(context: dg.RunFailureSensorContext) -> None:
    text = failure_text(context.dagster_run, context.failure_event.message)
    token = os.environ.get("SLACK_TOKEN")
    if not token:
        context.log.warning(text)
        return
    from dagster_slack import SlackResource  # only needed once Slack is configured

    channel = os.environ.get("SLACK_CHANNEL") or "#winiswin-alerts"
    SlackResource(token=token).get_client().chat_postMessage(channel=channel, text=text)


class BacktestConfig(TradingParameters, SimulatedCosts):
    """Backtest parameters (the same as a paper session's)."""


@dg.asset(
    **table_asset("trades"),
    group_name="trading",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["klines", "book_snapshots", "funding_rates"],
    kinds={"python", "postgres"},
    description="A day of stored klines and book snapshots replayed through the trading session "
    "(same strategy, risk, paper execution and recorder as live; trades recorded with source 'backtest'), "
    "paying the taker fee, funding and slippage (fills walk the stored book where snapshots exist).",
)
def backtest(
    context: dg.AssetExecutionContext, config: BacktestConfig, postgres: PostgresResource,
    cold_storage: ColdStorageResource, model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    days = [start.date() for start in partition_days(context.partition_time_window)]
    cold = cold_storage.store()
    model = gating_model(model_registry, config, days)
    session_config = config.session_config(model=model)
    # Rules only first: each day's replay replaces the day's rows, so the variant asked for stays recorded.
    rules_only = _rules_only_trades(context, postgres, cold, config, session_config, days) if model else None
    closed, rows, symbols, intervals = [], [], set(), set()
    funding_times = {"charged": 0, "assumed": 0, "unknown": 0}
    for day in days:
        for run in backtest_day(postgres.manager, day, session_config, run_id=context.run.run_id, cold=cold,
                                paper=config.paper_executor(), assumed_funding_rate=config.assumed_funding_rate):
            day_performance = summarize(run.result.closed, run.result.starting_equity)
            closed += run.result.closed
            symbols.update(run.symbols)
            intervals.add(run.interval)
            funding_times = {k: n + run.result.funding_times.get(k, 0) for k, n in funding_times.items()}
            rows.append(f"| {day} | {run.interval} | {', '.join(run.symbols)} | {run.result.bars:,} | "
                        f"{day_performance.trades} | {day_performance.pnl:+.2f} | {day_performance.fees:.2f} | "
                        f"{day_performance.funding:+.2f} | {day_performance.slippage:.2f} |")
        context.log.info(f"backtest {day}: done ({len(closed)} trades so far)")
    performance = summarize(closed, session_config.risk.starting_equity)
    return dg.MaterializeResult(metadata={
        "pnl": dg.MetadataValue.float(round(performance.pnl, 2)),
        "win_rate": dg.MetadataValue.float(round(performance.win_rate, 4)) if performance.win_rate is not None
        else dg.MetadataValue.text("no trades"),
        "trades": dg.MetadataValue.int(performance.trades),
        "dagster/row_count": dg.MetadataValue.int(performance.trades),  # the trades it wrote
        "max_drawdown": dg.MetadataValue.float(round(performance.max_drawdown, 2)),
        "max_drawdown_pct": dg.MetadataValue.float(round(performance.max_drawdown_pct, 6)),
        "return_pct": dg.MetadataValue.float(round(performance.return_pct, 6)),
        "fees": dg.MetadataValue.float(round(performance.fees, 2)),
        "funding": dg.MetadataValue.float(round(performance.funding, 2)),
        "slippage": dg.MetadataValue.float(round(performance.slippage, 2)),
        "funding_times": dg.MetadataValue.json(funding_times),
        "costs": costs_line(performance, funding_times),
        "cost_model": f"taker fee {config.taker_fee:.3%}; fills walk the stored book, else {config.slippage_bps:g} bps; "
                      "entries at the next event after the signal; funding from funding_rates"
                      + (f", else {config.assumed_funding_rate:.4%}" if config.assumed_funding_rate is not None else ""),
        "exit_reasons": dg.MetadataValue.json(performance.exit_reasons),
        "symbols": ", ".join(sorted(symbols)) or "no stored klines",
        "intervals": ", ".join(sorted(intervals)) or "none",
        "days": dg.MetadataValue.md("| day | interval | symbols | bars | trades | PnL (USDT) | fees | funding | "
                                    "slippage |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)),
        **_comparison_metadata(model, rules_only, closed, session_config.risk.starting_equity, days),
    })


# -- the model gate: loading it once, refusing one trained on the replayed days, comparing -------------


def gating_model(model_registry: ModelRegistryResource, parameters: TradingParameters,
                 replayed_days: list[dt.date] | None = None) -> ModelChoice | None:
    """The registered signal model `parameters.model` names (a version or an alias), loaded once; None
    for rules only. A model whose training data touches a replayed day is refused: it knows the answers."""
    if not parameters.model:
        return None
    reference = parameters.model.strip()
    number = int(reference) if reference.isdigit() else None
    found = model_registry.get_version(MODEL_NAME, version=number, alias=None if number is not None else reference)
    choice = ModelChoice(reference, found.version, model_registry.load_model(MODEL_NAME, version=found.version),
                         parameters.min_win_probability, _tag_time(found.tags, "training_start"),
                         _tag_time(found.tags, "training_end"))
    if replayed_days and (overlap := choice.overlapping_days(replayed_days)):
        window = f"{_iso(choice.training_start)}..{_iso(choice.training_end)}"
        raise dg.Failure(f"{MODEL_NAME} version {found.version} ({reference!r}) was trained on {window}, which "
                         f"overlaps the replayed days {overlap[0]}..{overlap[-1]}: a backtest on its own training "
                         "data says nothing. Replay later days, or train a version that ends before them.")
    return choice


def _tag_time(tags: dict[str, str], name: str) -> dt.datetime | None:
    return dt.datetime.fromisoformat(tags[name]).astimezone(dt.UTC) if tags.get(name) else None


def _iso(time: dt.datetime | None) -> str:
    return time.isoformat() if time is not None else "an unknown window"


def _rules_only_trades(context: dg.AssetExecutionContext, postgres: PostgresResource, cold, config: BacktestConfig,
                       session_config: SessionConfig, days: list[dt.date]) -> list:
    rules_config = replace(session_config, model=None)
    closed = []
    for day in days:
        for run in backtest_day(postgres.manager, day, rules_config, run_id=context.run.run_id, cold=cold,
                                paper=config.paper_executor(), assumed_funding_rate=config.assumed_funding_rate):
            closed += run.result.closed
    context.log.info(f"backtest, rules only: {len(closed)} trades")
    return closed


def _comparison_metadata(model: ModelChoice | None, rules_only: list | None, gated: list, starting_equity: float,
                         days: list[dt.date]) -> dict[str, object]:
    if model is None or rules_only is None:
        return {"model": "none (rules only)"}
    variants = [comparison.variant("rules only", rules_only, starting_equity, days),
                comparison.variant(f"model v{model.version} >= {model.min_win_probability:g}", gated,
                                   starting_equity, days)]
    return {"model": f"{MODEL_NAME} version {model.version} ({model.reference!r}), trained on "
                     f"{_iso(model.training_start)}..{_iso(model.training_end)}",
            "comparison": dg.MetadataValue.md(comparison.comparison_table(variants))}


@dg.asset_check(asset=backtest, partitions_def=daily_partitions, blocking=True)
def backtest_trades_closed_in_their_day(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult:
    """Every backtest trade entered in the days is CLOSED, with a PnL, and exited within the days."""
    window = context.op_execution_context.partition_time_window
    total, bad = repository.count_trades_closed_within(postgres.manager, source=BACKTEST_SOURCE, start=window.start,
                                                       end=window.end)
    return dg.AssetCheckResult(passed=bad == 0, metadata={"trades": total, "open_or_inconsistent": bad})
