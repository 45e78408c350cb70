"""The long-running run pattern (dagster-notes.md §4) shared by the trading session and the live
capture: a lane tag limited to one run in config/dagster.yaml, an attempt number in each run key,
and the statuses of a run that is still in flight (its supervisor sensor then waits)."""

from __future__ import annotations

import dagster as dg

LANE_TAG = "winiswin/lane"
ATTEMPT_TAG = "winiswin/attempt"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def run_in_flight(instance: dg.DagsterInstance, job_name: str) -> dg.DagsterRun | None:
    """The job's run that is queued, starting or running, if any."""
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1)
    return records[0].dagster_run if records else None
