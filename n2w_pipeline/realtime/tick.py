"""One tick of the realtime sensor: ``read_tick`` then ``plan_tick``, against the
configured ships and the hourly partitions that exist now."""

from __future__ import annotations

import datetime as dt

import psycopg

from n2w_pipeline.config import Settings
from n2w_pipeline.hours import floor_hour
from n2w_pipeline.realtime.cursor import Cursor, arrival
from n2w_pipeline.realtime.plan import TickPlan, plan_tick
from n2w_pipeline.realtime.read import read_tick
from n2w_pipeline.realtime.writers import read_writers


def partition_hours(settings: Settings, now_utc: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(first, last) existing hourly partition, naive on the created_time clock (UTC):
    the last is the current, still open hour (the partitions' ``end_offset=1``)."""
    first = dt.datetime.strptime(settings.partition_start, "%Y-%m-%d-%H:%M")
    return first, floor_hour(now_utc.astimezone(dt.UTC).replace(tzinfo=None))


def tick(
    conn: psycopg.Connection, settings: Settings, cursor_json: str | None, now_utc: dt.datetime,
    writers_conn: psycopg.Connection | None = None,
) -> TickPlan:
    """``read_tick`` (on ``conn``: the source), then the open writer transactions (on
    ``writers_conn``: the writers' server, default ``conn``), then ``plan_tick`` against the
    configured ships and partitions. Both connections in autocommit mode."""
    arr = arrival(settings)
    cursor = Cursor.from_json(cursor_json, arr)
    read = read_tick(conn, settings, cursor)
    if read.initial is None:  # after the snapshot: see writers.py
        read.writers = read_writers(writers_conn or conn, settings)
    first, last = partition_hours(settings, now_utc)
    return plan_tick(read, cursor, arr, ships=settings.ships, first_hour=first, last_hour=last,
                     now=now_utc.timestamp())
