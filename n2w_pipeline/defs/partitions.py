"""Partitions: every wide asset is split by hour × ship; daily products (exports,
rollups) by day × ship, each day reading its 24 wide hours."""

from __future__ import annotations

import datetime as dt
import warnings
from collections import defaultdict
from collections.abc import Iterable

import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.hours import hour_ranges

HOUR_FMT = "%Y-%m-%d-%H:%M"
DAY_FMT = "%Y-%m-%d"


def wide_partitions(settings: Settings) -> dg.MultiPartitionsDefinition:
    """Hourly time (the open hour included, for realtime) × the configured ships."""
    return dg.MultiPartitionsDefinition(
        {
            "hour": dg.HourlyPartitionsDefinition(start_date=settings.partition_start, end_offset=1),
            "ship": dg.StaticPartitionsDefinition(list(settings.ships)),
        }
    )


def day_partitions(settings: Settings) -> dg.MultiPartitionsDefinition:
    """Daily time × the configured ships, for assets downstream of the wide assets. A day
    exists once it has ended (no ``end_offset``): a day's products read whole days."""
    start = dt.datetime.strptime(settings.partition_start, HOUR_FMT)
    return dg.MultiPartitionsDefinition(
        {
            "day": dg.DailyPartitionsDefinition(start_date=start.strftime(DAY_FMT)),
            "ship": dg.StaticPartitionsDefinition(list(settings.ships)),
        }
    )


def hours_to_days() -> dg.MultiPartitionMapping:
    """A (day, ship) partition depends on the 24 (hour, ship) wide partitions of that day."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MultiPartitionMapping is beta in Dagster 1.13
        return dg.MultiPartitionMapping(
            {
                "hour": dg.DimensionPartitionMapping("day", dg.TimeWindowPartitionMapping()),
                "ship": dg.DimensionPartitionMapping("ship", dg.IdentityPartitionMapping()),
            }
        )


def day_key(ship: str, day: dt.date) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"day": day.strftime(DAY_FMT), "ship": ship})


def split_day_key(
    partitions: dg.MultiPartitionsDefinition, key: str | dg.MultiPartitionKey
) -> tuple[str, dt.date]:
    """A day partition key (object or its string form) → (ship, day)."""
    if not isinstance(key, dg.MultiPartitionKey):
        key = partitions.get_partition_key_from_str(str(key))
    dims = key.keys_by_dimension
    return dims["ship"], dt.datetime.strptime(dims["day"], DAY_FMT).date()


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


def fleet_windows(
    windows: Iterable[tuple[str, dt.datetime, dt.datetime]],
) -> list[tuple[tuple[str, ...], dt.datetime, dt.datetime]]:
    """``ship_windows`` with the ships that share a window together: a run over several
    ships × the same hours (a range run of one hour × ships, or ships × hours launched by
    ``n2w backfill``) becomes one window of all of them, read ship-hours at a time."""
    ships: dict[tuple[dt.datetime, dt.datetime], list[str]] = defaultdict(list)
    for ship, start, end in windows:
        ships[(start, end)].append(ship)
    return [(tuple(s), start, end) for (start, end), s in sorted(ships.items())]
