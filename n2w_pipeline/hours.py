"""Hours on the ``created_time`` clock: the unit of partitions, locks and slices.

Every time here is naive and means UTC (the narrow table's ``created_time`` clock). An
hour is identified by its start; a window is ``[start, end)``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

HOUR = dt.timedelta(hours=1)
EPOCH = dt.datetime(1970, 1, 1)
HOUR_US = 3_600_000_000
"""Microseconds in an hour: the wide blocks hold times as µs since 1970."""


def floor_hour(value: dt.datetime) -> dt.datetime:
    """The start of the hour ``value`` falls in."""
    return value.replace(minute=0, second=0, microsecond=0)


def hour_number(value: dt.datetime) -> int:
    """Hours since 1970 of the hour ``value`` falls in (the advisory-lock key's unit)."""
    return int((value - EPOCH) // HOUR)


def from_hour_number(number: int) -> dt.datetime:
    return EPOCH + dt.timedelta(hours=number)


def hours_between(start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Every hour start in ``[start, end)``; ``start`` must be on the hour."""
    cursor = start
    while cursor < end:
        yield cursor
        cursor += HOUR


def hour_ranges(
    hours: Iterable[dt.datetime], max_hours: int | None = None
) -> list[tuple[dt.datetime, dt.datetime]]:
    """Hour starts → the contiguous ``[start, end)`` ranges that cover them, in order.

    Duplicates are ignored; with ``max_hours`` a longer run of hours is cut into ranges
    of at most that many hours (a backfill's runs, a window's slices).
    """
    ranges: list[tuple[dt.datetime, dt.datetime]] = []
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    for h in sorted(set(hours)):
        full = max_hours is not None and start is not None and h - start >= max_hours * HOUR
        if start is None or h != end or full:
            if start is not None:
                ranges.append((start, end))  # type: ignore[arg-type]
            start = h
        end = h + HOUR
    if start is not None:
        ranges.append((start, end))  # type: ignore[arg-type]
    return ranges


def window_slices(
    start: dt.datetime, end: dt.datetime, hours: int
) -> list[tuple[dt.datetime, dt.datetime]]:
    """``[start, end)`` cut into consecutive windows of at most ``hours`` hours."""
    return hour_ranges(hours_between(start, end), hours)
