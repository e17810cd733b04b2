"""The realtime sensor: new narrow rows → runs of their (ship, hour) partitions.

A thin wrapper over ``n2w_pipeline.realtime`` (which says what one tick reads and why no
late row is lost). Choices made here:

- **Static ship dimension.** A ship id that is not in ``N2W_SHIPS`` is reported (tick
  message, a warning in the sensor log, a running total in the cursor), not added as a
  partition. The ship list also names the wide tables and is shared by backfills; a
  dynamic dimension would let any stray or mistyped ship id create three wide tables and
  a partition forever. Adding a ship is a config change (``N2W_SHIPS``) followed by
  ``n2w backfill --ship NEW`` for its history.
- **One run per hour per tick** (a range run over the ships with new rows) instead of one
  per (ship, hour): one run per partition (8 a minute) fell behind in the benchmark, each
  run costing ~10 s of queue, launch and start-up on two cores, serialised by the pool.
- **Runs target the assets directly** (no extra job, so no job page offering a
  multi-partition backfill that runs only the first key) and run **in-process**: the
  multi-asset is one step, so the default multiprocess executor would only add a second
  Python process (~2–3 CPU-s) to every run. With ``N2W_EXECUTOR=celery`` the step goes
  to a Celery worker like every other (``defs/executor.step_run_config``).
- **Priority** ``dagster/priority=10``: realtime runs leave the queue before backfill
  runs (priority 0), so a long backfill does not hold the wide tables' present back.
- **Coalescing**: a partition that already has a realtime run waiting in the queue is not
  requested again — that run has not read the narrow table yet and will see these rows.
"""

import contextlib
import datetime as dt
import time
from dataclasses import replace

import dagster as dg
import psycopg

from n2w_pipeline.config import Settings
from n2w_pipeline.defs.executor import IN_PROCESS_CONFIG, step_run_config
from n2w_pipeline.defs.partitions import partition_key, split_key, wide_partitions
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.realtime import (
    Cursor,
    PlannedRun,
    RunGroup,
    TickPlan,
    arrival,
    arrival_index_problem,
    describe_runs,
    group_runs,
    tick,
)
from n2w_pipeline.realtime.cursor import part_key, split_part
from n2w_pipeline.realtime.owed import RunOutcome, due, epoch, requested, update_owed
from n2w_pipeline.realtime.owed import describe as describe_owed
from n2w_pipeline.realtime.writers import WritersNotVisible

SENSOR_NAME = "narrow_realtime"
REALTIME_TAG = "n2w/realtime"  # value: new | late | deferred
PRIORITY = "10"
MAX_RUNTIME_SECONDS = "900"
"""Run monitoring (dagster.yaml) fails a realtime run still STARTED after this: a run worker
that died without reporting (its instance database gone) must not hold its hours forever;
the failure makes them owed (``realtime/owed.py``). Realtime runs take seconds."""
IN_PROCESS = IN_PROCESS_CONFIG


def run_request(group: RunGroup, wide: dg.AssetsDefinition, run_config: dict | None = None) -> dg.RunRequest:
    """One hour × a ship range of every wide asset, ahead of backfills: in-process under
    Dagster's default executor, the step on a worker under Celery (``step_run_config``).

    A single ship is a plain partition run; several ships are one range run (the
    ``dagster/asset_partition_range_*`` tags), which the multi-asset reads as one window
    per ship. The checks are named explicitly: only those evaluated inside the
    materialisation, not other checks on the wide assets (on-demand ones need config).
    """
    first, last = partition_key(group.ships[0], group.hour), partition_key(group.ships[-1], group.hour)
    tags = {REALTIME_TAG: group.reason, "n2w/realtime_rows": str(group.rows),
            "n2w/realtime_ships": ",".join(group.triggered), "dagster/priority": PRIORITY,
            "dagster/max_runtime_seconds": MAX_RUNTIME_SECONDS}
    if len(group.ships) > 1:
        tags |= {"dagster/asset_partition_range_start": str(first),
                 "dagster/asset_partition_range_end": str(last)}
    return dg.RunRequest(
        run_key=group.run_key,
        partition_key=first if len(group.ships) == 1 else None,
        asset_selection=sorted(wide.keys),
        asset_check_keys=sorted(wide.check_keys),
        run_config=IN_PROCESS if run_config is None else run_config,
        tags=tags,
    )


def run_parts(tags: dict[str, str], partitions: dg.MultiPartitionsDefinition,
              ships: list[str]) -> set[tuple[str, dt.datetime]]:
    """(ship, hour) of every partition a run materialises, from its partition tags."""
    first = tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition")
    last = tags.get("dagster/asset_partition_range_end") or first
    if not first or not last:
        return set()
    (a, hour), (b, _) = split_key(partitions, first), split_key(partitions, last)
    if a not in ships or b not in ships:
        return set()
    return {(s, hour) for s in ships[ships.index(a): ships.index(b) + 1]}


def _queued(instance: dg.DagsterInstance, settings: Settings) -> set[tuple[str, dt.datetime]]:
    """(ship, hour) of every partition a queued realtime run will materialise."""
    queued = dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED], tags={"dagster/sensor_name": SENSOR_NAME})
    partitions = wide_partitions(settings)
    ships = list(settings.ships)
    out: set[tuple[str, dt.datetime]] = set()
    for run in instance.get_runs(filters=queued):
        out |= run_parts(run.tags, partitions, ships)
    return out


_STATUS = {
    dg.DagsterRunStatus.FAILURE: "failure", dg.DagsterRunStatus.CANCELED: "canceled",
    dg.DagsterRunStatus.SUCCESS: "success", dg.DagsterRunStatus.QUEUED: "queued",
    dg.DagsterRunStatus.NOT_STARTED: "queued", dg.DagsterRunStatus.STARTING: "starting",
    dg.DagsterRunStatus.STARTED: "started", dg.DagsterRunStatus.CANCELING: "started",
}
LOOK_BACK_SECONDS = 24 * 3600.0
"""On its first tick with this bookkeeping, the sensor looks this far back for failed runs."""


def run_outcomes(
    instance: dg.DagsterInstance, settings: Settings, cursor: Cursor, now: float
) -> list[RunOutcome]:
    """The sensor's runs that matter for ``owed``: updated since the cursor last looked (or
    since the oldest owed failure), and every one still queued or running."""
    since = min([cursor.checked or now - LOOK_BACK_SECONDS, *(o.since for o in cursor.owed.values())])
    tags = {"dagster/sensor_name": SENSOR_NAME}
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(
        dg.RunsFilter(tags=tags, updated_after=dt.datetime.fromtimestamp(since, dt.UTC)), limit=2000)}
    flying = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]
    records |= {r.dagster_run.run_id: r for r in instance.get_run_records(
        dg.RunsFilter(tags=tags, statuses=flying), limit=2000)}
    partitions = wide_partitions(settings)
    ships = list(settings.ships)
    out = []
    for r in records.values():
        status = _STATUS.get(r.dagster_run.status)
        parts = frozenset(part_key(s, h) for s, h in run_parts(r.dagster_run.tags, partitions, ships))
        if status and parts:
            out.append(RunOutcome(parts, status, epoch(r.create_timestamp) or 0.0, epoch(r.start_time),
                                  epoch(r.update_timestamp) or 0.0))
    return out


def settle_owed(context: dg.SensorEvaluationContext, settings: Settings, plan: TickPlan, now: float) -> None:
    """Failed or cancelled realtime runs: their partitions owed in the cursor and requested
    again with backoff until a run covering them succeeds (``realtime/owed.py``)."""
    cursor = plan.cursor
    outcomes = run_outcomes(context.instance, settings, cursor, now)
    owed, checked, lines = update_owed(cursor.owed, outcomes, cursor.checked, now,
                                       settings.realtime_retry_seconds)
    owed = {p: o for p, o in owed.items() if split_part(p)[0] in settings.ships}
    for line in lines:
        context.log.warning(line)
    again = due(owed, outcomes, now)
    plan.runs += [PlannedRun(*split_part(p), f"retry:{p}:{owed[p].since:.3f}:{owed[p].attempts}", 0, "retry")
                  for p in again if not any((r.ship, r.hour) == split_part(p) for r in plan.runs)]
    owed = requested(owed, again, now)
    plan.cursor = replace(cursor, owed=owed, checked=checked)
    if owed:
        plan.notes.append(describe_owed(owed, now))


def build_realtime_sensor(settings: Settings, wide: dg.AssetsDefinition) -> dg.SensorDefinition:
    arr = arrival(settings)

    @dg.sensor(
        name=SENSOR_NAME,
        target=wide,
        minimum_interval_seconds=settings.realtime_interval_seconds,
        default_status=(dg.DefaultSensorStatus.RUNNING if settings.realtime
                        else dg.DefaultSensorStatus.STOPPED),
        description=(
            f"Every {settings.realtime_interval_seconds} s: reads narrow rows that arrived since "
            f"the cursor (by `{arr.column}`, at most {settings.realtime_batch_rows:,} per tick, "
            "oldest first) and requests a run of each (ship, hour) partition they belong to — an "
            "old hour too, when late rows arrive for it. Ids still held by open transactions are "
            "re-read until those commit or roll back. Ships not in N2W_SHIPS and hours before "
            "N2W_PARTITION_START are skipped and counted in the tick message; future hours wait "
            "in the cursor. Default status from N2W_REALTIME; `n2w dev --no-realtime` stops it."
        ),
    )
    def narrow_realtime(context: dg.SensorEvaluationContext, n2w_db: N2WDatabase) -> dg.SensorResult:
        # the narrow table's server (N2W_SOURCE_URL, e.g. a replica): runs read the same one;
        # the writers' open transactions are read where they run (N2W_SOURCE_PRIMARY_URL)
        source, primary = n2w_db.resolve_source_url(settings), n2w_db.resolve_writers_url(settings)
        with psycopg.connect(source, autocommit=True) as conn, contextlib.ExitStack() as stack:
            problem = arrival_index_problem(conn, settings)
            if problem:
                context.log.warning(problem)
                return dg.SensorResult(skip_reason=problem, cursor=context.cursor)
            writers = conn if primary == source else stack.enter_context(
                psycopg.connect(primary, autocommit=True))
            try:
                plan = tick(conn, settings, context.cursor, dt.datetime.now(dt.UTC), writers_conn=writers)
            except WritersNotVisible as e:  # never settle a range without seeing the writers
                context.log.warning(str(e))
                return dg.SensorResult(skip_reason=str(e), cursor=context.cursor)
        settle_owed(context, settings, plan, time.time())
        cursor = plan.cursor.to_json(arr)
        for warning in plan.warnings:
            context.log.warning(warning)
        if plan.unknown_ships or plan.before_start:
            context.log.warning(plan.summary())
        ships = list(settings.ships)
        queued = _queued(context.instance, settings) if plan.runs else set()
        runs = [r for r in plan.runs if (r.ship, r.hour) not in queued]
        coalesced = len(plan.runs) - len(runs)
        note = f"; {coalesced} partition(s) already in a queued run" if coalesced else ""
        if not runs:
            return dg.SensorResult(skip_reason=plan.summary() + note, cursor=cursor)
        groups = group_runs(runs, ships)
        context.log.info(f"{plan.summary()}{note}; {len(groups)} run(s): {describe_runs(runs)}")
        config = step_run_config(settings)
        return dg.SensorResult(run_requests=[run_request(g, wide, config) for g in groups], cursor=cursor)

    return narrow_realtime
