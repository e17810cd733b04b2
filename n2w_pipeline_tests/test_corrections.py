"""CSV corrections: real files, the real PostgreSQL, real Dagster sensor ticks and runs."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline import corrections
from n2w_pipeline.cli import main
from n2w_pipeline.config import Settings
from n2w_pipeline.corrections import CorrectionFileError, apply_file, dump_cursor
from n2w_pipeline.defs.corrections import build_correction_asset, build_correction_sensor
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.generate import generate
from n2w_pipeline.write import (
    CORRECTION_FILES,
    corrections_table_name,
    ensure_support_tables,
    ensure_wide_table,
    existing_columns,
    lock_hours,
)
from n2w_pipeline_tests.helpers import (
    all_digests,
    hour_key,
    run_wide,
    sql_reference,
    table_digest,
    wide_cells,
)

SHIP = "IMO9976903"  # hull H2546
H0 = dt.datetime(2025, 3, 1)
S = dt.timedelta(seconds=15)
GOOD = "H2546/H2546_2025-03.csv"


def write(settings: Settings, rel: str, content: str | bytes) -> Path:
    path = settings.migration_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture
def chans(catalog):
    """Two channels of group 1, one of group 3, and the group-1 column names."""
    g1, g3 = catalog.group(1), catalog.group(3)
    return g1.channels[0], g1.channels[1], g3.channels[0]


def corrections_rows(conn: psycopg.Connection, settings: Settings, catalog) -> list[tuple]:  # noqa: ANN001
    """(channel, time, value) of every stored correction cell of SHIP (the shadow tables)."""
    out = []
    for g in catalog.groups:
        name = corrections_table_name(settings, SHIP, g.number)
        have = existing_columns(conn, settings.target_schema, name)
        if have is None:
            continue
        for col, ch in zip(g.columns, g.channels, strict=True):
            if col not in have:  # the shadow holds only the columns corrections used
                continue
            out += [(ch, t, v) for t, v in conn.execute(
                sql.SQL("SELECT created_time, {0} FROM {1} WHERE {0} IS NOT NULL").format(
                    sql.Identifier(col), sql.Identifier(settings.target_schema, name))).fetchall()]
    return sorted(out)


def applied_files(conn: psycopg.Connection, settings: Settings) -> list[tuple]:
    if existing_columns(conn, settings.target_schema, CORRECTION_FILES) is None:
        return []
    return conn.execute(sql.SQL("SELECT file, ship_id, rows, cells FROM {} ORDER BY file").format(
        sql.Identifier(settings.target_schema, CORRECTION_FILES))).fetchall()


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


# ---------------------------------------------------------------- bad inputs, one file each

REJECTED = {
    "unknown hull folder": ("H9999/H9999_2025-03.csv", "timestamp,{a}\n{t0},1\n",
                            ["H9999/H9999_2025-03.csv", "unknown hull folder 'H9999'"]),
    "file name not matching": ("H2546/march fixes.csv", "timestamp,{a}\n{t0},1\n",
                               ["H2546/march fixes.csv", "file name must be <HULL>_<YYYY-MM>.csv"]),
    "hull of name differs from folder": ("H2546/H2547_2025-03.csv", "timestamp,{a}\n{t0},1\n",
                                         ["differs from its folder 'H2546'"]),
    "no timestamp column": (GOOD, "time,{a}\n{t0},1\n", [GOOD, "line 1", "no 'timestamp' column"]),
    "empty file": (GOOD, "", [GOOD, "line 1", "empty file"]),
    "same channel twice": (GOOD, "timestamp,{a}, {a} \n{t0},1,2\n", [GOOD, "line 1", "columns 2 and 3"]),
    "not UTF-8": (GOOD, b"timestamp,{a}\n{t0},1\n{t1},\xff\n", [GOOD, "line 3", "not UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_files_name_file_line_reason_and_write_nothing(case, settings, catalog, conn, chans):
    rel, template, expected = REJECTED[case]
    fields = {"a": chans[0], "t0": ts(H0), "t1": ts(H0 + S)}
    content = (template.format(**fields) if isinstance(template, str)
               else template.replace(b"{a}", chans[0].encode()).replace(b"{t0}", ts(H0).encode())
               .replace(b"{t1}", ts(H0 + S).encode()))
    path = write(settings, rel, content)
    with pytest.raises(CorrectionFileError) as err:
        apply_file(conn, settings, catalog, path)
    for text in expected:
        assert text in str(err.value), str(err.value)
    assert corrections_rows(conn, settings, catalog) == []
    tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                          (settings.target_schema,)).fetchone()
    assert tables == (0,)


def _content(rows: list[str], header: str, *, bom: bool = False, crlf: bool = False) -> bytes:
    text = "\n".join([header, *rows]) + "\n"
    if crlf:
        text = text.replace("\n", "\r\n")
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def test_skipped_rows_and_cells_are_counted_with_lines(settings, catalog, conn, chans):
    a, b, _ = chans
    g1 = catalog.group(1)
    t = [H0 + i * S for i in range(6)]
    path = write(settings, GOOD, _content([
        f"{ts(t[0])},1,2",            # line 2: good
        "2025-02-30 00:00:00,3,4",    # line 3: unparsable timestamp -> row skipped
        f"{ts(t[1])},abc,5",          # line 4: non-numeric cell -> cell skipped, b kept
        f"{ts(t[2])},7,8",            # line 5: conflicting duplicate ...
        f"{ts(t[2])},7,9",            # line 6: ... both rows skipped
        f"{ts(t[3])},1.5,",           # line 7: identical duplicate ...
        f"{t[3]:%Y-%m-%d %H:%M:%S}.000,1.50,",  # line 8: ... same values -> one row kept
        "",                           # line 9: blank line
        f"{ts(t[4])},inf,6",          # line 10: non-finite cell
        f"{ts(t[5])},1,2,3",          # line 11: more fields than the header -> row skipped
        ",5,6",                       # line 12: missing timestamp -> row skipped
    ], f"timestamp,{a},{b}"))
    r = apply_file(conn, settings, catalog, path)
    assert r.skipped_rows == {"unparsable_timestamp": 2, "duplicate_timestamp_conflict": 2,
                              "too_many_fields": 1}
    assert r.bad_cells == {"non_numeric": 1, "non_finite": 1}
    assert (r.duplicate_identical, r.blank_lines, r.lines) == (1, 1, 11)
    msgs = "\n".join(r.problems)
    for text in [f"{GOOD} line 3: unparsable timestamp '2025-02-30 00:00:00'",
                 f"{GOOD} line 12: missing timestamp",
                 f"{GOOD} lines 5, 6: timestamp '{ts(t[2])}' repeated with different values",
                 f"{GOOD} line 4: non-numeric value 'abc' for '{a}'",
                 f"{GOOD} line 10: non-finite value 'inf' for '{a}'",
                 f"{GOOD} line 11: more fields than the 3 header columns"]:
        assert text in msgs, msgs
    assert wide_cells(conn, settings, g1, SHIP) == ({t[0], t[1], t[3], t[4]}, {
        (t[0], a): 1.0, (t[0], b): 2.0, (t[1], b): 5.0, (t[3], a): 1.5, (t[4], b): 6.0})


@pytest.mark.parametrize("variant", ["plain", "bom", "crlf", "bom+crlf", "stray spaces"])
def test_bom_crlf_and_stray_spaces_read_the_same(variant, settings, catalog, conn, chans):
    a, b, c = chans
    header = f" timestamp ,  {a} ,{b}   ,{c}, /not/in/any/list " if variant == "stray spaces" \
        else f"timestamp,{a},{b},{c},/not/in/any/list"
    rows = [f"{ts(H0)}, 1.25 ,2,3,9", f"{ts(H0 + S)},,4,,9"]
    path = write(settings, GOOD, _content(rows, header, bom="bom" in variant, crlf="crlf" in variant))
    r = apply_file(conn, settings, catalog, path)
    assert (r.skipped_rows, r.bad_cells) == ({}, {})
    assert r.unknown_channels == {"/not/in/any/list": 2}
    assert any("1 channel(s) in no channel list" in p for p in r.problems)
    assert wide_cells(conn, settings, catalog.group(1), SHIP) == (
        {H0, H0 + S}, {(H0, a): 1.25, (H0, b): 2.0, (H0 + S, b): 4.0})
    assert wide_cells(conn, settings, catalog.group(3), SHIP) == ({H0}, {(H0, c): 3.0})


def test_header_only_file_applies_nothing(settings, catalog, conn, chans):
    path = write(settings, GOOD, f"timestamp,{chans[0]}\r\n")
    r = apply_file(conn, settings, catalog, path)
    assert (r.lines, r.rows_valid, r.rows_inserted, r.corrections_inserted) == (0, 0, 0, 0)
    assert corrections_rows(conn, settings, catalog) == []
    assert wide_cells(conn, settings, catalog.group(1), SHIP) == (set(), {})


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


def test_time_offset_shifts_file_timestamps(settings, catalog, conn, chans):
    s2 = replace(settings, csv_time_offset_hours=-2.0)
    path = write(s2, GOOD, f"timestamp,{chans[0]}\n2025-03-01 02:00,4\n")
    apply_file(conn, s2, catalog, path)
    assert wide_cells(conn, s2, catalog.group(1), SHIP)[1] == {(H0, chans[0]): 4.0}


# ---------------------------------------------------------------- durability and order


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


def _large_file(settings: Settings, catalog, chans, rows: int):  # noqa: ANN001
    """A file of ``rows`` rows (enough for two parts) over timestamps in three states: the
    first third already corrected, the second third only in the wide table, the rest new.
    Returns the path and group 1's wide cells, keyed (time, channel), before and after."""
    a, b, _ = chans
    g1 = catalog.group(1)
    table = sql.Identifier(settings.target_schema, settings.table_name(SHIP, 1))
    times = [H0 + i * S for i in range(rows)]
    third = rows // 3
    expected: dict[tuple[dt.datetime, str], float] = {}
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        ensure_support_tables(c, settings)
        ensure_wide_table(c, settings, g1, SHIP, hours=(H0, H0 + dt.timedelta(days=1)))
        with c.cursor() as cur, cur.copy(sql.SQL("COPY {} (created_time, {}, {}) FROM STDIN").format(
                table, sql.Identifier(g1.columns[0]), sql.Identifier(g1.columns[5]))) as cp:
            for i, t in enumerate(times[: 2 * third]):
                cp.write_row((t, -i, i))
                expected[(t, a)], expected[(t, g1.channels[5])] = -i, i
        early = write(settings, "H2546/H2546_2025-03_early.csv", f"timestamp,{a}\n" + "".join(
            f"{ts(t)},{i}.5\n" for i, t in enumerate(times[:third])))
        apply_file(c, settings, catalog, early)
    expected.update({(t, a): i + 0.5 for i, t in enumerate(times[:third])})
    before = dict(expected)
    lines = [f"timestamp,{a},{b}"]
    for i, t in enumerate(times):
        va = "" if i % 7 == 0 else f"{i * 0.25}"
        vb = "" if i % 5 == 0 else f"{-i}"
        lines.append(f"{ts(t)},{va},{vb}")
        if va:
            expected[(t, a)] = i * 0.25
        if vb:
            expected[(t, b)] = -i
    path = write(settings, GOOD, "\n".join(lines) + "\n")
    return path, before, expected


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


def test_large_file_is_written_in_parallel_parts_and_a_failed_part_is_completed_by_a_reapply(
        settings, catalog, conn, chans, pg_url):
    rows = 2 * corrections.PART_MIN_ROWS + 3_000
    path, before, want = _large_file(settings, catalog, chans, rows)
    epoch = dt.datetime(1970, 1, 1)
    written = [H0 + i * S for i in range(rows) if i % 35]  # i % 35 == 0: both cells blank
    us = np.array([(t - epoch) // dt.timedelta(microseconds=1) for t in written], dtype=np.int64)
    (_, cut), (_, end) = corrections.split_hours([us], 2)
    cut_time, last_hour = epoch + dt.timedelta(hours=cut), epoch + dt.timedelta(hours=end - 1)

    def connect() -> psycopg.Connection:
        c = psycopg.connect(pg_url, autocommit=True)
        c.execute("SET lock_timeout = '300ms'")
        return c

    # another writer holds the file's last hour: the second part cannot lock it and fails,
    # the first part commits
    with psycopg.connect(pg_url, autocommit=True) as blocker, blocker.transaction():
        lock_hours(blocker, SHIP, last_hour, last_hour + dt.timedelta(hours=1))
        with pytest.raises(psycopg.errors.LockNotAvailable) as err:
            apply_file(conn, settings, catalog, path, connect=connect)
    note = " ".join(getattr(err.value, "__notes__", []))
    assert f"1 of 2 parts failed; committed: 2025-03-01 00:00 to {cut_time:%Y-%m-%d %H:00}; " \
        "applying the file again writes the rest" in note, note
    # the first part's hours hold the file, the second part's hours what they held before
    half = {k: v for k, v in want.items() if k[0] < cut_time}
    half.update({k: v for k, v in before.items() if k[0] >= cut_time})
    assert wide_cells(conn, settings, catalog.group(1), SHIP) == ({t for t, _ in half}, half)
    assert applied_files(conn, settings) == [("H2546/H2546_2025-03_early.csv", SHIP, rows // 3, rows // 3)]

    timings: dict[str, float] = {}
    again = apply_file(conn, settings, catalog, path, connect=connect, timings=timings)
    assert timings["parts"] == 2
    assert wide_cells(conn, settings, catalog.group(1), SHIP) == ({t for t, _ in want}, want)
    done = sum(1 for t in written if t < cut_time)
    assert again.tables[0].inserted + again.tables[0].updated == len(written) - done  # first part kept

    # the same file written on one connection (serially) gives the same table, cell for cell
    serial = replace(settings, target_schema=settings.target_schema + "_serial")
    with psycopg.connect(pg_url, autocommit=True) as c2:
        c2.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(serial.target_schema)))
        try:
            serial_path, _, serial_want = _large_file(serial, catalog, chans, rows)
            one: dict[str, float] = {}
            apply_file(c2, serial, catalog, serial_path, timings=one)
            assert one["parts"] == 1
            assert serial_want == want
            for name in (settings.table_name(SHIP, 1), corrections_table_name(settings, SHIP, 1)):
                assert table_digest(c2, serial.target_schema, name) == \
                    table_digest(conn, settings.target_schema, name), name
        finally:
            c2.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(serial.target_schema)))


# ---------------------------------------------------------------- Dagster: sensor and asset


def test_sensor_registers_partitions_and_runs_each_file_version(settings, catalog, conn, chans):
    a = chans[0]
    asset = build_correction_asset(settings, catalog)
    sensor = build_correction_sensor(settings, asset)
    good = write(settings, GOOD, f"timestamp,{a}\n{ts(H0)},1\n")
    write(settings, "H2547/H2547_2025-03.csv", f"time,{a}\n{ts(H0)},1\n")  # rejected at run time
    write(settings, "H9999/H9999_2025-03.csv", f"timestamp,{a}\n{ts(H0)},1\n")  # unknown hull
    write(settings, "H2546/notes.csv", "x\n")  # bad name
    write(settings, "README.md", "not a csv: ignored\n")
    resources = {"n2w_db": N2WDatabase(url=settings.database_url)}

    with dg.instance_for_test() as inst:
        res = sensor(dg.build_sensor_context(instance=inst))
        assert isinstance(res, dg.SensorResult)
        keys = sorted(r.partition_key for r in res.run_requests)
        assert keys == [GOOD, "H2547/H2547_2025-03.csv"]
        assert all("@" in r.run_key for r in res.run_requests)
        for req in res.dynamic_partitions_requests:
            inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        cursor = res.cursor

        ok = dg.materialize([asset], partition_key=GOOD, instance=inst, resources=resources)
        mat = ok.asset_materializations_for_node("csv_corrections")[0]
        md = {k: v.value for k, v in mat.metadata.items()}
        assert (md["rows_read"], md["rows_inserted"], md["rows_updated"]) == (1, 1, 0)
        assert md["coverage_pct_per_table"] == {settings.table_name(SHIP, 1): round(
            100 / len(catalog.group(1).channels), 1)}
        bad = dg.materialize([asset], partition_key="H2547/H2547_2025-03.csv", instance=inst,
                             resources=resources, raise_on_error=False)
        assert not bad.success
        failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
        assert "H2547/H2547_2025-03.csv line 1: no 'timestamp' column" in str(failure.event_specific_data)

        # nothing changed: a skip that names the bad files
        skip = sensor(dg.build_sensor_context(instance=inst, cursor=cursor))
        assert isinstance(skip, dg.SkipReason)
        assert "unknown hull folder 'H9999'" in skip.skip_message
        assert "H2546/notes.csv: file name must be" in skip.skip_message

        # same bytes, new mtime: no run; new bytes: a run with a new run key
        st = good.stat()
        os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
        res2 = sensor(dg.build_sensor_context(instance=inst, cursor=cursor))
        assert not getattr(res2, "run_requests", None)
        cursor = res2.cursor if isinstance(res2, dg.SensorResult) else cursor
        good.write_text(f"timestamp,{a}\n{ts(H0)},2\n")
        res3 = sensor(dg.build_sensor_context(instance=inst, cursor=cursor))
        assert [r.partition_key for r in res3.run_requests] == [GOOD]
        old_keys = {r.run_key for r in res.run_requests}
        assert res3.run_requests[0].run_key not in old_keys

        # the same as a dry run from run config: an observation, no materialisation, no writes
        before = wide_cells(conn, settings, catalog.group(1), SHIP)
        dry = dg.materialize([asset], partition_key=GOOD, instance=inst, resources=resources,
                             run_config={"ops": {"csv_corrections": {"config": {"dry_run": True}}}})
        assert dry.success and not dry.asset_materializations_for_node("csv_corrections")
        obs = [e for e in dry.all_events if e.event_type_value == "ASSET_OBSERVATION"]
        assert obs and obs[0].event_specific_data.asset_observation.metadata["rows_updated"].value == 1
        assert wide_cells(conn, settings, catalog.group(1), SHIP) == before == (
            {H0}, {(H0, a): 1.0})


def test_cli_dry_run_then_apply_reports_and_bad_file_does_not_block(settings, catalog, conn, chans,
                                                                   monkeypatch, capsys):
    a = chans[0]
    write(settings, GOOD, f"timestamp,{a}\n{ts(H0)},1\n")
    write(settings, "H2547/H2547_2025-03.csv", "")  # empty: rejected
    for k, v in {"N2W_DATABASE_URL": settings.database_url, "N2W_TARGET_SCHEMA": settings.target_schema,
                 "N2W_SOURCE_SCHEMA": settings.source_schema,
                 "N2W_MIGRATION_DIR": str(settings.migration_dir),
                 "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir)}.items():
        monkeypatch.setenv(k, v)
    assert main(["corrections", "--dry-run", "--hull", "H2546"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and f"1/{len(catalog.group(1).channels)}" in out
    assert corrections_rows(conn, settings, catalog) == []
    assert main(["corrections"]) == 1
    out = capsys.readouterr().out
    assert "REJECTED H2547/H2547_2025-03.csv line 1: empty file" in out
    assert "1 file(s) applied, 1 rejected" in out
    assert wide_cells(conn, settings, catalog.group(1), SHIP) == ({H0}, {(H0, a): 1.0})
    assert dump_cursor({}) == "{}"
