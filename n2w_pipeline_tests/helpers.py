"""Test helpers: an independent SQL pivot, table readers and real Dagster runs."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import dagster as dg
import psycopg
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.defs.wide_assets import build_wide_assets

Cells = dict[tuple[dt.datetime, str], float]


def sql_reference(
    conn: psycopg.Connection,
    settings: Settings,
    group: ChannelGroup,
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
) -> tuple[set[dt.datetime], Cells]:
    """The value rule and pivot written independently, in SQL only: (row times, cells)."""
    c = settings.columns
    q = sql.SQL(
        """WITH v AS (
  SELECT {ct} AS t, {ch} AS ch,
    CASE {vf}
      WHEN 'Decimal' THEN {dv}
      WHEN 'Integer' THEN {lv}::float8
      WHEN 'Boolean' THEN CASE WHEN {bv} THEN 1.0 WHEN NOT {bv} THEN 0.0 END
      WHEN 'String' THEN CASE WHEN pg_input_is_valid(btrim({sv}), 'float8')
                              THEN btrim({sv})::float8 END
    END AS v
  FROM {src} WHERE {ship} = %s AND {ct} >= %s AND {ct} < %s AND {ch} = ANY(%s))
SELECT t, ch, CASE WHEN v IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
                   THEN NULL ELSE v END FROM v"""
    ).format(
        ct=sql.Identifier(c.created_time), ch=sql.Identifier(c.channel),
        vf=sql.Identifier(c.value_format), dv=sql.Identifier(c.double_v),
        lv=sql.Identifier(c.long_v), bv=sql.Identifier(c.bool_v), sv=sql.Identifier(c.str_v),
        src=sql.Identifier(*settings.source_qualified), ship=sql.Identifier(c.ship_id),
    )
    times: set[dt.datetime] = set()
    cells: Cells = {}
    for t, ch, v in conn.execute(q, (ship, start, end, list(group.channels))):
        times.add(t)
        if v is not None:
            cells[(t, ch)] = v
    return times, cells


def wide_cells(
    conn: psycopg.Connection, settings: Settings, group: ChannelGroup, ship: str
) -> tuple[set[dt.datetime], Cells]:
    """(row times, non-NULL cells keyed by channel id) of a wide table."""
    table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
    cols = [sql.Identifier(c) for c in group.columns]
    rows = conn.execute(
        sql.SQL("SELECT created_time, {} FROM {}").format(sql.SQL(", ").join(cols), table)
    ).fetchall()
    times: set[dt.datetime] = set()
    cells: Cells = {}
    for row in rows:
        times.add(row[0])
        for ch, v in zip(group.channels, row[1:], strict=False):
            if v is not None:
                assert not math.isnan(v), f"NaN written at {row[0]} {ch}"
                cells[(row[0], ch)] = v
    return times, cells


def table_digest(conn: psycopg.Connection, schema: str, table: str) -> tuple[int, str]:
    """(row count, md5 of every row's text in key order): equal digests = identical tables."""
    row = conn.execute(
        sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY created_time), '')) "
                "FROM {} t").format(sql.Identifier(schema, table))
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def all_digests(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
                ships: Sequence[str]) -> dict[str, tuple[int, str]]:
    out = {}
    for ship in ships:
        for g in catalog.groups:
            name = settings.table_name(ship, g.number)
            out[name] = table_digest(conn, settings.target_schema, name)
    return out


def wide_hours(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
               ship: str) -> dict[int, dict[dt.datetime, int]]:
    """Rows per hour of each of the ship's wide tables, by group ({} for a table never created)."""
    out: dict[int, dict[dt.datetime, int]] = {}
    for g in catalog.groups:
        name = sql.Identifier(settings.target_schema, settings.table_name(ship, g.number))
        if conn.execute("SELECT to_regclass(%s)", (name.as_string(conn),)).fetchone() == (None,):
            out[g.number] = {}
            continue
        out[g.number] = dict(conn.execute(sql.SQL(
            "SELECT date_trunc('hour', created_time), count(*) FROM {} GROUP BY 1").format(name)).fetchall())
    return out


def reject_inserts_from(settings: Settings, catalog: ChannelCatalog, ship: str, group: ChannelGroup,
                        since: dt.datetime) -> sql.Identifier:
    """Make every insert into ``ship``'s wide table of ``group`` at or after ``since`` fail
    ('simulated failure'), as a write failing mid-run; returns the table (DROP TRIGGER reject
    ON it to heal)."""
    from n2w_pipeline.materialize import prepare_tables

    with psycopg.connect(settings.database_url, autocommit=True) as c:
        prepare_tables(c, settings, catalog.groups, [ship])
        table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
        fn = sql.Identifier(settings.target_schema, "n2w_test_reject")
        c.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$BEGIN RAISE EXCEPTION 'simulated failure'; END$$").format(fn))
        c.execute(sql.SQL("CREATE TRIGGER reject BEFORE INSERT ON {} FOR EACH ROW "
                          "WHEN (NEW.created_time >= {}) EXECUTE FUNCTION {}()").format(
            table, sql.Literal(since), fn))
    return table


def run_wide(
    settings: Settings,
    catalog: ChannelCatalog,
    *,
    partition_key: str | None = None,
    first: str | None = None,
    last: str | None = None,
    instance: dg.DagsterInstance | None = None,
    selection: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialise the wide assets for one partition or a key range, for real."""
    assets = build_wide_assets(settings, catalog)
    tags = dict(tags or {})
    if first is not None:
        tags |= {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}

    def go(inst: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [assets],
            instance=inst,
            partition_key=partition_key,
            tags=tags,
            resources={"n2w_db": N2WDatabase(url=settings.database_url)},
            selection=list(selection) if selection else None,
            raise_on_error=raise_on_error,
        )

    if instance is not None:
        return go(instance)
    with dg.instance_for_test() as inst:
        return go(inst)


def hour_key(ship: str, hour: dt.datetime) -> str:
    return f"{hour:%Y-%m-%d-%H:%M}|{ship}"
