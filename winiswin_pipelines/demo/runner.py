"""What the demo steps share: the code location's definitions, its resources, the Dagster instance
and the database, and one way to materialize assets so every run shows in the Dagster UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from winiswin_pipelines import settings
from winiswin_pipelines.db.manager import DatabaseManager

# The steps print their own summaries; the runs' full event logs, warnings included, are in the Dagster UI.
_QUIET_LOGGERS = {"console": {"config": {"log_level": "ERROR"}}}
# A run whose failure the step reports itself (a check expected to fail on sample data).
_SILENT_LOGGERS = {"console": {"config": {"log_level": "CRITICAL"}}}


def demo_instance() -> dg.DagsterInstance:
    """The instance of DAGSTER_HOME (the Makefile's), else a throw-away one."""
    return dg.DagsterInstance.get() if settings.env("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


@dataclass
class DemoRunner:
    instance: dg.DagsterInstance
    definitions: dg.Definitions
    manager: DatabaseManager
    resources: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resources = {**self.definitions.resources, **self.resources}

    def materialize(
        self, *asset_keys: str, tags: dict[str, str] | None = None, resources: dict[str, Any] | None = None,
        ops: dict[str, Any] | None = None, raise_on_error: bool = True,
    ) -> dg.ExecuteInProcessResult:
        """Materialize the assets named (with their checks) as one run of the code location's assets;
        `ops` is the run config of their ops; with `raise_on_error=False` a failed blocking check is
        reported in the result instead of raised. Freshness checks are left to their sensors: on
        sample data of past years, "is yesterday's partition there?" can only fail."""
        selection = dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(key) for key in asset_keys))
        freshness = [key for key in self.definitions.resolve_asset_graph().asset_check_keys
                     if key.name == "freshness_check"]
        selection = selection - dg.AssetSelection.checks(*freshness)
        return dg.materialize(
            [*self.definitions.assets, *self.definitions.asset_checks], selection=selection,
            instance=self.instance, resources={**self.resources, **(resources or {})}, tags=tags,
            run_config={"loggers": _QUIET_LOGGERS if raise_on_error else _SILENT_LOGGERS, "ops": ops or {}},
            raise_on_error=raise_on_error,
        )

    def execute_job(self, name: str, run_config: dg.RunConfig) -> dg.ExecuteInProcessResult:
        job = self.definitions.resolve_job_def(name)
        quiet = dg.RunConfig(ops=run_config.ops, resources=run_config.resources, loggers=_QUIET_LOGGERS)
        return job.execute_in_process(run_config=quiet, instance=self.instance, resources=self.resources)


def materialization(result: dg.ExecuteInProcessResult, asset_key: str) -> dict[str, Any]:
    """The metadata values of the run's first materialization of `asset_key`."""
    node = asset_key.replace("/", "__")
    return {key: value.value for key, value in result.asset_materializations_for_node(node)[0].metadata.items()}


def checks_verdict(result: dg.ExecuteInProcessResult) -> str:
    """'checks: N passed' and the names of those that failed."""
    checks = result.get_asset_check_evaluations()
    failed = [check.check_name for check in checks if not check.passed]
    return f"checks: {len(checks) - len(failed)} passed" + (f", FAILED {', '.join(failed)}" if failed else "")
