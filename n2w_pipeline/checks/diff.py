"""Where the counts disagree: the wide table against the narrow values overlaid by the
corrections, cell by cell. Meant for an hour or two, after ``reconciliation`` fails.

The narrow table may be on another server (``N2W_SOURCE_URL``): the hour's narrow cells
are read there (value rule applied by that server) and copied into a temporary table of
the wide tables' session, where one query compares them with the corrections and the
wide table."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN, ChannelGroup
from n2w_pipeline.checks.facts import GroupFacts, support_tables_exist, value_rule_sql
from n2w_pipeline.config import Settings
from n2w_pipeline.hours import HOUR
from n2w_pipeline.write import CorrectionColumns, correction_columns

DIFF_LIMIT = 10

NARROW_STAGE = "n2w_diff_narrow"
_NARROW = sql.SQL(
    "SELECT s.{ct}, s.{ch}, {rule} FROM {src} s "
    "WHERE s.{ship} = %s AND s.{ch} = ANY(%s) AND s.{ct} >= %s AND s.{ct} < %s"
)
_DIFF = sql.SQL(
    """WITH n AS (SELECT t, ch, v FROM pg_temp.{stage}),
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
)
"""Expected cells (``e``: narrow values under the value rule, staged in ``n``, overlaid by
corrections) against actual cells (``a``: the wide table), rows first, in time order."""


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
    source: psycopg.Connection | None = None,
) -> list[dict[str, Any]]:
    """Cell by cell over [start, end): wide table vs narrow values overlaid by corrections.

    Returns the first ``limit`` differences in time order, each with time, channel (None
    for a whole row), kind (missing_row, extra_row, missing_cell, extra_cell,
    value_differs), expected and actual. Meant for an hour or two, after counts disagree.
    ``source``: a connection to the narrow table's database (default ``conn``).
    """
    table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
    corr = correction_columns(conn, settings, group, ship)
    _stage_narrow(conn, conn if source is None else source, settings, group, ship, start, end)
    q = _DIFF.format(
        stage=sql.Identifier(NARROW_STAGE), corr=_correction_cells_sql(corr),
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


def _stage_narrow(
    conn: psycopg.Connection, source: psycopg.Connection, settings: Settings, group: ChannelGroup,
    ship: str, start: dt.datetime, end: dt.datetime,
) -> None:
    """The group's narrow cells of [start, end) as (t, ch, v) from ``source`` into the
    session-local table ``pg_temp.n2w_diff_narrow`` of ``conn`` (emptied first)."""
    c = settings.columns
    query = _NARROW.format(
        ct=sql.Identifier(c.created_time), ch=sql.Identifier(c.channel),
        rule=value_rule_sql(source, settings, "s"), src=sql.Identifier(*settings.source_qualified),
        ship=sql.Identifier(c.ship_id),
    )
    rows = source.execute(query, (ship, list(group.channels), start, end)).fetchall()
    stage = sql.Identifier(NARROW_STAGE)
    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (t timestamp, ch text, v float8)").format(stage))
    conn.execute(sql.SQL("TRUNCATE pg_temp.{}").format(stage))
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY pg_temp.{} (t, ch, v) FROM STDIN").format(stage)) as cp:
        for row in rows:
            cp.write_row(row)


def locate_differences(
    conn: psycopg.Connection, settings: Settings, facts: GroupFacts, limit: int = DIFF_LIMIT,
    source: psycopg.Connection | None = None,
) -> list[dict[str, Any]]:
    """Cell-level differences in the first hours whose counts disagree (at most ``limit``)."""
    if not support_tables_exist(conn, settings):
        return []
    missing = {t for t in facts.missing_tables}
    out: list[dict[str, Any]] = []
    for ship, hour in facts.failing_hours():
        if settings.table_name(ship, facts.group.number) in missing:
            continue
        found = find_differences(conn, settings, facts.group, ship, hour, hour + HOUR, limit - len(out),
                                 source=source)
        out.extend({"ship": ship, **d} for d in found)
        if len(out) >= limit:
            break
    return out
