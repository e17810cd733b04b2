"""Partitions: every wide asset is split by hour × ship."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable

import dagster as dg

from n2w_pipeline.config import Settings

HOUR_FMT = "%Y-%m-%d-%H:%M"


def wide_partitions(settings: Settings) -> dg.MultiPartitionsDefinition:
    """Hourly time (the open hour included, for realtime) × the configured ships."""
    return dg.MultiPartitionsDefinition(
        {
            "hour": dg.HourlyPartitionsDefinition(start_date=settings.partition_start, end_offset=1),
            "ship": dg.StaticPartitionsDefinition(list(settings.ships)),
        }
    )


def partition_key(ship: str, hour: dt.datetime) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"hour": hour.strftime(HOUR_FMT), "ship": ship})


def ship_windows(keys: Iterable[str]) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """Partition keys → (ship, start, end) windows of contiguous hours, per ship, in order.

    Works for any selection a run can carry: one partition, an hour range of one ship,
    one hour of several ships, or anything else.
    """
    hours: dict[str, set[dt.datetime]] = defaultdict(set)
    for key in keys:
        hour, ship = str(key).split("|")  # dimensions are ordered by name: hour, ship
        hours[ship].add(dt.datetime.strptime(hour, HOUR_FMT))
    windows = []
    one = dt.timedelta(hours=1)
    for ship in sorted(hours):
        run_start = prev = None
        for h in sorted(hours[ship]):
            if run_start is None:
                run_start = prev = h
            elif h == prev + one:
                prev = h
            else:
                windows.append((ship, run_start, prev + one))
                run_start = prev = h
        if run_start is not None:
            windows.append((ship, run_start, prev + one))
    return windows
