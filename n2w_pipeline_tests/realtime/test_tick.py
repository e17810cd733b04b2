"""Whole ticks: a backlog worked off oldest first, late rows for an old hour re-run it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

from n2w_pipeline.generate import generate
from n2w_pipeline.realtime.cursor import arrival
from n2w_pipeline.realtime.tick import tick
from n2w_pipeline_tests.helpers import hour_key, sql_reference, wide_cells
from n2w_pipeline_tests.realtime.helpers import H0, HOUR, NOW, S, Sensor, insert, some_channels


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
