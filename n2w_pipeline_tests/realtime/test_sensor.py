"""The realtime sensor (``defs/realtime.py``) on a real PostgreSQL: the runs it requests
and what they write, its wiring, queued runs, and a realtime run racing a backfill."""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from dataclasses import replace

import dagster as dg
import psycopg
import pytest
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.definitions import build_definitions
from n2w_pipeline.defs.realtime import IN_PROCESS, SENSOR_NAME
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline.generate import generate
from n2w_pipeline.write import lock_hours
from n2w_pipeline_tests.helpers import all_digests, hour_key, run_wide, sql_reference, wide_cells
from n2w_pipeline_tests.realtime.helpers import H0, HOUR, S, Sensor, insert, some_channels


def test_new_rows_request_their_partitions_and_the_runs_write_them(source, catalog, conn, instance):
    settings = source
    ships = settings.ships[:2]
    sensor = Sensor(settings, catalog, instance)
    runs, skip = sensor.tick()
    assert runs == [] and "first tick" in (skip or "")
    assert json.loads(sensor.cursor)["frontier"] == 0  # empty table: everything to come is new

    n = generate(conn, settings, catalog, ships, H0, H0 + 2 * HOUR, seed=4,
                 channels=some_channels(catalog))
    runs, skip = sensor.tick()
    assert skip is None
    # one run per hour, covering both ships (oldest hour first)
    assert len(runs) == 2
    assert sensor.parts(runs) == [hour_key(s, h) for h in (H0, H0 + HOUR) for s in sorted(ships)]
    assert sum(int(r.tags["n2w/realtime_rows"]) for r in runs) == n
    wide = build_wide_assets(settings, catalog)
    for r, h in zip(runs, (H0, H0 + HOUR), strict=True):
        assert r.partition_key is None and r.asset_selection == sorted(wide.keys)
        assert r.asset_check_keys == sorted(wide.check_keys)
        assert r.tags["n2w/realtime"] == "new" and r.tags["dagster/priority"] == "10"
        assert r.tags["n2w/realtime_ships"] == ",".join(ships)
        assert r.run_key.startswith(f"rt:{h:%Y-%m-%dT%H:%M}:{ships[0]}..{ships[1]}:")
    assert len({r.run_key for r in runs}) == len(runs)
    max_id = conn.execute(sql.SQL("SELECT max(id) FROM {}").format(
        sql.Identifier(*settings.source_qualified))).fetchone()[0]
    assert json.loads(sensor.cursor)["frontier"] == max_id

    # the run config the daemon will use is valid for the code location's asset job
    job = build_definitions(settings).resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(runs[0].asset_selection), asset_check_selection=set(runs[0].asset_check_keys))
    assert dg.validate_run_config(job, IN_PROCESS)

    # nothing new: a skip, and the very same cursor
    before = sensor.cursor
    runs2, skip2 = sensor.tick()
    assert runs2 == [] and skip2 and "0 new narrow row(s)" in skip2
    assert sensor.cursor == before

    # the requested runs, executed for real, give exactly the SQL pivot
    for r in runs:
        assert sensor.execute(r, catalog)
    for ship in ships:
        for g in catalog.groups:
            assert wide_cells(conn, settings, g, ship) == sql_reference(
                conn, settings, g, ship, H0, H0 + 2 * HOUR)


def test_sensor_is_wired_with_its_settings(settings):
    defs = build_definitions(replace(settings, realtime=False, realtime_interval_seconds=7))
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.minimum_interval_seconds == 7
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert build_definitions(settings).resolve_sensor_def(SENSOR_NAME).default_status == (
        dg.DefaultSensorStatus.RUNNING)
    s = Settings.from_env({"N2W_REALTIME": "off", "N2W_REALTIME_CURSOR_COLUMN": "server_created_time",
                           "N2W_REALTIME_BATCH_ROWS": "1000"})
    assert (s.realtime, s.realtime_cursor, s.realtime_batch_rows) == (False, "server_created_time", 1000)
    with pytest.raises(ValueError, match="N2W_REALTIME"):
        Settings.from_env({"N2W_REALTIME": "maybe"})


def _add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str]) -> None:
    """A run record as the daemon leaves it (queued runs need an origin)."""
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(InProcessCodeLocationOrigin(LoadableTargetOrigin(
        executable_path=sys.executable, module_name="n2w_pipeline.definitions")), "__repository__"),
        "__ASSET_JOB")
    instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", status=status, remote_job_origin=origin,
                                   tags={"dagster/sensor_name": SENSOR_NAME, **tags}))


def test_partitions_already_in_a_queued_run_are_not_requested_again(source, catalog, conn, instance):
    settings = source
    sensor = Sensor(settings, catalog, instance)
    sensor.tick()
    ch = catalog.group(1).channels[0]
    a, b, c = settings.ships
    insert(conn, settings, [(a, ch, H0, 1.0), (b, ch, H0, 2.0), (c, ch, H0, 3.0)])
    _add_run(instance, dg.DagsterRunStatus.QUEUED, {
        "dagster/asset_partition_range_start": hour_key(a, H0),
        "dagster/asset_partition_range_end": hour_key(b, H0)})
    runs, _ = sensor.tick()
    assert sensor.parts(runs) == [hour_key(c, H0)]  # a and b: the queued run will read them
    # c's run has started (it may have read already): new rows for c get a run, a's do not
    _add_run(instance, dg.DagsterRunStatus.STARTED, {"dagster/partition": hour_key(c, H0)})
    insert(conn, settings, [(a, ch, H0 + S, 1.0), (c, ch, H0 + S, 1.0)])
    runs, _ = sensor.tick()
    assert sensor.parts(runs) == [hour_key(c, H0)]
    insert(conn, settings, [(a, ch, H0 + 2 * S, 1.0)])
    runs, skip = sensor.tick()
    assert runs == [] and "1 partition(s) already in a queued run" in (skip or "")


def _advisory_waiters(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()
    return int(row[0])


@pytest.mark.parametrize("order", ["at_once", "realtime_first", "backfill_first"])
def test_realtime_and_backfill_runs_of_one_hour_race_to_the_same_table(
    source, catalog, conn, pg_url, order
):
    """A realtime run (one partition) and a backfill run (two hours) of the same ship,
    really concurrent, with rows arriving while they run, leave what one run leaves."""
    settings = replace(source, checks_in_runs=False)  # the writes race here, not the checks
    ship = settings.ships[0]
    chans = some_channels(catalog, per_group=20)
    generate(conn, settings, catalog, [ship], H0, H0 + 2 * HOUR, seed=8, channels=chans)
    h1 = H0 + HOUR
    results: dict[str, bool] = {}

    def realtime() -> None:
        with dg.instance_for_test(set_dagster_home=False) as inst:
            results["realtime"] = run_wide(settings, catalog, partition_key=hour_key(ship, h1),
                                           instance=inst).success

    def backfill() -> None:
        with dg.instance_for_test(set_dagster_home=False) as inst:
            results["backfill"] = run_wide(settings, catalog, first=hour_key(ship, H0),
                                           last=hour_key(ship, h1), instance=inst).success

    late = [(ship, ch, h1 + 30 * S + dt.timedelta(seconds=1), 7.25) for ch in chans[:5]]
    first_fn, second_fn = (realtime, backfill) if order != "backfill_first" else (backfill, realtime)
    with psycopg.connect(pg_url) as holder:
        # hold h1's lock: the first run starts and waits inside its transaction
        lock_hours(holder, ship, h1, h1 + HOUR)
        t1 = threading.Thread(target=first_fn)
        t1.start()
        deadline = time.monotonic() + 120
        while _advisory_waiters(conn) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        insert(conn, settings, late)  # rows arrive while it runs
        if order == "at_once":
            t2 = threading.Thread(target=second_fn)
            t2.start()
            while _advisory_waiters(conn) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _advisory_waiters(conn) == 2  # both runs are inside, waiting for h1
            holder.rollback()
            t1.join()
            t2.join()
        else:
            holder.rollback()
            t1.join()
            insert(conn, settings, [(ship, chans[0], h1 + 31 * S + dt.timedelta(seconds=1), 1.5)])
            second_fn()
    assert results == {"realtime": True, "backfill": True}
    for g in catalog.groups:
        assert wide_cells(conn, settings, g, ship) == sql_reference(
            conn, settings, g, ship, H0, H0 + 2 * HOUR), g.number
    # and the very same table one run from scratch writes
    raced = all_digests(conn, settings, catalog, [ship])
    other = settings.target_schema + "_one"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        single = replace(settings, target_schema=other)
        assert run_wide(single, catalog, first=hour_key(ship, H0), last=hour_key(ship, h1)).success
        assert all_digests(conn, single, catalog, [ship]) == raced
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))
