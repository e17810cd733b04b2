"""Running the checks: facts → differences where the counts disagree → verdicts.

``evaluate`` is what a materialisation (through ``defs/checks.py``) and the on-demand job
call on an open connection; ``check_window`` is the CLI's entry point (``n2w check``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import psycopg

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup
from n2w_pipeline.checks.diff import locate_differences
from n2w_pipeline.checks.facts import NarrowHours, Window, gather_facts
from n2w_pipeline.checks.verdicts import (
    CHECK_NAMES,
    COVERAGE,
    FILL,
    RECONCILIATION,
    CheckOutcome,
    Thresholds,
    coverage_check,
    fill_check,
    reconciliation_check,
    unknown_check,
)
from n2w_pipeline.config import Settings


def evaluate(
    conn: psycopg.Connection,
    settings: Settings,
    groups: Sequence[ChannelGroup],
    windows: Iterable[Window],
    thresholds: Thresholds | None = None,
    names: Iterable[str] = CHECK_NAMES,
    narrow_hours: NarrowHours | None = None,
) -> list[CheckOutcome]:
    """Run the named checks for ``groups`` over ``windows``; outcomes ordered by group, check.
    ``narrow_hours``: see ``gather_facts``."""
    thresholds = thresholds or Thresholds.from_settings(settings)
    names = [n for n in CHECK_NAMES if n in set(names)]
    facts = gather_facts(conn, settings, groups, windows, narrow_hours)
    out = []
    for g in groups:
        f = facts[g.number]
        if RECONCILIATION in names and f.failing_hours():
            f.differences = locate_differences(conn, settings, f)
        for name in names:
            if name == FILL:
                out.append(fill_check(f, thresholds))
            elif name == COVERAGE:
                out.append(coverage_check(f, thresholds))
            elif name == RECONCILIATION:
                out.append(reconciliation_check(f))
            else:
                out.append(unknown_check(f))
    return out


def check_window(
    url: str,
    settings: Settings,
    catalog: ChannelCatalog,
    ships: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    groups: Sequence[ChannelGroup] | None = None,
) -> list[CheckOutcome]:
    """All checks for ``ships`` × [start, end), one set per ship (the CLI's entry point)."""
    groups = list(catalog.groups if groups is None else groups)
    out: list[CheckOutcome] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for ship in ships:
            out.extend(evaluate(conn, settings, groups, [(ship, start, end)]))
    return out
