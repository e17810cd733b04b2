"""Writing corrections into the shadow and wide tables: only the file's cells, a second
apply is a no-op, any order of backfill and correction gives the same tables, the dry run
predicts the real run, and a failing statement reports its own error."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.corrections import apply_file
from n2w_pipeline.generate import generate
from n2w_pipeline.write import corrections_table_name, ensure_support_tables, ensure_wide_table
from n2w_pipeline_tests.corrections.common import (
    GOOD,
    H0,
    SHIP,
    S,
    applied_files,
    corrections_rows,
    ts,
    write,
)
from n2w_pipeline_tests.helpers import (
    all_digests,
    hour_key,
    run_wide,
    sql_reference,
    table_digest,
    wide_cells,
)


def test_upsert_writes_only_file_cells_and_second_apply_is_noop(settings, catalog, conn, chans):
    a, b, c = chans
    g1, g3 = catalog.group(1), catalog.group(3)
    other = g1.columns[5]
    ensure_support_tables(conn, settings)
    ensure_wide_table(conn, settings, g1, SHIP, hours=(H0, H0 + dt.timedelta(days=1)))
    t1 = sql.Identifier(settings.target_schema, settings.table_name(SHIP, 1))
    conn.execute(sql.SQL("INSERT INTO {} (created_time, {}, {}, {}) VALUES (%s, 1, 2, 5)").format(
        t1, sql.Identifier(g1.columns[0]), sql.Identifier(g1.columns[1]), sql.Identifier(other)), (H0,))
    path = write(settings, GOOD, f"timestamp,{a},{b},{c}\n{ts(H0)},10,,7\n{ts(H0 + S)},11,12,\n")

    r = apply_file(conn, settings, catalog, path)
    assert wide_cells(conn, settings, g1, SHIP) == ({H0, H0 + S}, {
        (H0, a): 10.0, (H0, b): 2.0, (H0, g1.channels[5]): 5.0,  # blank b and other column kept
        (H0 + S, a): 11.0, (H0 + S, b): 12.0,                    # new row, other columns NULL
    })
    assert wide_cells(conn, settings, g3, SHIP) == ({H0}, {(H0, c): 7.0})  # no all-blank row
    t1r, t3r = r.tables
    assert (t1r.table, t1r.rows, t1r.inserted, t1r.updated, t1r.cells) == (
        settings.table_name(SHIP, 1), 2, 1, 1, 3)
    assert (t1r.matched_channels, t1r.listed_channels) == (2, len(g1.channels))
    assert (t3r.rows, t3r.inserted, t3r.updated, t3r.cells) == (1, 1, 0, 1)
    assert (r.corrections_inserted, r.corrections_updated) == (4, 0)
    assert corrections_rows(conn, settings, catalog) == sorted([
        (a, H0, 10.0), (c, H0, 7.0), (a, H0 + S, 11.0), (b, H0 + S, 12.0)])
    assert applied_files(conn, settings) == [(GOOD, SHIP, 2, 4)]

    names = [settings.table_name(SHIP, 1), settings.table_name(SHIP, 3)]
    digests = [table_digest(conn, settings.target_schema, n) for n in names]
    again = apply_file(conn, settings, catalog, path)
    assert (again.rows_inserted, again.rows_updated, again.rows_unchanged) == (0, 0, 3)
    assert (again.corrections_inserted, again.corrections_updated) == (0, 0)
    assert [table_digest(conn, settings.target_schema, n) for n in names] == digests


def test_corrections_table_name_over_63_bytes_is_refused_before_writing(settings, catalog, conn, chans):
    pattern = "tbl_data_timeseries_with_a_rather_longer_prefix_{ship_lower}_{group}"
    long = replace(settings, table_pattern=pattern)
    assert len(long.table_name(SHIP, 1)) == 60  # a legal wide-table name, but 65 bytes with _corr
    with pytest.raises(ValueError, match="over PostgreSQL's 63"):
        corrections_table_name(long, SHIP, 1)
    path = write(long, GOOD, f"timestamp,{chans[0]}\n{ts(H0)},1\n")
    with pytest.raises(ValueError, match="_corr"):
        apply_file(conn, long, catalog, path)
    assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                        (settings.target_schema,)).fetchone() == (0,)


def _correction_file(settings: Settings, catalog) -> tuple[Path, dict[tuple[int, dt.datetime, str], float]]:  # noqa: ANN001
    """Corrections over generated hours: existing times, a new time, channels of groups 1 and 2."""
    g1, g2 = catalog.group(1), catalog.group(2)
    chs = [g1.channels[0], g1.channels[7], g2.channels[3]]
    times = [H0 + 3 * S, H0 + 100 * S, H0 + dt.timedelta(hours=1, seconds=7)]  # last: not a 15 s tick
    lines = [f"timestamp,{','.join(chs)}",
             f"{ts(times[0])},1000.5,,-3",
             f"{ts(times[1])},,2000.25,",
             f"{ts(times[2])},7,8,9"]
    expected = {(1, times[0], chs[0]): 1000.5, (2, times[0], chs[2]): -3.0,
                (1, times[1], chs[1]): 2000.25,
                (1, times[2], chs[0]): 7.0, (1, times[2], chs[1]): 8.0, (2, times[2], chs[2]): 9.0}
    return write(settings, GOOD, "\n".join(lines) + "\n"), expected


def test_any_order_of_backfill_and_correction_gives_identical_tables(settings, catalog, conn, pg_url):
    ship_first = settings.ships[0]
    generate(conn, settings, catalog, [SHIP], H0, H0 + dt.timedelta(hours=2), seed=4)
    path, expected = _correction_file(settings, catalog)
    first, last = hour_key(SHIP, H0), hour_key(SHIP, H0 + dt.timedelta(hours=1))
    assert ship_first == SHIP

    # A: backfill, then correction, then backfill again (a later re-materialisation)
    assert run_wide(settings, catalog, first=first, last=last).success
    apply_file(conn, settings, catalog, path)
    after_correction = all_digests(conn, settings, catalog, [SHIP])
    assert run_wide(settings, catalog, first=first, last=last).success
    order_a = all_digests(conn, settings, catalog, [SHIP])
    assert order_a == after_correction  # the backfill did not undo the correction

    # B: correction first, then backfill hour by hour, into another schema
    other = settings.target_schema + "_b"
    with psycopg.connect(pg_url, autocommit=True) as c2:
        c2.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
        try:
            sb = replace(settings, target_schema=other)
            apply_file(c2, sb, catalog, path)
            for h in range(2):
                assert run_wide(sb, catalog, partition_key=hour_key(SHIP, H0 + dt.timedelta(hours=h))).success
            apply_file(c2, sb, catalog, path)  # and the file again: no change
            order_b = all_digests(c2, sb, catalog, [SHIP])
        finally:
            c2.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))
    assert order_b == order_a

    # the cells are the narrow values with the corrections laid over them
    for g in catalog.groups:
        ref_times, ref_cells = sql_reference(conn, settings, g, SHIP, H0, H0 + dt.timedelta(hours=2))
        for (num, t, ch), v in expected.items():
            if num == g.number:
                ref_times.add(t)
                ref_cells[(t, ch)] = v
        assert wide_cells(conn, settings, g, SHIP) == (ref_times, ref_cells), g.number


def test_dry_run_writes_nothing_and_predicts_the_real_run(settings, catalog, conn):
    generate(conn, settings, catalog, [SHIP], H0, H0 + dt.timedelta(hours=2), seed=6)
    assert run_wide(settings, catalog, first=hour_key(SHIP, H0),
                    last=hour_key(SHIP, H0 + dt.timedelta(hours=1))).success
    path, expected = _correction_file(settings, catalog)
    before = all_digests(conn, settings, catalog, [SHIP])
    dry = apply_file(conn, settings, catalog, path, dry_run=True)
    assert all_digests(conn, settings, catalog, [SHIP]) == before
    assert corrections_rows(conn, settings, catalog) == []
    assert applied_files(conn, settings) == []
    real = apply_file(conn, settings, catalog, path)
    assert all_digests(conn, settings, catalog, [SHIP]) != before
    assert dry.dry_run and not real.dry_run
    assert [(t.table, t.rows, t.inserted, t.updated, t.cells) for t in dry.tables] == \
        [(t.table, t.rows, t.inserted, t.updated, t.cells) for t in real.tables]
    # the new, off-cadence timestamp is an insert in both tables; the rest are updates
    assert [(t.inserted, t.updated) for t in real.tables] == [(1, 2), (1, 1)]
    assert dry.corrections_inserted == real.corrections_inserted == len(expected)


def test_a_failing_update_reports_its_own_error(settings, catalog, chans, pg_url):
    """A stored row locked by another session: the first correction's UPDATE times out and
    that error (not a follow-up "transaction is aborted") reaches the caller; nothing is kept."""
    a = chans[0]
    g1 = catalog.group(1)
    table = sql.Identifier(settings.target_schema, settings.table_name(SHIP, 1))
    path = write(settings, GOOD, f"timestamp,{a}\n{ts(H0)},10\n")
    with psycopg.connect(pg_url, autocommit=True) as c, psycopg.connect(pg_url, autocommit=True) as blocker:
        ensure_support_tables(c, settings)
        ensure_wide_table(c, settings, g1, SHIP, hours=(H0, H0 + dt.timedelta(days=1)))
        c.execute(sql.SQL("INSERT INTO {} (created_time, {}) VALUES (%s, 1)").format(
            table, sql.Identifier(g1.columns[0])), (H0,))
        c.execute("SET lock_timeout = '300ms'")
        with blocker.transaction():
            blocker.execute(sql.SQL("SELECT * FROM {} FOR UPDATE").format(table))
            with pytest.raises(psycopg.errors.LockNotAvailable):
                apply_file(c, settings, catalog, path)
        assert wide_cells(c, settings, g1, SHIP) == ({H0}, {(H0, a): 1.0})
        assert corrections_rows(c, settings, catalog) == []
        assert applied_files(c, settings) == []
