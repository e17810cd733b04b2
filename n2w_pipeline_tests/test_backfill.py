"""Backfills: range runs through the pipelined slices, parallel ships, resume after an
interrupted run — every table checked against the independent SQL pivot. No timings."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.commands._common import materialized_hours, plan_runs, run_backfill
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.wide_assets import wide_asset_key
from n2w_pipeline.generate import generate
from n2w_pipeline.materialize import fleet_slices, materialize_window
from n2w_pipeline_tests.helpers import (
    hour_key,
    reject_inserts_from,
    run_wide,
    sql_reference,
    wide_cells,
    wide_hours,
)

H0 = dt.datetime(2025, 3, 1, 0, 0)
HOUR = dt.timedelta(hours=1)


def assert_equals_reference(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
                            ship: str, start: dt.datetime, end: dt.datetime) -> None:
    for g in catalog.groups:
        ref_times, ref_cells = sql_reference(conn, settings, g, ship, start, end)
        times, cells = wide_cells(conn, settings, g, ship)
        assert ref_cells, "the generator must have produced values"
        assert times == ref_times, (ship, g.number)
        assert cells == ref_cells, (ship, g.number)


def test_plan_runs_cuts_ranges_and_skips_done_hours():
    a, b = "IMO1", "IMO2"
    h = [H0 + i * HOUR for i in range(10)]
    assert plan_runs([a], H0, h[5], 2) == [((a,), h[0], h[2]), ((a,), h[2], h[4]), ((a,), h[4], h[5])]
    done = {a: {h[1], h[2], h[6]}, b: set(h)}
    assert plan_runs([a, b], H0, H0 + 10 * HOUR, 3, done) == [
        ((a,), h[0], h[1]), ((a,), h[3], h[6]), ((a,), h[7], H0 + 10 * HOUR)]
    assert plan_runs([b], H0, H0 + 10 * HOUR, 3, done) == []


def test_plan_runs_makes_blocks_of_consecutive_ships():
    """Ships × hours blocks of at most run_hours partitions and N2W_BACKFILL_SHIPS_PER_RUN
    ships, consecutive in the dimension's order (a Dagster range covers every ship between
    its ends); with 1 ship per run, each ship's hours alone."""
    a, b, c, d = "IMO1", "IMO2", "IMO3", "IMO4"
    h = [H0 + i * HOUR for i in range(11)]
    order = [a, b, c, d]
    assert plan_runs(order, H0, h[10], 8) == [((a, b, c, d), h[i], h[i + 2]) for i in range(0, 10, 2)]
    # one ship per run: each ship's 10 hours in two equal runs of at most 8 partitions
    assert plan_runs(order, H0, h[10], 8, ships_per_run=1) == [((x,), h[0], h[5]) for x in order] + [
        ((x,), h[5], h[10]) for x in order]
    # two ships per run: 4 hours each (8 partitions), the 10 hours in three runs per block
    assert plan_runs(order, H0, h[10], 8, ships_per_run=2) == [
        (blk, a_, b_) for a_, b_ in ((h[0], h[4]), (h[4], h[8]), (h[8], h[10])) for blk in ((a, b), (c, d))]
    # c not asked for: two blocks, each cut into equal runs of at most 8 partitions
    assert plan_runs([d, a, b], H0, h[10], 8, order=order) == [
        ((a, b), h[0], h[4]), ((d,), h[0], h[5]), ((a, b), h[4], h[8]), ((d,), h[5], h[10]),
        ((a, b), h[8], h[10])]
    # b already has its first hour: that hour is a's alone, the rest a block of both
    assert plan_runs([a, b], H0, h[10], 8, {b: {h[0]}}) == [
        ((a,), h[0], h[1]), ((a, b), h[1], h[4]), ((a, b), h[4], h[7]), ((a, b), h[7], h[10])]
    # more ships than partitions per run: one hour of at most run_hours ships
    assert plan_runs(order, H0, h[1], 3, ships_per_run=8) == [((a, b, c), h[0], h[1]), ((d,), h[0], h[1])]


def test_fleet_slices_cover_ship_hours():
    a, b, c = "IMO1", "IMO2", "IMO3"
    h = [H0 + i * HOUR for i in range(7)]
    assert fleet_slices([a], H0, h[6], 4) == [((a,), h[0], h[4]), ((a,), h[4], h[6])]
    assert fleet_slices([a, b], H0, h[3], 4) == [((a, b), h[0], h[2]), ((a, b), h[2], h[3])]
    assert fleet_slices([a, b, c], H0, h[2], 2) == [((a, b, c), h[0], h[1]), ((a, b, c), h[1], h[2])]
    ships = [f"IMO{i}" for i in range(10)]  # more than FLEET_SLICE_SHIPS: two reads an hour
    assert fleet_slices(ships, H0, h[1], 2) == [(tuple(ships[:8]), h[0], h[1]),
                                                (tuple(ships[8:]), h[0], h[1])]


def test_hour_spanning_range_run_through_pipelined_slices(settings, catalog, conn):
    """Four 1-hour slices in flight two at a time: the same tables as the SQL pivot,
    and a re-run (upsert path instead of the direct COPY of a first fill) changes nothing."""
    s = replace(settings, slice_hours=1)
    ship = s.ships[0]
    generate(conn, s, catalog, [ship], H0, H0 + 4 * HOUR, seed=21)
    result = run_wide(s, catalog, first=hour_key(ship, H0), last=hour_key(ship, H0 + 3 * HOUR))
    assert result.success
    assert_equals_reference(conn, s, catalog, ship, H0, H0 + 4 * HOUR)
    md = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("narrow_to_wide")}
    g1 = md[catalog.groups[0].asset_name]
    assert g1["rows_inserted"].value == 4 * 240 and g1["rows_updated"].value == 0

    # a changed value in the middle hour, then the whole range again
    src = sql.Identifier(*s.source_qualified)
    t = H0 + 2 * HOUR + dt.timedelta(seconds=30)
    conn.execute(sql.SQL("UPDATE {} SET double_v = 4242.5 WHERE created_time = %s "
                         "AND value_format = 'Decimal'").format(src), (t,))
    stats = materialize_window(s.database_url, s, catalog, ship, H0, H0 + 4 * HOUR)
    assert sum(g.inserted for g in stats.groups.values()) == 0
    assert sum(g.updated for g in stats.groups.values()) >= 1
    assert_equals_reference(conn, s, catalog, ship, H0, H0 + 4 * HOUR)


def test_ship_spanning_range_run(settings, catalog, conn):
    """Runs of one hour × three ships (hour × ship-range keys), for two hours."""
    s = replace(settings, slice_hours=1)
    ships = s.ships
    generate(conn, s, catalog, ships, H0, H0 + 2 * HOUR, seed=22)
    assert run_wide(s, catalog, first=hour_key(ships[0], H0), last=hour_key(ships[2], H0)).success
    assert run_wide(s, catalog, first=hour_key(ships[0], H0 + HOUR),
                    last=hour_key(ships[2], H0 + HOUR)).success
    for ship in ships:
        assert_equals_reference(conn, s, catalog, ship, H0, H0 + 2 * HOUR)


def test_interrupted_parallel_backfill_resumes_only_missing_partitions(backfill_env, catalog, conn):
    """Runs of one ship each (the two ships are not neighbours in N2W_SHIPS, so no run can
    cover both), two at a time; one dies in its third hour."""
    s = backfill_env
    ok, broken = s.ships[0], s.ships[2]
    ships = [ok, broken]
    end = H0 + 3 * HOUR
    generate(conn, s, catalog, ships, H0, end, seed=23)
    # The run of `broken` dies in its third hour: a trigger rejects rows from 02:00 on,
    # in one group only (the others are written in the same transaction).
    table = reject_inserts_from(s, catalog, broken, catalog.groups[1], H0 + 2 * HOUR)

    with pytest.raises(Exception, match="simulated failure"):
        run_backfill(s, ships, H0, end, quiet=True, parallel=2, resume=True)

    # no partial hour: hour 02:00 of `broken` is in none of its tables; earlier hours are whole
    per_hour = wide_hours(conn, s, catalog, broken)
    assert all(H0 + 2 * HOUR not in hours for hours in per_hour.values())
    assert all(hours.get(H0) == 240 for hours in per_hour.values())
    for h in (H0, H0 + HOUR):
        assert len({hours.get(h) for hours in per_hour.values()}) == 1  # all tables or none

    with dg.DagsterInstance.get() as instance:
        done = materialized_hours(instance, s, [wide_asset_key(g) for g in catalog.groups], ships)
    assert done == {ok: {H0, H0 + HOUR, H0 + 2 * HOUR}, broken: set()}

    conn.execute(sql.SQL("DROP TRIGGER reject ON {}").format(table))
    summaries = run_backfill(s, ships, H0, end, quiet=True, parallel=1, resume=True)
    assert [(r["ships"], r["start"], r["end"]) for r in summaries] == [((broken,), H0, end)]
    for ship in ships:
        assert_equals_reference(conn, s, catalog, ship, H0, end)
    # and now there is nothing left to do
    assert run_backfill(s, ships, H0, end, quiet=True, resume=True) == []
