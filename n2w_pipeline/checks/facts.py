"""The facts every check is judged on, and the few SQL passes that gather them.

For one ship, one channel group and a window of hours, ``gather_facts`` reads a few
aggregates, designed to cost a fraction of the pivot that built the table:

* one pass over the wide table's window: rows and ``count(column)`` per channel, per hour;
* the narrow side per hour (rows of the group's channels, distinct timestamps): inside a
  materialisation, as the run read them (``narrow_hours``; a second pass over the
  narrow table measured +35 % on a ship-week backfill); on demand, one pass over the
  narrow table (primary-key index only scan where the planner takes it);
* the window's rows of ``n2w_value_issues`` and of the group's corrections shadow table
  (``<wide table>_corr``: one row per corrected timestamp, NULL = no correction; small).

The narrow table may live on another server than the wide tables (``N2W_SOURCE_URL``, e.g.
a read-only replica): every pass that reads it takes the ``source`` connection, and no
query joins the two (the few narrow rows under corrections are looked up by key).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from n2w_pipeline import value_rule
from n2w_pipeline.channels import TIME_COLUMN, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.hours import floor_hour
from n2w_pipeline.write import UNKNOWN_GROUP, VALUE_ISSUES, correction_columns, existing_columns

NULL_REASONS = ("null_value", "unknown_format", "unparsable", "non_finite")
UNKNOWN_REASON = "unknown_channel"

Window = tuple[str, dt.datetime, dt.datetime]
"""(ship, start, end): the hours [start, end) of one ship."""
Issue = tuple[dt.datetime, str, int, str, int]
"""(hour, channel, group, reason, count): one row of ``n2w_value_issues``."""

NarrowHours = Mapping[tuple[str, int], Mapping[dt.datetime, tuple[int, int]]]
"""(ship, group) → hour → (narrow rows of the group's channels read, expected wide rows:
their distinct timestamps ∪ the group's correction timestamps)."""


@dataclass
class HourFacts:
    """What one hour of one (ship, group) holds, from each side."""

    wide_rows: int = 0
    wide_cells: int = 0
    narrow_rows: int = 0
    narrow_times: int = 0  # distinct narrow timestamps ∪ correction timestamps (expected rows)
    null_values: int = 0
    corrections: int = 0
    corrections_nan: int = 0
    corrections_over_narrow: int = 0  # a narrow row exists at the corrected cell
    corrections_over_null: int = 0  # … and the value rule left that narrow value NULL

    @property
    def adjustment(self) -> int:
        """Filled cells that corrections add beyond the narrow picture (may be negative)."""
        filled = self.corrections - self.corrections_nan
        return filled - self.corrections_over_narrow + self.corrections_over_null

    @property
    def balance(self) -> int:
        """narrow rows − (filled cells + counted NULLs − correction adjustment); 0 when right."""
        return self.narrow_rows - (self.wide_cells + self.null_values - self.adjustment)

    def add(self, other: HourFacts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class GroupFacts:
    """Aggregates of one channel group over the checked (ship, window)s."""

    group: ChannelGroup
    windows: list[Window] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    missing_tables: list[str] = field(default_factory=list)
    hours: dict[tuple[str, dt.datetime], HourFacts] = field(default_factory=dict)
    channel_cells: dict[str, int] = field(default_factory=dict)  # channel id → filled cells
    null_by_reason: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)  # channel id → narrow rows
    differences: list[dict[str, Any]] = field(default_factory=list)
    narrow_source: str = "table"  # "table": counted from the narrow table; "run": as read

    @property
    def total(self) -> HourFacts:
        out = HourFacts()
        for h in self.hours.values():
            out.add(h)
        return out

    def failing_hours(self) -> list[tuple[str, dt.datetime]]:
        return sorted(
            k for k, h in self.hours.items() if h.balance != 0 or h.narrow_times != h.wide_rows
        )


# --------------------------------------------------------------------------- the SQL passes


def value_rule_sql(conn: psycopg.Connection, settings: Settings, alias: str) -> sql.Composable:
    """The pipeline's value rule in SQL (``value_rule``): the cell a narrow row gives, NULL
    when it gives none. Used only on the few narrow rows under corrections and in
    ``find_differences``."""
    native = value_rule.install(conn.execute, conn.info.server_version)
    return value_rule.ValueRule(settings.columns, alias, native).cell_value()


def support_tables_exist(conn: psycopg.Connection, settings: Settings) -> bool:
    """Whether ``n2w_value_issues`` exists (a materialisation has run in the schema)."""
    name = sql.Identifier(settings.target_schema, VALUE_ISSUES).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def _wide_pass(
    conn: psycopg.Connection, settings: Settings, group: ChannelGroup, table: str,
    start: dt.datetime, end: dt.datetime,
) -> tuple[dict[dt.datetime, tuple[int, int]], list[int]]:
    """One pass over the wide window: per hour (rows, filled cells), and cells per channel."""
    cols = [sql.Identifier(c) for c in group.columns]
    counts = sql.SQL(", ").join(sql.SQL("count({})").format(c) for c in cols)
    rows = conn.execute(
        sql.SQL(
            "SELECT date_trunc('hour', {t}), count(*), {counts} FROM {table} "
            "WHERE {t} >= %s AND {t} < %s GROUP BY 1"
        ).format(
            t=sql.Identifier(TIME_COLUMN), counts=counts,
            table=sql.Identifier(settings.target_schema, table),
        ),
        (start, end),
    ).fetchall()
    per_hour: dict[dt.datetime, tuple[int, int]] = {}
    per_channel = [0] * len(cols)
    for row in rows:
        cells = row[2:]
        per_hour[row[0]] = (int(row[1]), int(sum(cells)))
        for i, n in enumerate(cells):
            per_channel[i] += int(n)
    return per_hour, per_channel


def _narrow_pass(
    conn: psycopg.Connection, settings: Settings, group: ChannelGroup, ship: str,
    start: dt.datetime, end: dt.datetime,
) -> dict[dt.datetime, tuple[int, set[dt.datetime]]]:
    """Narrow rows of the group's channels per timestamp → per hour (rows, timestamps)."""
    c = settings.columns
    ct = sql.Identifier(c.created_time)
    rows = conn.execute(
        sql.SQL(
            "SELECT {ct}, count(*) FROM {src} WHERE {ship} = %s AND {ch} = ANY(%s) "
            "AND {ct} >= %s AND {ct} < %s GROUP BY {ct}"
        ).format(
            ct=ct, src=sql.Identifier(*settings.source_qualified),
            ship=sql.Identifier(c.ship_id), ch=sql.Identifier(c.channel),
        ),
        (ship, list(group.channels), start, end),
    ).fetchall()
    out: dict[dt.datetime, tuple[int, set[dt.datetime]]] = {}
    for t, n in rows:
        h = floor_hour(t)
        count, times = out.get(h, (0, set()))
        times.add(t)
        out[h] = (count + int(n), times)
    return out


def _corrections(
    conn: psycopg.Connection, source: psycopg.Connection, settings: Settings, group: ChannelGroup,
    ship: str, start: dt.datetime, end: dt.datetime,
) -> list[tuple[dt.datetime, bool, bool, bool]]:
    """Correction cells of the group (non-NULL cells of its shadow table): (time, value is
    NaN, narrow row under it, its value NULL). The shadow table is read on ``conn``, the
    narrow rows under its cells on ``source`` (by ship, channels and timestamps: the
    primary key), so the two may be different servers."""
    corr = correction_columns(conn, settings, group, ship)
    if corr is None:
        return []
    cells = conn.execute(
        sql.SQL(
            "SELECT w.{time}, u.ch, u.v = 'NaN'::float8 FROM {shadow} w, unnest(%s::text[], {arr}) "
            "AS u(ch, v) WHERE w.{time} >= %s AND w.{time} < %s AND u.v IS NOT NULL"
        ).format(time=sql.Identifier(TIME_COLUMN), shadow=corr.table, arr=corr.array("w")),
        (list(corr.channels), start, end),
    ).fetchall()
    if not cells:
        return []
    c = settings.columns
    under = source.execute(
        sql.SQL(
            "SELECT n.{ct}, n.{ch}, {rule} IS NULL FROM {src} n "
            "WHERE n.{ship} = %s AND n.{ch} = ANY(%s) AND n.{ct} = ANY(%s::timestamp[])"
        ).format(
            ct=sql.Identifier(c.created_time), ch=sql.Identifier(c.channel),
            rule=value_rule_sql(source, settings, "n"), src=sql.Identifier(*settings.source_qualified),
            ship=sql.Identifier(c.ship_id),
        ),
        (ship, sorted({ch for _, ch, _ in cells}), sorted({t for t, _, _ in cells})),
    ).fetchall()
    narrow = {(t, ch): bool(null) for t, ch, null in under}
    return [(t, bool(nan), (t, ch) in narrow, narrow.get((t, ch), False)) for t, ch, nan in cells]


def _value_issues(
    conn: psycopg.Connection, settings: Settings, ship: str, start: dt.datetime, end: dt.datetime,
) -> list[Issue]:
    """(hour, channel, group, reason, count) rows recorded by the materialisations."""
    rows = conn.execute(
        sql.SQL(
            "SELECT hour, channel_id, group_number, reason, count FROM {} "
            "WHERE ship_id = %s AND hour >= %s AND hour < %s"
        ).format(sql.Identifier(settings.target_schema, VALUE_ISSUES)),
        (ship, floor_hour(start), end),
    ).fetchall()
    return [(r[0], r[1], int(r[2]), r[3], int(r[4])) for r in rows]


# --------------------------------------------------------------------------- gathering


def gather_facts(
    conn: psycopg.Connection,
    settings: Settings,
    groups: Sequence[ChannelGroup],
    windows: Iterable[Window],
    narrow_hours: NarrowHours | None = None,
    source: psycopg.Connection | None = None,
) -> dict[int, GroupFacts]:
    """Read the aggregates every check needs, for each group over all (ship, start, end).

    ``narrow_hours``: the narrow side as a run read it (in-run checks); without it, one
    pass over the narrow table per group counts it independently (on-demand checks).
    ``source``: a connection to the narrow table's database (default ``conn``)."""
    source = conn if source is None else source
    facts = {g.number: GroupFacts(g, narrow_source="run" if narrow_hours is not None else "table")
             for g in groups}
    windows = list(windows)
    support = support_tables_exist(conn, settings)
    for ship, start, end in windows:
        issues = _value_issues(conn, settings, ship, start, end) if support else []
        unknown: dict[str, int] = {}
        for _, ch, grp, reason, n in issues:
            if grp == UNKNOWN_GROUP and reason == UNKNOWN_REASON:
                unknown[ch] = unknown.get(ch, 0) + n
        for g in groups:
            gf = facts[g.number]
            gf.windows.append((ship, start, end))
            gf.tables.append(settings.table_name(ship, g.number))
            for ch, n in unknown.items():
                gf.unknown[ch] = gf.unknown.get(ch, 0) + n
            hours = _window_facts(conn, source, settings, gf, (ship, start, end), issues, narrow_hours)
            for h, f in hours.items():
                gf.hours.setdefault((ship, h), HourFacts()).add(f)
    return facts


def _window_facts(
    conn: psycopg.Connection,
    source: psycopg.Connection,
    settings: Settings,
    gf: GroupFacts,
    window: Window,
    issues: Sequence[Issue],
    narrow_hours: NarrowHours | None,
) -> dict[dt.datetime, HourFacts]:
    """One group over one window: the facts per hour (and the group's channel cells and
    NULL reasons, added to ``gf`` on the way)."""
    ship, start, end = window
    g = gf.group
    hours: dict[dt.datetime, HourFacts] = {}
    _add_wide(conn, settings, gf, window, hours)
    times: dict[dt.datetime, set[dt.datetime]] = {}
    if narrow_hours is None:  # count the narrow table
        for h, (n, ts) in _narrow_pass(source, settings, g, ship, start, end).items():
            _at(hours, h).narrow_rows += n
            times[h] = ts
    else:  # as the run read it; its expected rows include the correction timestamps
        for h, (n, expected) in narrow_hours.get((ship, g.number), {}).items():
            if start <= h < end:
                _at(hours, h).narrow_rows += n
                _at(hours, h).narrow_times += expected
    mine = set(g.channels)
    for h, ch, grp, reason, n in issues:
        if grp == g.number and ch in mine and reason in NULL_REASONS:
            _at(hours, h).null_values += n
            gf.null_by_reason[reason] = gf.null_by_reason.get(reason, 0) + n
    for t, nan, over_narrow, over_null in _corrections(conn, source, settings, g, ship, start, end):
        f = _at(hours, floor_hour(t))
        f.corrections += 1
        f.corrections_nan += nan
        f.corrections_over_narrow += over_narrow
        f.corrections_over_null += over_null
        if narrow_hours is None:
            times.setdefault(floor_hour(t), set()).add(t)
    for h, ts in times.items():
        _at(hours, h).narrow_times += len(ts)
    return hours


def _add_wide(
    conn: psycopg.Connection,
    settings: Settings,
    gf: GroupFacts,
    window: Window,
    hours: dict[dt.datetime, HourFacts],
) -> None:
    """The wide side of one window: rows and cells per hour, cells per channel; a table
    not materialised yet is noted (its channels count no cells)."""
    ship, start, end = window
    g = gf.group
    table = settings.table_name(ship, g.number)
    have = existing_columns(conn, settings.target_schema, table)
    if have is None:
        gf.missing_tables.append(table)
        for ch in g.channels:
            gf.channel_cells.setdefault(ch, 0)
        return
    present = set(have)
    missing = [c for c in g.columns if c not in present]
    if missing:
        raise RuntimeError(
            f"{table} lacks {len(missing)} column(s) of {g.path.name}, e.g. "
            f"{missing[0]!r}: materialise the group again to add them"
        )
    per_hour, per_channel = _wide_pass(conn, settings, g, table, start, end)
    for h, (rows, cells) in per_hour.items():
        _at(hours, h).wide_rows += rows
        _at(hours, h).wide_cells += cells
    for ch, n in zip(g.channels, per_channel, strict=True):
        gf.channel_cells[ch] = gf.channel_cells.get(ch, 0) + n


def _at(hours: dict[dt.datetime, HourFacts], hour: dt.datetime) -> HourFacts:
    return hours.setdefault(hour, HourFacts())
