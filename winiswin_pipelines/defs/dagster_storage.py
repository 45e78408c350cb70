"""Pruning of Dagster's own run and event-log storage, which has no retention of its own
(dagster-notes.md §3.3: `event_logs` grows without limit): the job, its op and its daily schedule.

For every run that finished before the cutoff:
- a run that recorded no asset event (materialization, observation, check) is deleted with its
  whole event log (`DagsterInstance.delete_run`);
- a run that did keeps its run record and its asset events, so asset history and partition
  status survive, and loses everything else: log lines, step, engine and resource events (the
  bulk of `event_logs`, as in Dagster's "Cleaning older data from your Dagster database" guide).
"""

import datetime as dt
from dataclasses import dataclass

import dagster as dg
from dagster import DagsterEventType
from dagster_postgres.event_log import PostgresEventLogStorage
from pydantic import Field
from sqlalchemy import text

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
KEPT_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION,
    DagsterEventType.ASSET_CHECK_EVALUATION, DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
    DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELED, DagsterEventType.STEP_FAILURE,
}
ASSET_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION, DagsterEventType.ASSET_CHECK_EVALUATION,
}
_BATCH = 500


@dataclass(frozen=True)
class PruneResult:
    cutoff: dt.datetime
    runs_deleted: int
    runs_trimmed: int
    events_trimmed: int


def _old_runs(instance: dg.DagsterInstance, cutoff: dt.datetime) -> list[str]:
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=FINISHED, updated_before=cutoff))
    return [record.dagster_run.run_id for record in records]


def _trim_events(instance: dg.DagsterInstance, run_id: str) -> int:
    kept = ", ".join(f"'{event.value}'" for event in KEPT_EVENTS)
    with instance.event_log_storage.run_connection(run_id) as conn:
        result = conn.execute(
            text(f"DELETE FROM event_logs WHERE run_id = :run_id AND "
                 f"(dagster_event_type IS NULL OR dagster_event_type NOT IN ({kept}))"),
            {"run_id": run_id},
        )
        return result.rowcount


def prune_instance_storage(
    instance: dg.DagsterInstance, older_than: dt.timedelta = dt.timedelta(days=30), now: dt.datetime | None = None,
    log=None,
) -> PruneResult:
    """Delete or trim every run that finished more than `older_than` before `now`."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - older_than
    deleted = trimmed = events = 0
    for run_id in _old_runs(instance, cutoff):
        if instance.get_records_for_run(run_id, of_type=ASSET_EVENTS, limit=1).records:
            events += _trim_events(instance, run_id)
            trimmed += 1
        else:
            instance.delete_run(run_id)
            deleted += 1
        if log and (deleted + trimmed) % _BATCH == 0:
            log(f"pruned {deleted + trimmed} runs so far")
    if deleted + trimmed and isinstance(instance.event_log_storage, PostgresEventLogStorage):
        with instance.event_log_storage.index_connection() as conn:  # autocommit: VACUUM needs it
            conn.execute(text("VACUUM (ANALYZE) event_logs"))
    return PruneResult(cutoff, deleted, trimmed, events)


class PruneConfig(dg.Config):
    older_than_days: int = Field(default=30, description="prune runs that finished more than this many days ago")


@dg.op
def prune_dagster_storage(context: dg.OpExecutionContext, config: PruneConfig) -> dg.Output[int]:
    result = prune_instance_storage(context.instance, dt.timedelta(days=config.older_than_days), log=context.log.info)
    return dg.Output(result.runs_deleted, metadata={
        "cutoff": result.cutoff.isoformat(), "runs_deleted": result.runs_deleted,
        "runs_trimmed": result.runs_trimmed, "events_trimmed": result.events_trimmed,
    })


@dg.job(description="Prune Dagster's own run and event-log storage (it has no retention of its own).")
def prune_dagster_storage_job() -> None:
    prune_dagster_storage()


prune_dagster_storage_schedule = dg.ScheduleDefinition(
    job=prune_dagster_storage_job, cron_schedule="45 0 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
