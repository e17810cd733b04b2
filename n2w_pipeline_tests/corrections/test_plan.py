"""Planning (pure, no database): a parsed file split by channel group into dense blocks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.corrections import parse_csv, plan_tables
from n2w_pipeline.hours import EPOCH
from n2w_pipeline_tests.corrections.common import GOOD, H0, S, ts


def _us(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)


def test_plan_splits_by_group_in_group_order_and_counts_unknown_channels(lists_dir: Path):
    catalog = load_catalog(lists_dir)
    g1, g3 = catalog.group(1), catalog.group(3)
    a, b, c = g1.channels[0], g1.channels[1], g3.channels[0]
    data = (f"timestamp,{c},{b},{a},/nowhere\n"
            f"{ts(H0)},7,,1,5\n"
            f"{ts(H0 + S)},,2,,\n"
            f"{ts(H0 + 2 * S)},,,,6\n").encode()  # only an unknown channel: in no block
    plan = plan_tables(parse_csv(data, GOOD), catalog)
    assert plan.unknown == {"/nowhere": 2}
    t1, t3 = plan.tables
    assert (t1.group.number, t1.channels, t1.columns) == (1, (a, b), (g1.columns[0], g1.columns[1]))
    assert t1.block.times_us.tolist() == [_us(H0), _us(H0 + S)]  # rows with a cell of the group
    assert t1.block.mask.tolist() == [[True, False], [False, True]]
    assert t1.block.values[t1.block.mask].tolist() == [1.0, 2.0]
    assert t1.coverage_pct == round(100 * 2 / len(g1.channels), 1)
    assert (t3.group.number, t3.channels, t3.columns) == (3, (c,), (g3.columns[0],))
    assert (t3.block.times_us.tolist(), t3.block.values.tolist()) == ([_us(H0)], [[7.0]])

    first = t1.take(np.array([True, False]))
    assert (first.block.times_us.tolist(), first.block.mask.tolist()) == ([_us(H0)], [[True, False]])
    assert t1.take(np.array([True, True])) is t1
