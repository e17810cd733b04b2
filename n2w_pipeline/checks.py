"""Data-quality checks of the wide tables against the narrow table. No Dagster here.

For one ship, one channel group and a window of hours, ``gather_facts`` reads a few
aggregates, designed to cost a fraction of the pivot that built the table:

* one pass over the wide table's window: rows and ``count(column)`` per channel, per hour;
* the narrow side per hour (rows of the group's channels, distinct timestamps): inside a
  materialisation, as the run read them (``narrow_hours``; a second pass over the
  narrow table measured +35 % on a ship-week backfill); on demand, one pass over the
  narrow table (primary-key index only scan where the planner takes it);
* the window's rows of ``n2w_value_issues`` and of the group's corrections shadow table
  (``<wide table>_corr``: one row per corrected timestamp, NULL = no correction; small).

The four checks are pure functions of those facts:

* **null-fill rate**: filled cells / (rows × channels), with the ten emptiest channels;
* **channel coverage**: channels with at least one value / channels in the list;
* **reconciliation**: every narrow row of the group is a filled cell or a counted NULL
  (``null_value``, ``unparsable``, ``non_finite``, ``unknown_format``), corrected cells
  accounted for exactly, and every narrow or correction timestamp is one wide row. Only
  when the counts disagree, ``find_differences`` compares the first failing hours cell by
  cell and names the timestamps and channels;
* **unknown channels**: narrow channels in no list, with their row counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from n2w_pipeline import value_rule
from n2w_pipeline.channels import TIME_COLUMN, ChannelCatalog, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.write import VALUE_ISSUES, CorrectionColumns, correction_columns, existing_columns

NULL_REASONS = ("null_value", "unknown_format", "unparsable", "non_finite")
UNKNOWN_REASON = "unknown_channel"
UNKNOWN_GROUP = 0

FILL, COVERAGE, RECONCILIATION, UNKNOWN = (
    "null_fill_rate", "channel_coverage", "reconciliation", "unknown_channels",
)
CHECK_NAMES = (FILL, COVERAGE, RECONCILIATION, UNKNOWN)
WARN, ERROR = "WARN", "ERROR"
SEVERITY = {FILL: WARN, COVERAGE: WARN, RECONCILIATION: ERROR, UNKNOWN: WARN}
BLOCKING = {FILL: False, COVERAGE: False, RECONCILIATION: True, UNKNOWN: False}
DESCRIPTIONS = {
    FILL: (
        "Share of filled cells (channel columns × rows) in the wide table over the checked "
        "window, with the ten emptiest channels. Warns below the group's minimum "
        "(N2W_CHECK_MIN_FILL_PCT, default 90 %: the reference fleet misses ~5 % of samples, "
        "so a healthy table is ~95 % filled)."
    ),
    COVERAGE: (
        "Channels of the list with at least one value in the checked window, and the silent "
        "ones. Warns below the group's minimum (N2W_CHECK_MIN_COVERAGE_PCT, default 95 %): a "
        "channel reporting every 15 s is never silent for an hour by chance, so a silent "
        "channel is a sensor, feed or list problem."
    ),
    RECONCILIATION: (
        "Every narrow value of the group's channels in the checked window landed: narrow "
        "rows = filled wide cells + values that stayed NULL (counted per reason), with CSV "
        "corrections accounted for cell by cell, and distinct narrow (and correction) "
        "timestamps = wide rows. A failure names the first differing timestamps and "
        "channels; it blocks downstream work. Inside a materialisation the narrow side is "
        "what the run read (so rows arriving later do not fail it, and the narrow table is "
        "not scanned twice); the n2w_check_window job and `n2w check` count the narrow "
        "table itself, which also catches rows that arrived after the run."
    ),
    UNKNOWN: (
        "Narrow channels of the ship that are in no channel list, with their row counts (as "
        "counted by the last materialisation of each hour): their values are in no wide "
        "table. Add them to a list under N2W_CHANNEL_LISTS to keep them."
    ),
}
TOP_N = 10
DIFF_LIMIT = 10


@dataclass(frozen=True)
class Thresholds:
    """Per-group minimums in percent; ``{0: pct}`` is the default for every group."""

    min_fill_pct: Mapping[int, float]
    min_coverage_pct: Mapping[int, float]

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(dict(settings.check_min_fill_pct), dict(settings.check_min_coverage_pct))

    def fill(self, group: int) -> float:
        return self.min_fill_pct.get(group, self.min_fill_pct.get(0, 90.0))

    def coverage(self, group: int) -> float:
        return self.min_coverage_pct.get(group, self.min_coverage_pct.get(0, 95.0))


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
    windows: list[tuple[str, dt.datetime, dt.datetime]] = field(default_factory=list)
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


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict, a one-line summary and the figures behind it."""

    name: str
    group: int
    passed: bool
    severity: str
    summary: str
    metadata: dict[str, Any]


def _hour(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _value_rule_sql(conn: psycopg.Connection, settings: Settings, alias: str) -> sql.Composable:
    """The pipeline's value rule in SQL (``value_rule``): the cell a narrow row gives, NULL
    when it gives none. Used only on the few narrow rows under corrections and in
    ``find_differences``."""
    native = value_rule.install(conn.execute, conn.info.server_version)
    return value_rule.ValueRule(settings.columns, alias, native).cell_value()


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
        h = _hour(t)
        count, times = out.get(h, (0, set()))
        times.add(t)
        out[h] = (count + int(n), times)
    return out


def _corrections(
    conn: psycopg.Connection, settings: Settings, group: ChannelGroup, ship: str,
    start: dt.datetime, end: dt.datetime,
) -> list[tuple[dt.datetime, bool, bool, bool]]:
    """Correction cells of the group (non-NULL cells of its shadow table): (time, value is
    NaN, narrow row under it, its value NULL)."""
    corr = correction_columns(conn, settings, group, ship)
    if corr is None:
        return []
    c = settings.columns
    rows = conn.execute(
        sql.SQL(
            """WITH k AS (
  SELECT w.{time} AS t, u.ch, u.v FROM {shadow} w, unnest(%s::text[], {arr}) AS u(ch, v)
  WHERE w.{time} >= %s AND w.{time} < %s AND u.v IS NOT NULL)
SELECT k.t, k.v = 'NaN'::float8, n.{ct} IS NOT NULL, n.{ct} IS NOT NULL AND {rule} IS NULL
FROM k LEFT JOIN {src} n ON n.{ship} = %s AND n.{ch} = k.ch AND n.{ct} = k.t"""
        ).format(
            time=sql.Identifier(TIME_COLUMN), shadow=corr.table, arr=corr.array("w"),
            ct=sql.Identifier(c.created_time), rule=_value_rule_sql(conn, settings, "n"),
            src=sql.Identifier(*settings.source_qualified),
            ship=sql.Identifier(c.ship_id), ch=sql.Identifier(c.channel),
        ),
        (list(corr.channels), start, end, ship),
    ).fetchall()
    return [(r[0], bool(r[1]), bool(r[2]), bool(r[3])) for r in rows]


def _value_issues(
    conn: psycopg.Connection, settings: Settings, ship: str, start: dt.datetime, end: dt.datetime,
) -> list[tuple[dt.datetime, str, int, str, int]]:
    """(hour, channel, group, reason, count) rows recorded by the materialisations."""
    rows = conn.execute(
        sql.SQL(
            "SELECT hour, channel_id, group_number, reason, count FROM {} "
            "WHERE ship_id = %s AND hour >= %s AND hour < %s"
        ).format(sql.Identifier(settings.target_schema, VALUE_ISSUES)),
        (ship, _hour(start), end),
    ).fetchall()
    return [(r[0], r[1], int(r[2]), r[3], int(r[4])) for r in rows]


def _support_tables_exist(conn: psycopg.Connection, settings: Settings) -> bool:
    name = sql.Identifier(settings.target_schema, VALUE_ISSUES).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


NarrowHours = Mapping[tuple[str, int], Mapping[dt.datetime, tuple[int, int]]]
"""(ship, group) → hour → (narrow rows of the group's channels read, expected wide rows:
their distinct timestamps ∪ the group's correction timestamps)."""


def gather_facts(
    conn: psycopg.Connection,
    settings: Settings,
    groups: Sequence[ChannelGroup],
    windows: Iterable[tuple[str, dt.datetime, dt.datetime]],
    narrow_hours: NarrowHours | None = None,
) -> dict[int, GroupFacts]:
    """Read the aggregates every check needs, for each group over all (ship, start, end).

    ``narrow_hours``: the narrow side as a run read it (in-run checks); without it, one
    pass over the narrow table per group counts it independently (on-demand checks)."""
    facts = {g.number: GroupFacts(g, narrow_source="run" if narrow_hours is not None else "table")
             for g in groups}
    windows = list(windows)
    support = _support_tables_exist(conn, settings)
    for ship, start, end in windows:
        issues = _value_issues(conn, settings, ship, start, end) if support else []
        unknown: dict[str, int] = {}
        for _, ch, grp, reason, n in issues:
            if grp == UNKNOWN_GROUP and reason == UNKNOWN_REASON:
                unknown[ch] = unknown.get(ch, 0) + n
        for g in groups:
            gf = facts[g.number]
            gf.windows.append((ship, start, end))
            table = settings.table_name(ship, g.number)
            gf.tables.append(table)
            for ch, n in unknown.items():
                gf.unknown[ch] = gf.unknown.get(ch, 0) + n
            hours: dict[dt.datetime, HourFacts] = {}

            def at(h: dt.datetime, hours: dict[dt.datetime, HourFacts] = hours) -> HourFacts:
                return hours.setdefault(h, HourFacts())

            have = existing_columns(conn, settings.target_schema, table)
            if have is None:
                gf.missing_tables.append(table)
            else:
                present = set(have)
                missing = [c for c in g.columns if c not in present]
                if missing:
                    raise RuntimeError(
                        f"{table} lacks {len(missing)} column(s) of {g.path.name}, e.g. "
                        f"{missing[0]!r}: materialise the group again to add them"
                    )
                per_hour, per_channel = _wide_pass(conn, settings, g, table, start, end)
                for h, (rows, cells) in per_hour.items():
                    at(h).wide_rows += rows
                    at(h).wide_cells += cells
                for ch, n in zip(g.channels, per_channel, strict=True):
                    gf.channel_cells[ch] = gf.channel_cells.get(ch, 0) + n
            if have is None:
                for ch in g.channels:
                    gf.channel_cells.setdefault(ch, 0)
            times: dict[dt.datetime, set[dt.datetime]] = {}
            if narrow_hours is None:  # count the narrow table
                for h, (n, ts) in _narrow_pass(conn, settings, g, ship, start, end).items():
                    at(h).narrow_rows += n
                    times[h] = ts
            else:  # as the run read it; its expected rows include the correction timestamps
                for h, (n, expected) in narrow_hours.get((ship, g.number), {}).items():
                    if start <= h < end:
                        at(h).narrow_rows += n
                        at(h).narrow_times += expected
            mine = set(g.channels)
            for h, ch, grp, reason, n in issues:
                if grp == g.number and ch in mine and reason in NULL_REASONS:
                    at(h).null_values += n
                    gf.null_by_reason[reason] = gf.null_by_reason.get(reason, 0) + n
            for t, nan, over_narrow, over_null in _corrections(conn, settings, g, ship, start, end):
                f = at(_hour(t))
                f.corrections += 1
                f.corrections_nan += nan
                f.corrections_over_narrow += over_narrow
                f.corrections_over_null += over_null
                if narrow_hours is None:
                    times.setdefault(_hour(t), set()).add(t)
            for h, ts in times.items():
                at(h).narrow_times += len(ts)
            for h, f in hours.items():
                gf.hours.setdefault((ship, h), HourFacts()).add(f)
    return facts


def _correction_cells_sql(corr: CorrectionColumns | None) -> sql.Composable:
    """A query of the correction cells in [%(start)s, %(end)s) as (t, ch, v), NaN as NULL
    (a row, no cell); no rows if the shadow table does not exist (``corr`` is None)."""
    if corr is None:
        return sql.SQL("SELECT NULL::timestamp AS t, NULL::text AS ch, NULL::float8 AS v WHERE false")
    return sql.SQL(
        """SELECT w.{time} AS t, u.ch, CASE WHEN u.v = 'NaN'::float8 THEN NULL ELSE u.v END AS v
  FROM {shadow} w, unnest(%(corr_chs)s::text[], {arr}) AS u(ch, v)
  WHERE w.{time} >= %(start)s AND w.{time} < %(end)s AND u.v IS NOT NULL"""
    ).format(time=sql.Identifier(TIME_COLUMN), shadow=corr.table, arr=corr.array("w"))


def find_differences(
    conn: psycopg.Connection,
    settings: Settings,
    group: ChannelGroup,
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
    limit: int = DIFF_LIMIT,
) -> list[dict[str, Any]]:
    """Cell by cell over [start, end): wide table vs narrow values overlaid by corrections.

    Returns the first ``limit`` differences in time order, each with time, channel (None
    for a whole row), kind (missing_row, extra_row, missing_cell, extra_cell,
    value_differs), expected and actual. Meant for an hour or two, after counts disagree.
    """
    c = settings.columns
    table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
    corr = correction_columns(conn, settings, group, ship)
    q = sql.SQL(
        """WITH n AS (
  SELECT s.{ct} AS t, s.{ch} AS ch, {rule} AS v FROM {src} s
  WHERE s.{ship} = %(ship)s AND s.{ch} = ANY(%(chs)s) AND s.{ct} >= %(start)s AND s.{ct} < %(end)s),
k AS ({corr}),
e AS (
  SELECT coalesce(k.t, n.t) AS t, coalesce(k.ch, n.ch) AS ch,
         CASE WHEN k.ch IS NOT NULL THEN k.v ELSE n.v END AS v
  FROM n FULL JOIN k ON k.t = n.t AND k.ch = n.ch),
a AS (
  SELECT w.{time} AS t, u.ch, u.v FROM {table} w,
    unnest(%(chs)s::text[], ARRAY[{cols}]::float8[]) AS u(ch, v)
  WHERE w.{time} >= %(start)s AND w.{time} < %(end)s),
rows_e AS (SELECT DISTINCT t FROM e),
rows_a AS (SELECT w.{time} AS t FROM {table} w WHERE w.{time} >= %(start)s AND w.{time} < %(end)s),
diff AS (
  SELECT coalesce(re.t, ra.t) AS t, NULL::text AS ch,
         CASE WHEN ra.t IS NULL THEN 'missing_row' ELSE 'extra_row' END AS kind,
         NULL::float8 AS expected, NULL::float8 AS actual
  FROM rows_e re FULL JOIN rows_a ra ON ra.t = re.t WHERE re.t IS NULL OR ra.t IS NULL
  UNION ALL
  SELECT coalesce(e.t, a.t), coalesce(e.ch, a.ch),
         CASE WHEN a.v IS NULL THEN 'missing_cell' WHEN e.v IS NULL THEN 'extra_cell'
              ELSE 'value_differs' END,
         e.v, a.v
  FROM (SELECT * FROM e WHERE v IS NOT NULL) e
  FULL JOIN (SELECT * FROM a WHERE v IS NOT NULL) a ON a.t = e.t AND a.ch = e.ch
  WHERE e.v IS NULL OR a.v IS NULL OR e.v IS DISTINCT FROM a.v)
SELECT t, ch, kind, expected, actual FROM diff ORDER BY t, ch NULLS FIRST LIMIT %(limit)s"""
    ).format(
        ct=sql.Identifier(c.created_time), ch=sql.Identifier(c.channel),
        ship=sql.Identifier(c.ship_id), src=sql.Identifier(*settings.source_qualified),
        rule=_value_rule_sql(conn, settings, "s"), corr=_correction_cells_sql(corr),
        time=sql.Identifier(TIME_COLUMN), table=table,
        cols=sql.SQL(", ").join(sql.SQL("w.{}").format(sql.Identifier(col)) for col in group.columns),
    )
    rows = conn.execute(
        q, {"ship": ship, "chs": list(group.channels), "start": start, "end": end, "limit": limit,
            "corr_chs": list(corr.channels) if corr else []}
    ).fetchall()
    return [
        {"time": t.isoformat(), "channel": ch, "kind": kind, "expected": exp, "actual": act}
        for t, ch, kind, exp, act in rows
    ]


def locate_differences(
    conn: psycopg.Connection, settings: Settings, facts: GroupFacts, limit: int = DIFF_LIMIT
) -> list[dict[str, Any]]:
    """Cell-level differences in the first hours whose counts disagree (at most ``limit``)."""
    if not _support_tables_exist(conn, settings):
        return []
    missing = {t for t in facts.missing_tables}
    out: list[dict[str, Any]] = []
    for ship, hour in facts.failing_hours():
        if settings.table_name(ship, facts.group.number) in missing:
            continue
        found = find_differences(
            conn, settings, facts.group, ship, hour, hour + dt.timedelta(hours=1), limit - len(out)
        )
        out.extend({"ship": ship, **d} for d in found)
        if len(out) >= limit:
            break
    return out


def _pct(num: int, den: int) -> float:
    return round(100.0 * num / den, 3) if den else 0.0


def _windows_md(facts: GroupFacts) -> dict[str, Any]:
    ships = sorted({s for s, _, _ in facts.windows})
    return {
        "ships": ships,
        "windows": [[s, a.isoformat(), b.isoformat()] for s, a, b in facts.windows],
        "hours_checked": int(sum((b - a).total_seconds() // 3600 for _, a, b in facts.windows)),
        "tables": sorted(set(facts.tables)),
    }


def fill_check(facts: GroupFacts, thresholds: Thresholds) -> CheckOutcome:
    g = facts.group
    total = facts.total
    n_ch = len(g.channels)
    slots = total.wide_rows * n_ch
    pct = _pct(total.wide_cells, slots)
    minimum = thresholds.fill(g.number)
    passed = total.wide_rows > 0 and pct >= minimum
    rows = total.wide_rows
    emptiest = sorted(facts.channel_cells.items(), key=lambda kv: (kv[1], kv[0]))[:TOP_N]
    emptiest_md = [
        {"channel": ch, "filled_cells": n, "filled_pct": _pct(n, rows)} for ch, n in emptiest
    ]
    summary = (
        f"{pct:.2f} % filled ({total.wide_cells:,} of {slots:,} cells), minimum {minimum:g} %"
        if rows else "no wide rows in the window"
    )
    return CheckOutcome(FILL, g.number, passed, SEVERITY[FILL], summary, {
        "filled_pct": pct,
        "min_fill_pct": minimum,
        "filled_cells": total.wide_cells,
        "cell_slots": slots,
        "wide_rows": rows,
        "channels": n_ch,
        "emptiest_channels": emptiest_md,
        **_windows_md(facts),
    })


def coverage_check(facts: GroupFacts, thresholds: Thresholds) -> CheckOutcome:
    g = facts.group
    silent = [ch for ch in g.channels if facts.channel_cells.get(ch, 0) == 0]
    reporting = len(g.channels) - len(silent)
    pct = _pct(reporting, len(g.channels))
    minimum = thresholds.coverage(g.number)
    passed = pct >= minimum
    summary = (
        f"{reporting} of {len(g.channels)} channels have values ({pct:.2f} %), minimum {minimum:g} %"
        + (f"; silent: {', '.join(silent[:3])}{' …' if len(silent) > 3 else ''}" if silent else "")
    )
    return CheckOutcome(COVERAGE, g.number, passed, SEVERITY[COVERAGE], summary, {
        "coverage_pct": pct,
        "min_coverage_pct": minimum,
        "channels_with_values": reporting,
        "channels": len(g.channels),
        "silent_channel_count": len(silent),
        "silent_channels": silent[:100],
        **_windows_md(facts),
    })


def reconciliation_check(facts: GroupFacts) -> CheckOutcome:
    g = facts.group
    t = facts.total
    rows_ok = t.narrow_times == t.wide_rows
    passed = t.balance == 0 and rows_ok and not facts.failing_hours()
    if passed:
        summary = (
            f"{t.narrow_rows:,} narrow rows = {t.wide_cells:,} filled cells + {t.null_values:,} "
            f"counted NULLs - {t.adjustment:,} cells added by corrections; {t.wide_rows:,} rows"
        )
    else:
        first = facts.differences[0] if facts.differences else None
        where = (
            f"; first difference {first['kind']} at {first['time']}"
            + (f" {first['channel']}" if first["channel"] else "")
            if first else ""
        )
        hours = facts.failing_hours()
        summary = (
            f"narrow rows off by {t.balance:+,} cells, rows {t.wide_rows:,} vs {t.narrow_times:,} "
            f"expected, in {len(hours)} hour(s){where}"
        )
        if facts.missing_tables:
            summary += f"; table(s) not materialised: {', '.join(facts.missing_tables)}"
    hours = facts.failing_hours()
    return CheckOutcome(RECONCILIATION, g.number, passed, SEVERITY[RECONCILIATION], summary, {
        "narrow_rows": t.narrow_rows,
        "filled_wide_cells": t.wide_cells,
        "null_values_counted": t.null_values,
        "null_values_by_reason": dict(sorted(facts.null_by_reason.items())),
        "corrections": t.corrections,
        "corrections_over_narrow_values": t.corrections_over_narrow,
        "corrections_over_null_values": t.corrections_over_null,
        "corrections_nan": t.corrections_nan,
        "correction_adjustment": t.adjustment,
        "cell_balance": t.balance,
        "expected_rows": t.narrow_times,
        "wide_rows": t.wide_rows,
        "failing_hours": [[s, h.isoformat()] for s, h in hours[:20]],
        "failing_hour_count": len(hours),
        "first_differences": facts.differences,
        "missing_tables": facts.missing_tables,
        "narrow_counted_from": (
            "the rows this run read (its extraction's snapshot)" if facts.narrow_source == "run"
            else "a pass over the narrow table"
        ),
        **_windows_md(facts),
    })


def unknown_check(facts: GroupFacts) -> CheckOutcome:
    ranked = sorted(facts.unknown.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = sum(facts.unknown.values())
    summary = (
        f"{len(ranked)} channel(s) in no list, {rows:,} narrow rows skipped"
        + (f", e.g. {ranked[0][0]}" if ranked else "")
    )
    return CheckOutcome(UNKNOWN, facts.group.number, not ranked, SEVERITY[UNKNOWN], summary, {
        "unknown_channel_count": len(ranked),
        "unknown_rows": rows,
        "unknown_channels": [{"channel": ch, "rows": n} for ch, n in ranked[:50]],
        **_windows_md(facts),
    })


def evaluate(
    conn: psycopg.Connection,
    settings: Settings,
    groups: Sequence[ChannelGroup],
    windows: Iterable[tuple[str, dt.datetime, dt.datetime]],
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
