"""Partitions: every wide asset is split by hour × ship."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable

import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.hours import hour_ranges

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


def split_key(
    partitions: dg.MultiPartitionsDefinition, key: str | dg.MultiPartitionKey
) -> tuple[str, dt.datetime]:
    """A wide partition key (object or its string form) → (ship, hour)."""
    if not isinstance(key, dg.MultiPartitionKey):
        key = partitions.get_partition_key_from_str(str(key))
    dims = key.keys_by_dimension
    return dims["ship"], dt.datetime.strptime(dims["hour"], HOUR_FMT)


def ship_windows(
    partitions: dg.MultiPartitionsDefinition, keys: Iterable[str | dg.MultiPartitionKey]
) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """Partition keys → (ship, start, end) windows of contiguous hours, per ship, in order.

    Works for any selection a run can carry: one partition, an hour range of one ship,
    one hour of several ships, or anything else.
    """
    hours: dict[str, set[dt.datetime]] = defaultdict(set)
    for key in keys:
        ship, hour = split_key(partitions, key)
        hours[ship].add(hour)
    return [(ship, start, end) for ship in sorted(hours) for start, end in hour_ranges(hours[ship])]
