"""Hourly and daily aggregates per ship and channel, for dashboards.

Shape: *long* — one row per (ship, channel, bucket) with ``n`` (non-NULL values), ``sum``,
``avg``, ``min`` and ``max`` — in two fleet-wide tables, ``n2w_rollup_hourly`` and
``n2w_rollup_daily``, keyed ``(ship_id, channel_id, bucket)``. A wide row of aggregates would
need 4 × 655 = 2,620 columns for group 2 (PostgreSQL allows 1,600 per table, 8 kB per row);
arrays per (ship, hour) would fit but make a dashboard unpack 655-element arrays to read 10
channels. In the long shape "hourly averages of 10 channels over a month" is 10 index range
scans of 720 entries each. ``channel_id`` holds the full channel id (also for ids longer
than a column name can be). Only channels with at least one value in a bucket have a row.

Refresh, per (ship, day), in one transaction: an advisory lock on the (ship, day), then per
group one scan of the day's wide rows computing every channel's count/sum/min/max per hour
(arrays of aggregates, unnested into rows), staged; the stage is upserted into the hourly
table (unchanged rows untouched) and rows no longer backed are deleted; the daily rows are
computed from the staged hours the same way. Idempotent: any re-run leaves the same rows.
``avg`` = ``sum / n``; a daily ``avg`` is the hours' sums over their counts, so it may differ
from a direct average of the raw values in the last bits (the check allows 1e-9 relative).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.write import _key, existing_columns

ROLLUP_HOURLY = "n2w_rollup_hourly"
ROLLUP_DAILY = "n2w_rollup_daily"
TOLERANCE = 1e-9
"""Relative difference allowed between a stored avg/sum and the check's own computation."""

DAY = dt.timedelta(days=1)


def ensure_rollup_tables(conn: psycopg.Connection, settings: Settings) -> None:
    s = settings.target_schema
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 2)", (_key("n2w:rollups"),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(s)))
        for name in (ROLLUP_HOURLY, ROLLUP_DAILY):
            conn.execute(
                sql.SQL(
                    """CREATE TABLE IF NOT EXISTS {} (
    ship_id text NOT NULL, channel_id text NOT NULL, bucket timestamp NOT NULL,
    group_number smallint NOT NULL, n integer NOT NULL,
    sum double precision, avg double precision, min double precision, max double precision,
    PRIMARY KEY (ship_id, channel_id, bucket))"""
                ).format(sql.Identifier(s, name))
            )


@dataclass
class RefreshStats:
    ship: str
    day: dt.date
    wide_rows: int = 0
    hourly_rows: int = 0
    daily_rows: int = 0
    changed: int = 0
    deleted: int = 0
    groups: list[int] = field(default_factory=list)


def _present(conn: psycopg.Connection, settings: Settings, group: ChannelGroup, ship: str
             ) -> list[tuple[str, str]]:
    """(column, channel id) of the group's channels the ship's wide table has (none if no table)."""
    have = existing_columns(conn, settings.target_schema, settings.table_name(ship, group.number))
    if have is None:
        return []
    cols = set(have)
    return [(c, ch) for c, ch in zip(group.columns, group.channels, strict=True) if c in cols]


def _hourly_sql(table: sql.Identifier, columns: Sequence[str]) -> sql.Composed:
    """One scan of the window's wide rows → (channel, hour, n, sum, min, max) rows with n > 0."""
    def arr(fn: str, cast: str) -> sql.Composed:
        return sql.SQL("ARRAY[{}]::{}").format(
            sql.SQL(", ").join(sql.SQL(fn + "({})").format(sql.Identifier(c)) for c in columns),
            sql.SQL(cast),
        )

    return sql.SQL(
        """SELECT u.ch, a.h, u.n, u.s, u.mn, u.mx FROM (
  SELECT date_trunc('hour', {t}) AS h, {n} AS n, {s} AS s, {mn} AS mn, {mx} AS mx
  FROM {table} WHERE {t} >= %(a)s AND {t} < %(b)s GROUP BY 1) a,
  unnest(%(channels)s::text[], a.n, a.s, a.mn, a.mx) AS u(ch, n, s, mn, mx)
WHERE u.n > 0"""
    ).format(
        t=sql.Identifier(TIME_COLUMN), table=table, n=arr("count", "int[]"), s=arr("sum", "float8[]"),
        mn=arr("min", "float8[]"), mx=arr("max", "float8[]"),
    )


_STAGE = sql.Identifier("n2w_rollup_stage")


def _upsert(conn: psycopg.Connection, target: sql.Identifier, source: sql.Composable,
            params: dict[str, object]) -> int:
    """Insert or update ``source``'s rows (columns as the rollup tables); only changed rows
    are written. Returns rows written."""
    q = sql.SQL(
        """INSERT INTO {target} AS r (ship_id, channel_id, bucket, group_number, n, sum, avg, min, max)
{source}
ON CONFLICT (ship_id, channel_id, bucket) DO UPDATE SET group_number = EXCLUDED.group_number,
  n = EXCLUDED.n, sum = EXCLUDED.sum, avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max
WHERE (r.group_number, r.n, r.sum, r.avg, r.min, r.max) IS DISTINCT FROM
  (EXCLUDED.group_number, EXCLUDED.n, EXCLUDED.sum, EXCLUDED.avg, EXCLUDED.min, EXCLUDED.max)"""
    ).format(target=target, source=source)
    return conn.execute(q, params).rowcount


def _delete_stale(conn: psycopg.Connection, target: sql.Identifier, bucket: str,
                  params: dict[str, object]) -> int:
    """Delete the (ship, day, groups' channels) rows of ``target`` the stage no longer has."""
    q = sql.SQL(
        """DELETE FROM {target} r WHERE r.ship_id = %(ship)s AND r.channel_id = ANY(%(all_channels)s)
  AND r.bucket >= %(a)s AND r.bucket < %(b)s
  AND NOT EXISTS (SELECT 1 FROM {stage} s WHERE s.channel_id = r.channel_id AND {bucket} = r.bucket)"""
    ).format(target=target, stage=_STAGE, bucket=sql.SQL(bucket))
    return conn.execute(q, params).rowcount


def refresh_day(conn: psycopg.Connection, settings: Settings, groups: Sequence[ChannelGroup],
                ship: str, day: dt.date) -> RefreshStats:
    """Make the hourly and daily rollups of (ship, day) equal the wide tables' rows of that
    day, for ``groups``. One transaction; ``conn`` in autocommit mode."""
    start = dt.datetime.combine(day, dt.time())
    stats = RefreshStats(ship, day)
    s = settings.target_schema
    hourly, daily = sql.Identifier(s, ROLLUP_HOURLY), sql.Identifier(s, ROLLUP_DAILY)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                     (_key(f"n2w:rollup:{s}:{ship}"), (start - dt.datetime(1970, 1, 1)).days))
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (group_number smallint, channel_id text, bucket timestamp, "
            "n integer, sum float8, min float8, max float8) ON COMMIT DELETE ROWS").format(_STAGE))
        conn.execute(sql.SQL("TRUNCATE {}").format(_STAGE))
        all_channels: list[str] = []
        for g in groups:
            present = _present(conn, settings, g, ship)
            all_channels += g.channels
            if not present:
                continue
            stats.groups.append(g.number)
            table = sql.Identifier(s, settings.table_name(ship, g.number))
            q = sql.SQL("INSERT INTO {} (group_number, channel_id, bucket, n, sum, min, max) "
                        "SELECT %(g)s, * FROM ({}) x").format(
                            _STAGE, _hourly_sql(table, [c for c, _ in present]))
            conn.execute(q, {"g": g.number, "a": start, "b": start + DAY,
                             "channels": [ch for _, ch in present]})
            t = sql.Identifier(TIME_COLUMN)
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s AND {} < %s").format(
                table, t, t), (start, start + DAY)).fetchone()
            stats.wide_rows += int(row[0]) if row else 0
        params: dict[str, object] = {"ship": ship, "a": start, "b": start + DAY, "all_channels": all_channels}
        hourly_src = sql.SQL(
            "SELECT %(ship)s, channel_id, bucket, group_number, n, sum, sum / n, min, max FROM {} "
            "ORDER BY channel_id, bucket").format(_STAGE)
        daily_src = sql.SQL(
            """SELECT %(ship)s, channel_id, %(a)s::timestamp, min(group_number), sum(n)::int, sum(sum),
  sum(sum) / sum(n), min(min), max(max) FROM {} GROUP BY channel_id ORDER BY channel_id""").format(_STAGE)
        stats.changed = _upsert(conn, hourly, hourly_src, params) + _upsert(conn, daily, daily_src, params)
        stats.deleted = (_delete_stale(conn, hourly, "s.bucket", params)
                         + _delete_stale(conn, daily, "%(a)s::timestamp", params))
        count = sql.SQL("SELECT count(*), count(DISTINCT channel_id) FROM {}").format(_STAGE)
        row = conn.execute(count).fetchone()
        if row:
            stats.hourly_rows, stats.daily_rows = int(row[0]), int(row[1])
    return stats


@dataclass
class RollupCheck:
    """Reconciliation of one rollup table against the wide tables over some (ship, day)s."""

    table: str
    rows_compared: int = 0
    differences: int = 0
    first: list[dict[str, object]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.differences == 0


def reconcile(conn: psycopg.Connection, settings: Settings, groups: Sequence[ChannelGroup], ship: str,
              day: dt.date, table: str, limit: int = 10) -> RollupCheck:
    """Compare ``table`` (hourly or daily rollup) for (ship, day) with an independent aggregate
    of the wide rows (``unnest`` of every cell, plain ``count/avg/min/max … GROUP BY``):
    same rows, equal n/min/max, avg and sum within ``TOLERANCE`` relative."""
    start = dt.datetime.combine(day, dt.time())
    trunc = "hour" if table == ROLLUP_HOURLY else "day"
    out = RollupCheck(table)
    parts: list[sql.Composable] = []
    all_channels: list[str] = []
    for g in groups:
        all_channels += g.channels
        present = _present(conn, settings, g, ship)
        if not present:
            continue
        parts.append(sql.SQL(
            """SELECT date_trunc({trunc}, w.{t}) AS bucket, u.ch AS channel_id, count(u.v) AS n,
  sum(u.v) AS sum, avg(u.v) AS avg, min(u.v) AS min, max(u.v) AS max
FROM {table} w, unnest(%(ch{i})s::text[], ARRAY[{cols}]::float8[]) AS u(ch, v)
WHERE w.{t} >= %(a)s AND w.{t} < %(b)s GROUP BY 1, 2 HAVING count(u.v) > 0""").format(
            trunc=sql.Literal(trunc), t=sql.Identifier(TIME_COLUMN), i=sql.SQL(str(g.number)),
            table=sql.Identifier(settings.target_schema, settings.table_name(ship, g.number)),
            cols=sql.SQL(", ").join(sql.SQL("w.{}").format(sql.Identifier(c)) for c, _ in present)))
    params: dict[str, object] = {"ship": ship, "a": start, "b": start + DAY, "all": all_channels}
    for g in groups:
        params[f"ch{g.number}"] = [ch for _, ch in _present(conn, settings, g, ship)]
    expected = sql.SQL(" UNION ALL ").join(parts) if parts else sql.SQL(
        "SELECT NULL::timestamp AS bucket, NULL::text AS channel_id, 0::bigint AS n, NULL::float8 AS sum, "
        "NULL::float8 AS avg, NULL::float8 AS min, NULL::float8 AS max WHERE false")
    q = sql.SQL(
        """WITH e AS ({expected}),
r AS (SELECT * FROM {rollup} WHERE ship_id = %(ship)s AND channel_id = ANY(%(all)s)
      AND bucket >= %(a)s AND bucket < %(b)s),
d AS (SELECT coalesce(e.bucket, r.bucket) AS bucket, coalesce(e.channel_id, r.channel_id) AS channel_id,
        e.n AS e_n, r.n AS r_n, e.avg AS e_avg, r.avg AS r_avg, e.min AS e_min, r.min AS r_min,
        e.max AS e_max, r.max AS r_max, e.sum AS e_sum, r.sum AS r_sum
      FROM e FULL JOIN r ON r.bucket = e.bucket AND r.channel_id = e.channel_id)
SELECT count(*), count(*) FILTER (WHERE bad),
  (array_agg(row_to_json(d2)::text ORDER BY bucket, channel_id) FILTER (WHERE bad))[1:%(limit)s]
FROM (SELECT d.*, (e_n IS DISTINCT FROM r_n OR e_min IS DISTINCT FROM r_min OR e_max IS DISTINCT FROM r_max
      OR abs(e_avg - r_avg) > {tol} * greatest(1, abs(e_avg))
      OR abs(e_sum - r_sum) > {tol} * greatest(1, abs(e_sum))
      ) IS NOT FALSE AS bad FROM d) d2"""
    ).format(expected=expected, rollup=sql.Identifier(settings.target_schema, table),
             tol=sql.Literal(TOLERANCE))
    params["limit"] = limit
    row = conn.execute(q, params).fetchone()
    assert row is not None
    out.rows_compared, out.differences = int(row[0]), int(row[1])
    out.first = [json.loads(x) for x in (row[2] or [])]
    return out
