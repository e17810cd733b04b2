"""Retention of the Dagster instance: finished runs older than ``N2W_INSTANCE_RETENTION_DAYS``
(30) stop taking space in its database, without losing what the UI and ``n2w backfill`` read.

Dagster OSS purges sensor and schedule ticks itself (dagster.yaml ``retention:``, written by
n2w from the same setting) but keeps runs and their events forever. The job
``n2w_instance_retention`` (daily at 04:00 UTC) goes through the finished runs last updated
before the cut-off, oldest first:

* a run that holds no partition's latest materialisation and no check's latest result (a
  failed run, a realtime run whose hour was written again later, a check or retention run) is
  deleted with its events and compute logs (``instance.delete_run``);
* a run that still holds one (the backfill of an hour nothing rewrote since) keeps its
  materialisations, check results and run-status events — what the asset pages, partition
  status and ``n2w backfill``'s resume read — and loses its log lines (messages, step and
  engine events, which are most of its rows) and compute logs.
"""

import contextlib
import datetime as dt
import time
from typing import Any

import dagster as dg

from n2w_pipeline.config import Settings

JOB_NAME = "n2w_instance_retention"
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
LOG_EVENT_TYPES = (
    "ENGINE_EVENT", "STEP_START", "STEP_OUTPUT", "STEP_INPUT", "HANDLED_OUTPUT", "LOADED_INPUT",
    "LOGS_CAPTURED", "RESOURCE_INIT_STARTED", "RESOURCE_INIT_SUCCESS", "RESOURCE_INIT_FAILURE",
    "STEP_WORKER_STARTING", "STEP_WORKER_STARTED", "STEP_UP_FOR_RETRY", "STEP_RESTARTED",
    "STEP_EXPECTATION_RESULT",
)
"""Event types that are only log lines; run-status, step-result, asset and check events stay."""


def holds_latest(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Does the run hold the latest materialisation of some (asset, partition) or the latest
    result of some check?"""
    mats: dict[dg.AssetKey, dict[str | None, int]] = {}
    for rec in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                                            limit=100_000).records:
        event = rec.event_log_entry.dagster_event
        if event is not None and event.asset_key is not None:
            mats.setdefault(event.asset_key, {})[event.partition] = rec.storage_id
    for key, by_partition in mats.items():
        partitions = {p for p in by_partition if p is not None}
        if partitions:
            latest = instance.get_latest_storage_id_by_partition(
                key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions)
            if any(latest.get(p) == by_partition[p] for p in partitions):
                return True
        if None in by_partition:
            newest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
            if newest and newest[0].storage_id == by_partition[None]:
                return True
    checks = set()
    for rec in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION,
                                            limit=100_000).records:
        data = rec.event_log_entry.dagster_event.event_specific_data  # type: ignore[union-attr]
        checks.add(dg.AssetCheckKey(data.asset_key, data.check_name))
    if checks:
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(checks))
        if any(r.run_id == run_id for r in latest.values()):
            return True
    return False


def strip_logs(instance: dg.DagsterInstance, run_id: str) -> int:
    """Delete the run's log-line events (``LOG_EVENT_TYPES`` and plain messages); returns how many."""
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable as events
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        return 0
    where = db.and_(events.c.run_id == run_id,
                    db.or_(events.c.dagster_event_type.is_(None),
                           events.c.dagster_event_type.in_(LOG_EVENT_TYPES)))
    with storage.run_connection(run_id) as conn:
        return conn.execute(events.delete().where(where)).rowcount or 0


def _drop_compute_logs(instance: dg.DagsterInstance, run_id: str) -> None:
    with contextlib.suppress(Exception):  # a manager without local files: nothing to delete
        instance.compute_log_manager.delete_logs(prefix=[run_id])


def prune_instance(instance: dg.DagsterInstance, days: int, now: dt.datetime | None = None,
                   most: int = 20_000, log: Any = None) -> dict[str, int]:
    """Apply the retention to finished runs last updated more than ``days`` ago (at most ``most``
    per call, oldest first); returns counts: runs deleted, runs kept, log events deleted."""
    now = now or dt.datetime.now(dt.UTC)
    cutoff = now - dt.timedelta(days=days)
    counts = {"deleted_runs": 0, "kept_runs": 0, "deleted_log_events": 0}
    cursor = None
    seen = 0
    t0 = time.perf_counter()
    while seen < most:
        batch = instance.get_run_records(
            filters=dg.RunsFilter(statuses=FINISHED, updated_before=cutoff), limit=min(200, most - seen),
            cursor=cursor, ascending=True)
        if not batch:
            break
        for rec in batch:
            run_id = rec.dagster_run.run_id
            if holds_latest(instance, run_id):
                counts["deleted_log_events"] += strip_logs(instance, run_id)
                counts["kept_runs"] += 1
            else:
                instance.delete_run(run_id)
                counts["deleted_runs"] += 1
            _drop_compute_logs(instance, run_id)
        seen += len(batch)
        cursor = batch[-1].dagster_run.run_id
        if log is not None:
            log.info(f"instance retention: {seen} run(s) looked at, {counts} "
                     f"({time.perf_counter() - t0:.0f} s)")
    return counts


def build_instance_retention_job(settings: Settings) -> dg.JobDefinition:
    @dg.op(name="prune_dagster_instance")
    def prune_dagster_instance(context: dg.OpExecutionContext) -> None:
        """Delete or slim the finished runs older than N2W_INSTANCE_RETENTION_DAYS."""
        days = settings.instance_retention_days
        if days is None:
            context.log.info("N2W_INSTANCE_RETENTION_DAYS is off: the instance keeps every run")
            return
        counts = prune_instance(context.instance, days, log=context.log)
        context.add_output_metadata({k: dg.MetadataValue.int(v) for k, v in counts.items()})
        context.log.info(f"instance retention ({days} days): {counts}")

    @dg.job(name=JOB_NAME, tags={"n2w/kind": "retention"}, description=(
        "Finished Dagster runs older than N2W_INSTANCE_RETENTION_DAYS (30): deleted, or, when they "
        "still hold a partition's latest materialisation or a check's latest result, kept without "
        "their log lines. Ticks are purged by the daemon (dagster.yaml retention)."))
    def n2w_instance_retention() -> None:
        prune_dagster_instance()

    return n2w_instance_retention


def build_instance_retention_schedule(settings: Settings, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    on = settings.instance_retention_days is not None
    return dg.ScheduleDefinition(
        name="n2w_instance_retention_daily", job=job, cron_schedule="0 4 * * *", execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED,
        description="Runs n2w_instance_retention every day at 04:00 UTC (on unless "
        "N2W_INSTANCE_RETENTION_DAYS=off).")
