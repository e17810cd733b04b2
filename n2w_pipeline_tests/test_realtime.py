"""The realtime sensor on a real PostgreSQL: which partitions each tick requests, what
the cursor does, that no late row is lost, that ticks use the index, and that the
requested runs (and two concurrent runs of one hour) leave the right wide rows."""

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

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.config import Settings
from n2w_pipeline.definitions import build_definitions
from n2w_pipeline.defs.realtime import IN_PROCESS, SENSOR_NAME, build_realtime_sensor
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline.generate import create_source_indexes, create_source_table, generate
from n2w_pipeline.realtime import (
    Arrival,
    Cursor,
    PartitionRows,
    PlannedRun,
    TickRead,
    arrival,
    arrival_index_name,
    batch_query,
    ensure_arrival_index,
    group_runs,
    pending_query,
    plan_tick,
    tick,
    window_queries,
)
from n2w_pipeline.write import lock_hours
from n2w_pipeline_tests.helpers import all_digests, hour_key, run_wide, sql_reference, wide_cells

H0 = dt.datetime(2025, 3, 1, 0, 0)
HOUR = dt.timedelta(hours=1)
S = dt.timedelta(seconds=15)
NOW = dt.datetime(2025, 3, 1, 12, 30, tzinfo=dt.UTC)  # "now" for ticks run through tick()


@pytest.fixture
def source(settings: Settings, conn: psycopg.Connection) -> Settings:
    """An empty narrow table with the fleet's indexes and the arrival index."""
    create_source_table(conn, settings)
    create_source_indexes(conn, settings)
    assert ensure_arrival_index(conn, settings)
    assert not ensure_arrival_index(conn, settings)  # idempotent
    return settings


def some_channels(catalog: ChannelCatalog, per_group: int = 8) -> list[str]:
    return [ch for g in catalog.groups for ch in g.channels[:per_group]]


def insert(conn: psycopg.Connection, settings: Settings, rows: list[tuple]) -> None:
    """rows: (ship, channel, created_time, double_v[, server_created_time]) as Decimal values."""
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (ship_id, data_channel_id, created_time, double_v, value_format, "
                "server_created_time) VALUES (%s, %s, %s, %s, 'Decimal', %s)"
            ).format(sql.Identifier(*settings.source_qualified)),
            [(*r, None) if len(r) == 4 else r for r in rows],
        )


class Sensor:
    """The real sensor of ``build_definitions``-style wiring, evaluated tick by tick."""

    def __init__(self, settings: Settings, catalog: ChannelCatalog, instance: dg.DagsterInstance):
        self.settings = settings
        wide = build_wide_assets(settings, catalog)
        self.sensor = build_realtime_sensor(settings, wide)
        self.db = N2WDatabase(url=settings.database_url)
        self.defs = dg.Definitions(assets=[wide], sensors=[self.sensor], resources={"n2w_db": self.db})
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> tuple[list[dg.RunRequest], str | None]:
        ctx = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, sensor_name=SENSOR_NAME, definitions=self.defs,
            resources={"n2w_db": self.db},
        )
        data = self.sensor.evaluate_tick(ctx)
        self.cursor = data.cursor
        return list(data.run_requests or []), data.skip_message

    def parts(self, requests: list[dg.RunRequest]) -> list[str]:
        """Every partition the requests cover (a range run: one hour × a ship range)."""
        out = []
        ships = list(self.settings.ships)
        for r in requests:
            if r.partition_key is not None:
                out.append(str(r.partition_key))
                continue
            hour, a = r.tags["dagster/asset_partition_range_start"].split("|")
            _, b = r.tags["dagster/asset_partition_range_end"].split("|")
            out += [f"{hour}|{s}" for s in ships[ships.index(a): ships.index(b) + 1]]
        return out

    def execute(self, r: dg.RunRequest, catalog: ChannelCatalog) -> bool:
        """Run what the request asks for, for real (partition or range tags)."""
        if r.partition_key is not None:
            return run_wide(self.settings, catalog, partition_key=r.partition_key,
                            instance=self.instance).success
        return run_wide(self.settings, catalog, first=r.tags["dagster/asset_partition_range_start"],
                        last=r.tags["dagster/asset_partition_range_end"], instance=self.instance).success


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


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


def test_late_rows_for_an_old_hour_rerun_that_hour(source, catalog, conn, instance):
    settings = source
    ship = settings.ships[0]
    sensor = Sensor(settings, catalog, instance)
    sensor.tick()
    generate(conn, settings, catalog, [ship], H0, H0 + 3 * HOUR, seed=2, channels=some_channels(catalog))
    runs, _ = sensor.tick()
    assert sensor.parts(runs) == [hour_key(ship, H0 + h * HOUR) for h in range(3)]
    for r in runs:
        assert sensor.execute(r, catalog)

    # rows for 00:xx arrive after the 02:00 hour: a new timestamp and a new value
    g1 = catalog.group(1)
    late_t = H0 + 17 * S + dt.timedelta(seconds=3)
    insert(conn, settings, [(ship, g1.channels[0], late_t, 42.5), (ship, g1.channels[1], late_t, -1.0)])
    runs, _ = sensor.tick()
    assert sensor.parts(runs) == [hour_key(ship, H0)]
    assert runs[0].tags["n2w/realtime_rows"] == "2"
    assert sensor.execute(runs[0], catalog)
    times, cells = wide_cells(conn, settings, g1, ship)
    assert cells[(late_t, g1.channels[0])] == 42.5 and cells[(late_t, g1.channels[1])] == -1.0
    assert (times, cells) == sql_reference(conn, settings, g1, ship, H0, H0 + 3 * HOUR)


def test_backlog_is_split_across_ticks_oldest_first(source, catalog, conn):
    settings = replace(source, realtime_batch_rows=1000)
    ship = settings.ships[1]
    cursor = tick(conn, settings, None, NOW).cursor.to_json(arrival(settings))
    assert json.loads(cursor)["frontier"] == 0
    chans = some_channels(catalog, per_group=2)  # 6 + 3 unknown channels: 9 rows per 15 s
    for h in range(3):  # arrival order = hour order
        generate(conn, settings, catalog, [ship], H0 + h * HOUR, H0 + (h + 1) * HOUR, seed=h,
                 missing_pct=0, channels=chans)
    total = 3 * 240 * 9
    seen_rows, hours, frontiers = 0, [], []
    for _ in range(10):
        plan = tick(conn, settings, cursor, NOW)
        if not plan.rows_read:
            break
        assert plan.rows_read <= 1000
        seen_rows += plan.rows_read
        hours.append([r.hour for r in plan.runs])
        frontiers.append(plan.cursor.frontier)
        cursor = plan.cursor.to_json(arrival(settings))
    assert seen_rows == total
    assert len(hours) == -(-total // 1000)  # ceil: every tick but the last is a full batch
    assert frontiers == sorted(frontiers) and frontiers[-1] == total
    assert hours[0] == [H0]  # oldest arrivals first
    flat = [h for hs in hours for h in hs]
    assert flat == sorted(flat) and set(flat) == {H0, H0 + HOUR, H0 + 2 * HOUR}


def test_rows_of_unknown_ships_are_reported_and_passed(source, catalog, conn, instance):
    settings = source
    sensor = Sensor(settings, catalog, instance)
    sensor.tick()
    ch = catalog.group(3).channels[0]
    insert(conn, settings, [("IMO0000001", ch, H0 + i * S, float(i)) for i in range(5)])
    runs, skip = sensor.tick()
    assert runs == []
    assert skip and "5 row(s) of ship(s) not in N2W_SHIPS skipped {'IMO0000001': 5}" in skip
    cur = json.loads(sensor.cursor)
    assert cur["skipped"] == {"unknown_ship:IMO0000001": 5} and cur["frontier"] == 5
    # a known ship's row in the same tick still gets its run, and the total keeps counting
    insert(conn, settings, [("IMO0000001", ch, H0 + 9 * S, 1.0), (settings.ships[2], ch, H0, 2.0)])
    runs, _ = sensor.tick()
    assert sensor.parts(runs) == [hour_key(settings.ships[2], H0)]
    assert json.loads(sensor.cursor)["skipped"] == {"unknown_ship:IMO0000001": 6}


def test_rows_of_a_transaction_still_open_at_a_tick_are_not_lost(source, catalog, conn, pg_url, instance):
    """Ids are drawn at insert but visible at commit: a tick that sees id 101 before id
    100's commit must come back for 100."""
    settings = source
    a, b = settings.ships[0], settings.ships[1]
    ch = catalog.group(1).channels[0]
    sensor = Sensor(settings, catalog, instance)
    sensor.tick()
    with psycopg.connect(pg_url) as slow:  # not autocommit: an open transaction
        insert(slow, settings, [(a, ch, H0 + i * S, 1.0) for i in range(3)])  # ids 1-3, open
        insert(conn, settings, [(b, ch, H0 + HOUR, 2.0)])  # id 4, committed
        runs, _ = sensor.tick()
        assert sensor.parts(runs) == [hour_key(b, H0 + HOUR)]
        cur = json.loads(sensor.cursor)
        assert cur["frontier"] == 4 and [p[:2] for p in cur["pending"]] == [[0, 3]]
        runs, skip = sensor.tick()  # still open: nothing new, the gap stays watched
        assert runs == [] and "1 arrival range(s) pending" in (skip or "")
        slow.commit()
    runs, _ = sensor.tick()
    assert sensor.parts(runs) == [hour_key(a, H0)]
    assert runs[0].tags["n2w/realtime"] == "late" and runs[0].tags["n2w/realtime_rows"] == "3"
    runs, _ = sensor.tick()  # found once: not requested again
    assert runs == []
    # once every transaction that was open when the gap was seen has ended, it is dropped
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    plan = tick(conn, settings, sensor.cursor, later)
    assert plan.cursor.pending == [] and plan.runs == []


def test_a_rolled_back_insert_leaves_a_gap_that_settles(source, catalog, conn, pg_url):
    settings = source
    ch = catalog.group(2).channels[0]
    arr = arrival(settings)
    cursor = tick(conn, settings, None, NOW).cursor.to_json(arr)
    with psycopg.connect(pg_url) as gone:
        insert(gone, settings, [(settings.ships[0], ch, H0, 1.0)])
        gone.rollback()
    insert(conn, settings, [(settings.ships[0], ch, H0 + S, 1.0)])
    t = dt.datetime.now(dt.UTC)
    plan = tick(conn, settings, cursor, t)
    assert [(r.ship, r.hour) for r in plan.runs] == [(settings.ships[0], H0)]
    assert len(plan.cursor.pending) == 1
    plan2 = tick(conn, settings, plan.cursor.to_json(arr), t + dt.timedelta(seconds=5))
    assert plan2.runs == [] and plan2.cursor.pending == []


def test_server_created_time_fallback_takes_ties_whole_and_late_commits(source, catalog, conn, pg_url):
    settings = replace(source, realtime_cursor="server_created_time", realtime_batch_rows=3)
    assert ensure_arrival_index(conn, settings)  # a second index, on server_created_time
    arr = arrival(settings)
    assert arr == Arrival("server_created_time", unique=False)
    a, b = settings.ships[0], settings.ships[1]
    ch = catalog.group(1).channels[:5]
    t1, t2 = dt.datetime(2025, 3, 2, 8, 0, 1), dt.datetime(2025, 3, 2, 8, 0, 9)
    cursor = tick(conn, settings, None, NOW).cursor.to_json(arr)
    # five rows share one arrival time: a batch of 3 takes all five
    insert(conn, settings, [(a, c, H0, 1.0, t1) for c in ch])
    plan = tick(conn, settings, cursor, NOW)
    assert plan.rows_read == 5 and [(r.ship, r.hour) for r in plan.runs] == [(a, H0)]
    assert plan.cursor.frontier == t1
    cursor = plan.cursor.to_json(arr)
    with psycopg.connect(pg_url) as slow:
        insert(slow, settings, [(b, ch[0], H0 + 2 * HOUR, 1.0, t2)])  # open
        insert(conn, settings, [(a, ch[0], H0 + HOUR, 1.0, t2)])
        plan = tick(conn, settings, cursor, NOW)
        assert [(r.ship, r.hour) for r in plan.runs] == [(a, H0 + HOUR)]
        cursor = plan.cursor.to_json(arr)
        slow.commit()
    plan = tick(conn, settings, cursor, NOW)  # the same arrival time, committed later
    assert [(r.ship, r.hour, r.reason) for r in plan.runs] == [(b, H0 + 2 * HOUR, "late")]


def test_out_of_range_hours_are_skipped_or_deferred():
    arr = Arrival("id", unique=True)
    first, last = dt.datetime(2025, 1, 1), dt.datetime(2025, 3, 1, 12)
    read = TickRead(xmin=10, xmax=10, batch=[
        PartitionRows("S1", dt.datetime(2024, 12, 31, 23), 4, 10),
        PartitionRows("S1", dt.datetime(2025, 3, 1, 12), 2, 12),
        PartitionRows("S1", dt.datetime(2025, 3, 1, 14), 3, 15),
    ], batch_rows=9, batch_last=15)
    plan = plan_tick(read, Cursor("id", frontier=0), arr, ships=["S1"], first_hour=first,
                     last_hour=last, now=100.0)
    assert [(r.hour, r.reason) for r in plan.runs] == [(last, "new")]
    assert plan.before_start == 4 and plan.deferred == 1
    assert plan.cursor.skipped == {"before_partition_start": 4}
    assert plan.cursor.deferred == {"S1|2025-03-01T14:00": ("15", 3)}
    assert plan.cursor.frontier == 15
    # round trip through JSON, then the hour comes: the deferred partition runs
    cur = Cursor.from_json(plan.cursor.to_json(arr), arr)
    assert cur == plan.cursor
    later = plan_tick(TickRead(xmin=20, xmax=20), cur, arr, ships=["S1"], first_hour=first,
                      last_hour=dt.datetime(2025, 3, 1, 14), now=200.0)
    assert [(r.hour, r.reason, r.rows) for r in later.runs] == [(dt.datetime(2025, 3, 1, 14), "deferred", 3)]
    assert later.cursor.deferred == {} and later.cursor.frontier == 15


def test_tick_queries_use_the_arrival_index(source, conn):
    """On a table big enough for the planner to care, with enable_seqscan on."""
    settings = source
    src = sql.Identifier(*settings.source_qualified)
    conn.execute(sql.SQL(
        """INSERT INTO {} (ship_id, data_channel_id, created_time, server_created_time, double_v,
  value_format)
SELECT 'IMO9976903', '/ch/' || (i % 1000), timestamp '2025-03-01' + (i / 1000) * interval '15 s',
       timestamp '2025-03-01' + (i / 1000) * interval '15 s', i, 'Decimal'
FROM generate_series(1, 300000) i""").format(src))
    conn.execute(sql.SQL("ANALYZE {}").format(src))
    assert conn.execute("SHOW enable_seqscan").fetchone() == ("on",)

    def plan_nodes(query: sql.Composed, params: dict) -> list[tuple[str, str | None]]:
        (doc,) = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()
        out = []

        def walk(node: dict) -> None:
            out.append((node["Node Type"], node.get("Index Name") or node.get("Relation Name")))
            for child in node.get("Plans", []):
                walk(child)

        walk(doc[0]["Plan"])
        return out

    index = arrival_index_name(settings)
    nodes = plan_nodes(batch_query(settings), {"f": 299_000, "n": 500_000})
    assert ("Index Scan", index) in nodes or ("Index Only Scan", index) in nodes, nodes
    assert not any(t == "Seq Scan" for t, _ in nodes), nodes
    nodes = plan_nodes(pending_query(settings), {"lo": [1000, 5000], "hi": [1010, 5002]})
    assert any(t.startswith("Index") and name == index for t, name in nodes), nodes
    assert not any(t == "Seq Scan" and name == settings.source_table for t, name in nodes), nodes

    ts = replace(settings, realtime_cursor="server_created_time")
    ensure_arrival_index(conn, ts)
    conn.execute(sql.SQL("ANALYZE {}").format(src))
    bound, rows = window_queries(ts)
    last = dt.datetime(2025, 3, 1) + 299 * S
    for q, params in ((bound, {"f": last, "n1": 999}), (rows, {"f": last, "m": last + 10 * S})):
        nodes = plan_nodes(q, params)
        assert any(name == arrival_index_name(ts) for _, name in nodes), nodes
        assert not any(t == "Seq Scan" for t, _ in nodes), nodes


def test_without_the_index_the_sensor_refuses_to_scan(settings, catalog, conn, instance):
    create_source_table(conn, settings)
    sensor = Sensor(settings, catalog, instance)
    runs, skip = sensor.tick()
    assert runs == [] and sensor.cursor is None
    assert skip and "no valid b-tree index" in skip and "CREATE INDEX CONCURRENTLY IF NOT EXISTS" in skip


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


def test_partitions_group_into_one_run_per_hour_over_a_ship_range():
    ships = ["S1", "S2", "S3", "S4"]
    h = dt.datetime(2025, 3, 1, 5)
    runs = [PlannedRun("S3", h, "rt:S3:a", 4, "late"), PlannedRun("S1", h, "rt:S1:b", 2, "new"),
            PlannedRun("S2", h - HOUR, "rt:S2:c", 1, "deferred")]
    groups = group_runs(runs, ships)
    assert [(g.hour, g.ships, g.triggered, g.rows, g.reason) for g in groups] == [
        (h - HOUR, ("S2",), ("S2",), 1, "deferred"),
        (h, ("S1", "S2", "S3"), ("S1", "S3"), 6, "new"),  # S2 lies in the range: re-read too
    ]
    assert groups[1].run_key.startswith("rt:2025-03-01T05:00:S1..S3:")
    assert group_runs(list(reversed(runs)), ships) == groups  # deterministic keys


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
