"""A large file written in parallel hour-range parts: a failed part leaves the others
committed, applying the file again completes it, and the result equals a serial write."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.corrections import apply_file
from n2w_pipeline.corrections.parts import PART_MIN_ROWS, split_hours
from n2w_pipeline.write import corrections_table_name, ensure_support_tables, ensure_wide_table, lock_hours
from n2w_pipeline_tests.corrections.common import GOOD, H0, SHIP, S, applied_files, ts, write
from n2w_pipeline_tests.helpers import table_digest, wide_cells


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


def test_large_file_is_written_in_parallel_parts_and_a_failed_part_is_completed_by_a_reapply(
        settings, catalog, conn, chans, pg_url):
    rows = 2 * PART_MIN_ROWS + 3_000
    path, before, want = _large_file(settings, catalog, chans, rows)
    epoch = dt.datetime(1970, 1, 1)
    written = [H0 + i * S for i in range(rows) if i % 35]  # i % 35 == 0: both cells blank
    us = np.array([(t - epoch) // dt.timedelta(microseconds=1) for t in written], dtype=np.int64)
    (_, cut), (_, end) = split_hours([us], 2)
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
