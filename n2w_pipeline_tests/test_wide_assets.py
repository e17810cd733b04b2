"""Narrow → wide through real Dagster materialisations on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.generate import create_source_indexes, create_source_table, generate
from n2w_pipeline.write import COLUMN_MAP, VALUE_ISSUES
from n2w_pipeline_tests.helpers import (
    all_digests,
    hour_key,
    run_wide,
    sql_reference,
    wide_cells,
)

SHIP = "IMO9976903"
H0 = dt.datetime(2025, 3, 1, 0, 0)
S = dt.timedelta(seconds=15)
LONG_ID = "/dnv_v2/vts/411.1/C101.31/S90.1/meta/qty-temperature/cnt-lubricating.oil/pos-inlet"


def insert_rows(conn: psycopg.Connection, settings: Settings, rows: list[tuple]) -> None:
    """rows: (ship, channel, created_time, value_format, double_v, long_v, bool_v, str_v)."""
    create_source_table(conn, settings)
    create_source_indexes(conn, settings)
    conn.execute(
        sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.source_schema))
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tbl_data_timeseries (ship_id, data_channel_id, created_time, value_format,"
            " double_v, long_v, bool_v, str_v) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    conn.execute("RESET search_path")


@pytest.fixture
def small(settings: Settings, tmp_path: Path):
    """Two tiny groups, one channel id longer than 63 bytes."""
    lists = tmp_path / "small_lists"
    lists.mkdir()
    (lists / "1_small.txt").write_text(f"/a\n/b\n/c\n/d\n{LONG_ID}\n")
    (lists / "2_other.txt").write_text("/e\n")
    s = replace(settings, channel_lists_dir=lists)
    return s, load_catalog(lists)


def test_hand_written_rows_give_exact_cells_and_counts(small, conn):
    settings, catalog = small
    t0, t1, t2, t3, t4 = H0, H0 + S, H0 + 2 * S, H0 + 3 * S, H0 + 239 * S
    nan, inf = float("nan"), float("inf")
    insert_rows(conn, settings, [
        (SHIP, "/a", t0, "Decimal", 1.5, None, None, None),
        (SHIP, "/b", t0, "Integer", None, 42, None, None),
        (SHIP, "/c", t0, "Boolean", None, None, True, None),
        (SHIP, "/d", t0, "String", None, None, None, " 3.25 "),
        (SHIP, LONG_ID, t0, "Decimal", 7.0, None, None, None),
        (SHIP, "/e", t0, "Decimal", 9.0, None, None, None),
        (SHIP, "/a", t1, "Decimal", None, None, None, None),          # NULL value
        (SHIP, "/b", t1, "Integer", 99.0, -7, None, None),            # other columns ignored
        (SHIP, "/c", t1, "Boolean", None, None, False, None),
        (SHIP, "/d", t1, "String", None, None, None, "n/a"),          # unparsable
        (SHIP, "/a", t2, "Decimal", nan, None, None, None),           # NaN
        (SHIP, "/b", t2, None, None, 5, None, None),                  # NULL format
        (SHIP, "/c", t2, "Float", 3.0, None, None, None),             # unknown format
        (SHIP, "/d", t2, "String", None, None, None, "1e3"),
        (SHIP, "/x/unknown", t2, "Decimal", 1.0, None, None, None),   # in no list
        (SHIP, "/e", t3, "String", None, None, None, "Infinity"),     # non-finite
        (SHIP, LONG_ID, t3, "Decimal", -inf, None, None, None),       # non-finite
        (SHIP, "/a", t4, "Decimal", 2.0, None, None, None),
        (SHIP, "/a", H0 + dt.timedelta(hours=1), "Decimal", 100.0, None, None, None),  # next hour
        ("IMO9976915", "/a", t0, "Decimal", 55.0, None, None, None),  # other ship
    ])
    result = run_wide(settings, catalog, partition_key=hour_key(SHIP, H0))
    assert result.success

    g1, g2 = catalog.groups
    times1, cells1 = wide_cells(conn, settings, g1, SHIP)
    assert times1 == {t0, t1, t2, t3, t4}  # t3 has only a non-finite LONG_ID value: row, no cell
    assert cells1 == {
        (t0, "/a"): 1.5, (t0, "/b"): 42.0, (t0, "/c"): 1.0, (t0, "/d"): 3.25, (t0, LONG_ID): 7.0,
        (t1, "/b"): -7.0, (t1, "/c"): 0.0,
        (t2, "/d"): 1000.0,
        (t4, "/a"): 2.0,
    }
    times2, cells2 = wide_cells(conn, settings, g2, SHIP)
    assert times2 == {t0, t3} and cells2 == {(t0, "/e"): 9.0}

    md = {m.asset_key.path[-1]: {k: v.value for k, v in m.metadata.items()}
          for m in result.asset_materializations_for_node("narrow_to_wide")}
    m1, m2 = md["wide_1_small"], md["wide_2_other"]
    assert m1["narrow_rows_read"] == 18
    assert m1["wide_rows_written"] == 5 and m2["wide_rows_written"] == 2
    assert m1["cells_filled"] == 9 and m2["cells_filled"] == 1
    assert m1["null_values_by_reason"] == {"null_value": 1, "unparsable": 1, "non_finite": 2,
                                           "unknown_format": 2}
    assert m2["null_values_by_reason"] == {"non_finite": 1}
    assert m1["unknown_channel_rows_skipped"] == 1
    assert m1["unknown_channels_sample"] == ["/x/unknown"]
    assert m1["filled_pct"] == pytest.approx(100 * 9 / 25, abs=1e-3)

    # per-hour counts are queryable too
    issues = conn.execute(
        sql.SQL("SELECT channel_id, group_number, reason, count FROM {}").format(
            sql.Identifier(settings.target_schema, VALUE_ISSUES))
    ).fetchall()
    assert sorted(issues) == sorted([
        ("/a", 1, "non_finite", 1), ("/a", 1, "null_value", 1), ("/b", 1, "unknown_format", 1),
        ("/c", 1, "unknown_format", 1), ("/d", 1, "unparsable", 1), ("/e", 2, "non_finite", 1),
        (LONG_ID, 1, "non_finite", 1), ("/x/unknown", 0, "unknown_channel", 1),
    ])

    # the long id: a short, deterministic column, the full id in a comment and the map
    (col,) = g1.long_ids
    table = settings.table_name(SHIP, 1)
    assert len(col.encode()) <= 63
    comment = conn.execute(
        "SELECT col_description(%s::regclass, attnum) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = %s",
        (f'"{settings.target_schema}"."{table}"',) * 2 + (col,),
    ).fetchone()
    assert comment == (LONG_ID,)
    mapped = conn.execute(
        sql.SQL("SELECT table_name, column_name, channel_id FROM {}").format(
            sql.Identifier(settings.target_schema, COLUMN_MAP))
    ).fetchall()
    assert mapped == [(table, col, LONG_ID)]


def test_generated_hours_equal_independent_sql_pivot(settings, catalog, conn):
    ships = settings.ships[:2]
    generate(conn, settings, catalog, ships, H0, H0 + dt.timedelta(hours=3), seed=7)
    result = run_wide(settings, catalog, first=hour_key(ships[0], H0),
                      last=hour_key(ships[0], H0 + dt.timedelta(hours=2)))
    assert result.success
    assert run_wide(settings, catalog, partition_key=hour_key(ships[1], H0 + dt.timedelta(hours=1))).success
    checked = 0
    for ship, start, end in [(ships[0], H0, H0 + dt.timedelta(hours=3)),
                             (ships[1], H0 + dt.timedelta(hours=1), H0 + dt.timedelta(hours=2))]:
        for g in catalog.groups:
            ref_times, ref_cells = sql_reference(conn, settings, g, ship, start, end)
            times, cells = wide_cells(conn, settings, g, ship)
            assert times == ref_times, (ship, g.number)
            assert cells == ref_cells, (ship, g.number)
            assert ref_cells, "the generator must have produced values"
            checked += len(cells)
    # 4 ship-hours x 240 timestamps x every listed channel, minus ~5 % missing samples
    possible = 4 * 240 * len(catalog.all_channels)
    assert 0.9 * possible < checked < possible
    # generated data has every kind of trouble the value rule handles
    md = result.asset_materializations_for_node("narrow_to_wide")[0].metadata
    assert md["null_values_total"].value > 0
    assert md["unknown_channel_rows_skipped"].value > 0


def test_rerun_and_range_vs_hourly_give_identical_tables(settings, catalog, conn, pg_url):
    ship = settings.ships[0]
    generate(conn, settings, catalog, [ship], H0, H0 + dt.timedelta(hours=4), seed=3)
    last = hour_key(ship, H0 + dt.timedelta(hours=3))
    assert run_wide(settings, catalog, first=hour_key(ship, H0), last=last).success
    as_range = all_digests(conn, settings, catalog, [ship])
    assert all(n == 4 * 240 for n, _ in as_range.values())

    assert run_wide(settings, catalog, first=hour_key(ship, H0), last=last).success
    assert all_digests(conn, settings, catalog, [ship]) == as_range  # re-run: no change

    # the same hours one partition at a time, into a second schema
    with psycopg.connect(pg_url, autocommit=True) as c2:
        other = settings.target_schema + "_h"
        c2.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
        try:
            hourly = replace(settings, target_schema=other)
            for h in range(4):
                key = hour_key(ship, H0 + dt.timedelta(hours=h))
                assert run_wide(hourly, catalog, partition_key=key).success
            digests = all_digests(c2, hourly, catalog, [ship])
        finally:
            c2.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))
    assert digests == as_range


def test_one_hour_across_several_ships(settings, catalog, conn):
    ships = settings.ships  # three ships
    generate(conn, settings, catalog, ships, H0, H0 + dt.timedelta(hours=2), seed=5)
    h = H0 + dt.timedelta(hours=1)
    result = run_wide(settings, catalog, first=hour_key(ships[0], h), last=hour_key(ships[2], h))
    assert result.success
    for ship in ships:
        for g in catalog.groups:
            ref_times, ref_cells = sql_reference(conn, settings, g, ship, h, h + dt.timedelta(hours=1))
            times, cells = wide_cells(conn, settings, g, ship)
            assert (times, cells) == (ref_times, ref_cells)


def test_source_rows_removed_or_changed_are_reflected_on_rerun(settings, catalog, conn):
    ship = settings.ships[0]
    generate(conn, settings, catalog, [ship], H0, H0 + dt.timedelta(hours=1), seed=9)
    assert run_wide(settings, catalog, partition_key=hour_key(ship, H0)).success
    src = sql.Identifier(*settings.source_qualified)
    conn.execute(sql.SQL("DELETE FROM {} WHERE created_time = %s").format(src), (H0 + 10 * S,))
    conn.execute(sql.SQL("UPDATE {} SET double_v = 12345.5 WHERE created_time = %s "
                         "AND value_format = 'Decimal'").format(src), (H0 + 11 * S,))
    assert run_wide(settings, catalog, partition_key=hour_key(ship, H0)).success
    for g in catalog.groups:
        ref = sql_reference(conn, settings, g, ship, H0, H0 + dt.timedelta(hours=1))
        assert wide_cells(conn, settings, g, ship) == ref
        assert H0 + 10 * S not in ref[0]


def test_channel_appended_to_a_list_becomes_a_column(settings, catalog, conn):
    ship = settings.ships[0]
    new = "/hs4sd_v1/new/channel//added/later"
    generate(conn, settings, catalog, [ship], H0, H0 + dt.timedelta(hours=2), seed=11)
    generate(conn, settings, catalog, [ship], H0, H0 + dt.timedelta(hours=2), seed=11, channels=[new])
    assert run_wide(settings, catalog, partition_key=hour_key(ship, H0)).success
    g3 = catalog.group(3)
    before_times, before_cells = wide_cells(conn, settings, g3, ship)

    path = settings.channel_lists_dir / "3_navigation_ship.txt"
    path.write_text(path.read_text() + f"{new}\n")
    cat2 = load_catalog(settings.channel_lists_dir)
    assert run_wide(settings, cat2, partition_key=hour_key(ship, H0 + dt.timedelta(hours=1))).success

    g3b = cat2.group(3)
    assert g3b.channels[-1] == new
    times, cells = wide_cells(conn, settings, g3b, ship)
    # earlier rows keep every value and have the new column empty
    for (t, ch), v in before_cells.items():
        assert cells[(t, ch)] == v
    assert not any(ch == new for (t, ch) in cells if t in before_times)
    # the new hour has the new channel's values, exactly as the SQL pivot says
    h1 = H0 + dt.timedelta(hours=1)
    ref_times, ref_cells = sql_reference(conn, settings, g3b, ship, h1, h1 + dt.timedelta(hours=1))
    assert {k: v for k, v in cells.items() if k[0] >= h1} == ref_cells
    assert any(ch == new for (_, ch) in ref_cells)
