"""Schedules: the nightly export of yesterday, every ship."""

import datetime as dt

import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.defs.partitions import DAY_FMT, day_key

EXPORT_SCHEDULE = "daily_export"
EXPORT_CRON = "0 2 * * *"


def build_export_schedule(settings: Settings, exports: dg.AssetsDefinition) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=EXPORT_SCHEDULE,
        cron_schedule=EXPORT_CRON,
        execution_timezone="UTC",
        target=exports,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="02:00 UTC: export yesterday (UTC) of every ship to Parquet and ClickHouse, one run "
        "per ship. Two hours after midnight, so the day's last rows have arrived; later changes are "
        "picked up by the day_products_refresh sensor.",
    )
    def daily_export(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        now = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        day = now.astimezone(dt.UTC).date() - dt.timedelta(days=1)
        return [
            dg.RunRequest(run_key=f"{day:{DAY_FMT}}|{ship}", partition_key=str(day_key(ship, day)),
                          tags={"n2w/export": "daily"})
            for ship in settings.ships
        ]

    return daily_export
