"""Running the checks: facts → differences where the counts disagree → verdicts.

``evaluate`` is what a materialisation (through ``defs/checks.py``) and the on-demand job
call on an open connection; ``check_window`` is the CLI's entry point (``n2w check``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Sequence

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
    source: psycopg.Connection | None = None,
) -> list[CheckOutcome]:
    """Run the named checks for ``groups`` over ``windows``; outcomes ordered by group, check.
    ``narrow_hours``, ``source`` (the narrow table's database, default ``conn``): see
    ``gather_facts``."""
    thresholds = thresholds or Thresholds.from_settings(settings)
    names = [n for n in CHECK_NAMES if n in set(names)]
    facts = gather_facts(conn, settings, groups, windows, narrow_hours, source)
    out = []
    for g in groups:
        f = facts[g.number]
        if RECONCILIATION in names and f.failing_hours():
            f.differences = locate_differences(conn, settings, f, source=source)
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
    source_url: str | None = None,
) -> list[CheckOutcome]:
    """All checks for ``ships`` × [start, end), one set per ship (the CLI's entry point);
    the narrow table is read on ``source_url`` (default ``url``)."""
    groups = list(catalog.groups if groups is None else groups)
    out: list[CheckOutcome] = []
    with open_pair(url, source_url) as (conn, source):
        for ship in ships:
            out.extend(evaluate(conn, settings, groups, [(ship, start, end)], source=source))
    return out


@contextlib.contextmanager
def open_pair(url: str, source_url: str | None) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    """Autocommit connections to the data database and to the narrow table's database
    (the same connection when ``source_url`` is None or equals ``url``)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if not source_url or source_url == url:
            yield conn, conn
            return
        with psycopg.connect(source_url, autocommit=True) as source:
            yield conn, source
