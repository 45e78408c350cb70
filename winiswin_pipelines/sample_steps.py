"""The steps of `make run`, registered by each area next to its Dagster definitions.

A step materialises its area's assets on the bundled sample data through
`SampleRunner.materialize` (so its runs appear in the Dagster UI) and returns the lines to print.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg

from winiswin_pipelines.db.manager import DatabaseManager

# The steps print their own summaries; the runs' full event logs are in the Dagster UI.
_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class SampleRunner:
    instance: dg.DagsterInstance
    resources: dict
    manager: DatabaseManager

    def materialize(
        self, assets: Sequence, *, partition_key: str | None = None, selection: Sequence | None = None,
        tags: dict[str, str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            assets, instance=self.instance, resources=self.resources, partition_key=partition_key,
            selection=selection, tags=tags, run_config=_QUIET_CONSOLE,
        )

    def execute_job(self, job: dg.JobDefinition, run_config: dg.RunConfig) -> dg.ExecuteInProcessResult:
        quiet = dg.RunConfig(ops=run_config.ops, resources=run_config.resources, loggers=_QUIET_CONSOLE["loggers"])
        return job.execute_in_process(run_config=quiet, instance=self.instance, resources=self.resources)


@dataclass(frozen=True)
class SampleStep:
    order: int
    title: str
    run: Callable[[SampleRunner], list[str]]


_STEPS: list[SampleStep] = []


def sample_step(order: int, title: str) -> Callable[[Callable[[SampleRunner], list[str]]], Callable]:
    """Register a step of `make run`; steps run in `order`."""

    def register(func: Callable[[SampleRunner], list[str]]) -> Callable[[SampleRunner], list[str]]:
        _STEPS.append(SampleStep(order, title, func))
        return func

    return register


def registered_steps() -> list[SampleStep]:
    """Every registered step, in order."""
    return sorted(_STEPS, key=lambda step: step.order)
