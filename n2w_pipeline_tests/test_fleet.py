"""A narrow table holding the whole fleet: eight ships interleaved hour by hour in one
table, backfilled in runs of ships × hours (one read per slice for all of them), checked
against the independent SQL pivot. Small channel lists keep the data small. No timings."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog, load_catalog
from n2w_pipeline.cli import main
from n2w_pipeline.commands._common import materialized_hours, run_backfill
from n2w_pipeline.config import REFERENCE_SHIPS, Settings
from n2w_pipeline.defs.wide_assets import wide_asset_key
from n2w_pipeline.extract import copy_extract_query
from n2w_pipeline.generate import generate
from n2w_pipeline.realtime.index import arrival_index_problem
from n2w_pipeline.source_indexes import ensure_ship_time_index, ship_time_index_name, ship_time_index_problem
from n2w_pipeline_tests.helpers import (
    hour_key,
    reject_inserts_from,
    run_wide,
    sql_reference,
    wide_cells,
    wide_hours,
)

H0 = dt.datetime(2025, 3, 1)
HOUR = dt.timedelta(hours=1)
END = H0 + 3 * HOUR
OTHER_SHIP = "IMO0000001"  # in the table, not in N2W_SHIPS


@pytest.fixture
def fleet(backfill_env: Settings, lists_dir: Path,
          conn: psycopg.Connection) -> tuple[Settings, ChannelCatalog]:
    """Eight configured ships and one more, 3 hours interleaved hour by hour, 10 channels a
    group; `n2w backfill` in blocks of up to 8 ships (N2W_BACKFILL_SHIPS_PER_RUN) × at most 24
    partitions, slices of 2 ship-hours (so one hour of all)."""
    small = lists_dir.parent / "small_lists"
    small.mkdir()
    for path in sorted(lists_dir.glob("*.txt")):
        channels = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        (small / path.name).write_text("\n".join(channels[:10]) + "\n")
    s = replace(backfill_env, ships=REFERENCE_SHIPS, channel_lists_dir=small, slice_hours=2, run_hours=24,
                backfill_ships_per_run=8)
    catalog = load_catalog(small)
    generate(conn, s, catalog, [*s.ships, OTHER_SHIP], H0, END, seed=31, interleave=True)
    return s, catalog


def assert_ship_equals_reference(conn: psycopg.Connection, s: Settings, catalog: ChannelCatalog, ship: str,
                                 start: dt.datetime = H0, end: dt.datetime = END) -> None:
    for g in catalog.groups:
        ref_times, ref_cells = sql_reference(conn, s, g, ship, start, end)
        times, cells = wide_cells(conn, s, g, ship)
        assert ref_cells, "the generator must have produced values"
        assert times == ref_times, (ship, g.number)
        assert cells == ref_cells, (ship, g.number)


def narrow_rows(conn: psycopg.Connection, s: Settings, ships: list[str]) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = ANY(%s)").format(
        sql.Identifier(*s.source_qualified)), (ships,)).fetchone()
    return int(row[0]) if row else 0


def test_fleet_backfill_reads_every_ship_of_a_slice_at_once(fleet, conn):
    """`n2w backfill` of the fleet: one run of 8 ships × 3 hours, one read per hour for all
    eight; every table equals the SQL pivot, and the run read exactly the eight ships' rows
    (not the ninth ship's, which shares the table)."""
    s, catalog = fleet
    summaries = run_backfill(s, s.ships, H0, END, quiet=True, resume=True)
    assert [(r["ships"], r["start"], r["end"]) for r in summaries] == [(s.ships, H0, END)]
    for ship in s.ships:
        assert_ship_equals_reference(conn, s, catalog, ship)
    read = next(iter(summaries[0]["assets"].values()))["narrow_rows_read"]
    assert read == narrow_rows(conn, s, list(s.ships)) > 0
    assert wide_hours(conn, s, catalog, OTHER_SHIP) == {g.number: {} for g in catalog.groups}


def test_two_ship_ranges_and_an_hour_of_several_ships(fleet, conn):
    """Ships that are not neighbours in N2W_SHIPS make two blocks (a Dagster range covers
    every ship between its ends); the UI's shape, one hour × a ship range, is one read too."""
    s, catalog = fleet
    ships = list(s.ships)
    first, second = ships[0:3], ships[5:7]
    summaries = run_backfill(s, second + first, H0, END, quiet=True, resume=True)
    assert sorted(r["ships"] for r in summaries) == [tuple(first), tuple(second)]
    for ship in first + second:
        assert_ship_equals_reference(conn, s, catalog, ship)
    for ship in (ships[3], ships[4], ships[7]):
        assert wide_hours(conn, s, catalog, ship) == {g.number: {} for g in catalog.groups}

    # what the UI's "Materialize all…" makes of a few hours of the fleet: runs of one hour
    # over a range of ships
    assert run_wide(s, catalog, first=hour_key(ships[3], H0), last=hour_key(ships[7], H0)).success
    for ship in (ships[3], ships[4], ships[7]):
        assert_ship_equals_reference(conn, s, catalog, ship, H0, H0 + HOUR)


def test_interrupted_fleet_backfill_resumes(fleet, conn):
    """The slice of hour 02:00 (all eight ships, one transaction) fails in one ship's table:
    no ship has that hour, every ship has the hours before it whole; the run materialised
    nothing, so running the backfill again redoes the block and every table is right."""
    s, catalog = fleet
    broken = s.ships[5]
    table = reject_inserts_from(s, catalog, broken, catalog.groups[1], H0 + 2 * HOUR)

    with pytest.raises(Exception, match="simulated failure"):
        run_backfill(s, s.ships, H0, END, quiet=True, resume=True)
    for ship in s.ships:
        per_table = wide_hours(conn, s, catalog, ship).values()
        assert all(H0 + 2 * HOUR not in hours for hours in per_table), ship
        assert all(hours.get(H0) == 240 and hours.get(H0 + HOUR) == 240 for hours in per_table), ship
    with dg.DagsterInstance.get() as instance:
        done = materialized_hours(instance, s, [wide_asset_key(g) for g in catalog.groups], s.ships)
    assert done == {ship: set() for ship in s.ships}

    conn.execute(sql.SQL("DROP TRIGGER reject ON {}").format(table))
    summaries = run_backfill(s, s.ships, H0, END, quiet=True, resume=True)
    assert [(r["ships"], r["start"], r["end"]) for r in summaries] == [(s.ships, H0, END)]
    for ship in s.ships:
        assert_ship_equals_reference(conn, s, catalog, ship)
    assert run_backfill(s, s.ships, H0, END, quiet=True, resume=True) == []


def test_prepare_builds_the_indexes_once_and_the_read_uses_them(fleet, conn, monkeypatch, capsys):
    s, catalog = fleet
    for key, value in {"N2W_DATABASE_URL": s.database_url, "N2W_SOURCE_SCHEMA": s.source_schema,
                       "N2W_TARGET_SCHEMA": s.target_schema}.items():
        monkeypatch.setenv(key, value)
    assert main(["prepare", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("missing") == 2 and out.count("CREATE INDEX CONCURRENTLY") == 2
    assert "nothing built" in out
    assert ship_time_index_problem(conn, s) is not None and arrival_index_problem(conn, s) is not None

    assert main(["prepare"]) == 0
    assert "built ship_time index" in capsys.readouterr().out
    assert ship_time_index_problem(conn, s) is None and arrival_index_problem(conn, s) is None
    assert main(["prepare"]) == 0
    assert "nothing to do" in capsys.readouterr().out

    # a one-ship read (values bound through set_config, as NarrowReader binds them) takes a
    # bitmap heap scan through the new index, not the created_time index
    with conn.transaction():
        conn.execute("SELECT set_config('n2w.channels', '[]', true), set_config('n2w.ship', %s, true), "
                     "set_config('n2w.start', %s, true), "
                     "set_config('n2w.end', %s, true), set_config('enable_indexscan', 'off', true)",
                     (s.ships[2], H0.isoformat(), END.isoformat()))
        (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + copy_extract_query(s)).fetchone()
    assert ship_time_index_name(s) in str(plan), plan


def test_an_invalid_leftover_of_an_interrupted_build_is_rebuilt(fleet, conn):
    """A concurrent build that failed leaves an invalid index under the name n2w uses, which
    `CREATE INDEX … IF NOT EXISTS` would keep: it is dropped and built again."""
    s, _ = fleet
    name = sql.Identifier(s.source_schema, ship_time_index_name(s))
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):  # 'IMO…'::int fails mid-build
        conn.execute(sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} (({}::int))").format(
            sql.Identifier(ship_time_index_name(s)), sql.Identifier(*s.source_qualified),
            sql.Identifier(s.columns.ship_id)))

    def valid() -> bool | None:
        row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                           (name.as_string(conn),)).fetchone()
        return None if row is None else row[0]

    assert valid() is False and ship_time_index_problem(conn, s) is not None
    assert ensure_ship_time_index(conn, s)
    assert valid() is True and ship_time_index_problem(conn, s) is None
