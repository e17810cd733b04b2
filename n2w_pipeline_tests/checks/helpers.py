"""Shared by the checks tests: the crafted dataset's ship and times, a materialisation of
it, the check evaluations of a run, and every figure the checks report computed in SQL."""

from __future__ import annotations

import datetime as dt

import dagster as dg
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.write import corrections_table_name
from n2w_pipeline_tests.helpers import hour_key, run_wide, sql_reference

SHIP = "IMO9976903"
H0 = dt.datetime(2025, 3, 1, 0, 0)
H1 = H0 + dt.timedelta(hours=1)
END = H0 + dt.timedelta(hours=2)
S = dt.timedelta(seconds=15)
T0, T1, T2, T3, T4 = H0, H0 + S, H1, H1 + S, H1 + 2 * S


def materialise(settings, catalog, **kw) -> dg.ExecuteInProcessResult:
    result = run_wide(settings, catalog, first=hour_key(SHIP, H0), last=hour_key(SHIP, H1), **kw)
    assert result.success
    return result


def evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def metadata(ev: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in ev.metadata.items()}


def sql_figures(conn, settings, group, ship=SHIP, start=H0, end=END) -> dict:
    """Every figure the checks report, computed here in SQL (independently of n2w_pipeline.checks)."""
    table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
    counts = sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in group.columns)
    row = conn.execute(sql.SQL("SELECT count(*), {} FROM {}").format(counts, table)).fetchone()
    rows, per_col = row[0], dict(zip(group.channels, row[1:], strict=True))
    c = settings.columns
    narrow = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} = %s AND {} = ANY(%s) AND {} >= %s AND {} < %s").format(
            sql.Identifier(*settings.source_qualified), sql.Identifier(c.ship_id),
            sql.Identifier(c.channel), sql.Identifier(c.created_time), sql.Identifier(c.created_time)),
        (ship, list(group.channels), start, end),
    ).fetchone()[0]
    ref_times, ref_cells = sql_reference(conn, settings, group, ship, start, end)
    shadow = sql.Identifier(settings.target_schema, corrections_table_name(settings, ship, group.number))
    corr = [
        (t, ch, v)
        for col, ch in zip(group.columns, group.channels, strict=True)
        for t, v in conn.execute(sql.SQL("SELECT created_time, {0} FROM {1} WHERE {0} IS NOT NULL").format(
            sql.Identifier(col), shadow)).fetchall()
    ]
    unknown = conn.execute(
        sql.SQL("SELECT {ch}, count(*) FROM {src} WHERE {ship} = %s AND NOT ({ch} = ANY(%s)) "
                "AND {ct} >= %s AND {ct} < %s GROUP BY 1 ORDER BY 2 DESC, 1").format(
            ch=sql.Identifier(c.channel), src=sql.Identifier(*settings.source_qualified),
            ship=sql.Identifier(c.ship_id), ct=sql.Identifier(c.created_time)),
        (ship, list(load_catalog(settings.channel_lists_dir).all_channels), start, end),
    ).fetchall()
    filled_corr = sum(1 for _, _, v in corr if v == v)
    over_narrow = sum(1 for t, ch, _ in corr if (t, ch) in narrow_cells(conn, settings, ship))
    over_null = sum(1 for t, ch, _ in corr
                    if (t, ch) in narrow_cells(conn, settings, ship) and (t, ch) not in ref_cells)
    return {
        "rows": rows, "cells": sum(per_col.values()), "per_channel": per_col,
        "narrow_rows": narrow, "nulls": narrow - len(ref_cells),
        "expected_rows": len(ref_times | {t for t, _, _ in corr}),
        "corrections": len(corr), "adjustment": filled_corr - over_narrow + over_null,
        "over_narrow": over_narrow, "over_null": over_null,
        "unknown": [{"channel": ch, "rows": n} for ch, n in unknown],
    }


def narrow_cells(conn, settings, ship) -> set[tuple[dt.datetime, str]]:
    c = settings.columns
    return set(conn.execute(
        sql.SQL("SELECT {}, {} FROM {} WHERE {} = %s").format(
            sql.Identifier(c.created_time), sql.Identifier(c.channel),
            sql.Identifier(*settings.source_qualified), sql.Identifier(c.ship_id)),
        (ship,),
    ).fetchall())
