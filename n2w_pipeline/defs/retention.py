"""Retention in Dagster: the job ``n2w_retention`` and its daily schedule (03:30 UTC).

The schedule runs by default only when ``N2W_RETENTION`` is set; the job drops whole expired
partitions of the wide tables (``storage/retention.py``) and logs what it dropped or kept.
"""

import dagster as dg
import psycopg

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.instance import DB_POOL
from n2w_pipeline.storage import retention

JOB_NAME = "n2w_retention"


def build_retention_job(settings: Settings, catalog: ChannelCatalog) -> dg.JobDefinition:
    @dg.op(name="drop_expired_partitions", pool=DB_POOL)
    def drop_expired_partitions(context: dg.OpExecutionContext, n2w_db: N2WDatabase) -> None:
        """Detach and drop the wide-table partitions older than N2W_RETENTION (never a DELETE)."""
        with psycopg.connect(n2w_db.resolve_url(settings), autocommit=True) as conn:
            found = retention.apply(conn, settings, catalog.groups)
        context.log.info(retention.format_report(found, settings, dry_run=False))

    @dg.job(name=JOB_NAME, description=(
        "Drop whole wide-table partitions older than N2W_RETENTION (and their _corr partitions), "
        "after their Parquet export when export is in use; rollups are kept. Nothing to do while "
        "N2W_RETENTION is unset."))
    def n2w_retention() -> None:
        drop_expired_partitions()

    return n2w_retention


def build_retention_schedule(settings: Settings, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    running = settings.retention is not None
    return dg.ScheduleDefinition(
        name="n2w_retention_daily", job=job, cron_schedule="30 3 * * *", execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description="Runs n2w_retention every day at 03:30 UTC (on by default when N2W_RETENTION is set).",
    )
