"""The cursor model, pure: the arrival column a setting names, the cursor's JSON round
trip for either column, and a stored cursor of another column starting afresh."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest

from n2w_pipeline.config import Settings
from n2w_pipeline.realtime.cursor import Arrival, Cursor, Owed, Pending, arrival, part_key, split_part


def test_the_arrival_column_follows_the_setting():
    s = Settings.from_env({})
    assert arrival(s) == Arrival("id", unique=True)
    assert arrival(replace(s, realtime_cursor="server_created_time")) == Arrival(
        "server_created_time", unique=False)
    with pytest.raises(ValueError, match="must be id or server_created_time, got 'created_time'"):
        arrival(replace(s, realtime_cursor="created_time"))


def test_cursor_round_trips_through_json_and_another_column_starts_afresh():
    hour = dt.datetime(2025, 3, 1, 14)
    assert part_key("S1", hour) == "S1|2025-03-01T14:00"  # the format stored cursors hold
    assert split_part(part_key("S1", hour)) == ("S1", hour)

    ids = Arrival("id", unique=True)
    pending = [Pending(10, 12, ["81:3/7"], 1.5, {part_key("S1", hour): 3}),
               Pending(20, 30, [], 2.0, None, cleared=4096)]
    cur = Cursor("id", frontier=42, pending=pending, deferred={part_key("S2", hour): ("15", 3)},
                 skipped={"before_partition_start": 4},
                 owed={part_key("S1", hour): Owed(1.0, 2, 9.5, "failed")}, checked=7.0)
    text = cur.to_json(ids)
    assert Cursor.from_json(text, ids) == cur
    assert json.loads(text)["pending"] == [[10, 12, ["81:3/7"], 1.5, {"S1|2025-03-01T14:00": 3}, None, 0],
                                           [20, 30, [], 2.0, None, 4096, 0]]
    # a range stored before writers were tracked (its snapshot's xmax in their place): writers unknown
    old = json.dumps({"column": "id", "frontier": 42, "pending": [[10, 12, 900, 1.5, {}]]})
    assert Cursor.from_json(old, ids).pending == [Pending(10, 12, None, 1.5, {})]

    times = Arrival("server_created_time", unique=False)
    t0, t1 = dt.datetime(2025, 3, 2, 8, 0, 1), dt.datetime(2025, 3, 2, 8, 0, 9)
    cur_t = Cursor("server_created_time", frontier=t1, pending=[Pending(t0, t1, ["5:1/1"], 3.0, {})])
    assert Cursor.from_json(cur_t.to_json(times), times) == cur_t
    assert json.loads(cur_t.to_json(times))["frontier"] == t1.isoformat()
    assert times.empty < t0 and ids.empty == 0

    # no cursor yet, or one stored for the other arrival column: start afresh (not initialised)
    assert Cursor.from_json(None, ids) == Cursor("id")
    assert Cursor.from_json(text, times) == Cursor("server_created_time")
    assert Cursor.from_json(cur_t.to_json(times), ids).frontier is None
