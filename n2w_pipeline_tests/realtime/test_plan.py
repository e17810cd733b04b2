"""Planning: out-of-range hours skipped or deferred, unknown ships reported, one run
per hour over a ship range."""

from __future__ import annotations

import datetime as dt
import json

from n2w_pipeline.realtime.cursor import Arrival, Cursor
from n2w_pipeline.realtime.plan import PlannedRun, group_runs, plan_tick
from n2w_pipeline.realtime.read import PartitionRows, TickRead
from n2w_pipeline_tests.helpers import hour_key
from n2w_pipeline_tests.realtime.helpers import H0, HOUR, S, Sensor, insert


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
