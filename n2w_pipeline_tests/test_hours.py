"""The hour helpers every window, run, slice and lock is cut with."""

from __future__ import annotations

import datetime as dt

from n2w_pipeline.hours import (
    HOUR,
    floor_hour,
    from_hour_number,
    hour_number,
    hour_ranges,
    hours_between,
    window_slices,
)

H0 = dt.datetime(2025, 3, 1)
h = [H0 + i * HOUR for i in range(12)]


def test_floor_and_numbers() -> None:
    assert floor_hour(dt.datetime(2025, 3, 1, 5, 59, 59, 999_999)) == dt.datetime(2025, 3, 1, 5)
    assert hour_number(dt.datetime(1970, 1, 2, 3, 30)) == 27
    assert from_hour_number(hour_number(h[7])) == h[7]
    assert list(hours_between(h[2], h[5])) == h[2:5]
    assert list(hours_between(h[5], h[5])) == []


def test_hour_ranges_merge_contiguous_hours_in_order() -> None:
    assert hour_ranges([]) == []
    assert hour_ranges([h[3], h[0], h[1], h[1], h[5]]) == [(h[0], h[2]), (h[3], h[4]), (h[5], h[6])]


def test_hour_ranges_cut_at_max_hours() -> None:
    assert hour_ranges(h[0:7], 3) == [(h[0], h[3]), (h[3], h[6]), (h[6], h[7])]
    # a gap starts a new range whatever the length so far
    assert hour_ranges([h[0], h[1], h[3], h[4], h[5], h[6]], 3) == [(h[0], h[2]), (h[3], h[6]), (h[6], h[7])]


def test_window_slices() -> None:
    assert window_slices(h[0], h[5], 2) == [(h[0], h[2]), (h[2], h[4]), (h[4], h[5])]
    assert window_slices(h[0], h[0], 2) == []
