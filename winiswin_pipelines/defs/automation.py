"""Automation by data: the sensor that evaluates every asset's `AutomationCondition`, on by default
(Dagster's own default sensor starts stopped), so derived days follow the days they read."""

import dagster as dg

automation = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Materializes the training data when the market data it reads lands (see each asset's condition).",
)
