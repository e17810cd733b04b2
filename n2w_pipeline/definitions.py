"""The one Definitions of the n2w code location: assets, checks, sensors, resources."""

from __future__ import annotations

import dagster as dg

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.alerts import build_check_failure_sensor, build_run_failure_sensor
from n2w_pipeline.defs.automation import DayProduct, build_day_refresh_sensor
from n2w_pipeline.defs.checks import build_check_job
from n2w_pipeline.defs.corrections import build_correction_asset, build_correction_sensor
from n2w_pipeline.defs.executor import executor_def
from n2w_pipeline.defs.exports import build_export_assets, export_product
from n2w_pipeline.defs.instance_retention import (
    build_instance_retention_job,
    build_instance_retention_schedule,
)
from n2w_pipeline.defs.realtime import build_realtime_sensor
from n2w_pipeline.defs.resources import clickhouse_resource, database_resource
from n2w_pipeline.defs.retention import build_retention_job, build_retention_schedule
from n2w_pipeline.defs.rollups import build_rollup_assets
from n2w_pipeline.defs.schedules import build_export_schedule
from n2w_pipeline.defs.wide_assets import build_wide_assets, narrow_source_spec, wide_asset_key


def build_definitions(settings: Settings) -> dg.Definitions:
    catalog = load_catalog(settings.channel_lists_dir)
    wide = build_wide_assets(settings, catalog)
    corrections = build_correction_asset(settings, catalog)
    rollups = build_rollup_assets(settings, catalog)
    exports = build_export_assets(settings, catalog)
    day_products = [DayProduct(tuple(rollups.keys), request_finished_days=True), export_product(catalog)]
    wide_keys = [wide_asset_key(g) for g in catalog.groups]
    retention = build_retention_job(settings, catalog)
    instance_retention = build_instance_retention_job(settings)
    refresh = build_day_refresh_sensor(settings, wide_keys, day_products, corrections_key=corrections.key)
    return dg.Definitions(
        assets=[narrow_source_spec(settings), wide, corrections, rollups, exports],
        jobs=[build_check_job(settings, catalog), retention, instance_retention],
        schedules=[build_retention_schedule(settings, retention), build_export_schedule(settings, exports),
                   build_instance_retention_schedule(settings, instance_retention)],
        sensors=[build_realtime_sensor(settings, wide), build_correction_sensor(settings, corrections),
                 refresh, build_run_failure_sensor(settings), build_check_failure_sensor(settings)],
        resources={"n2w_db": database_resource(), "n2w_clickhouse": clickhouse_resource()},
        executor=executor_def(settings),
    )


defs = build_definitions(Settings.from_env())
