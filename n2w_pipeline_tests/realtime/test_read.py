"""Reading a tick: rows of transactions still open, or rolled back, and the
server_created_time fallback; no late row is lost."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import psycopg

from n2w_pipeline.realtime.cursor import Arrival, arrival
from n2w_pipeline.realtime.index import ensure_arrival_index
from n2w_pipeline.realtime.tick import tick
from n2w_pipeline_tests.helpers import hour_key
from n2w_pipeline_tests.realtime.helpers import H0, HOUR, NOW, S, Sensor, insert


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
