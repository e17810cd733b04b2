"""Parsing correction files: rejected contents, skipped rows and cells with their lines,
BOM / CRLF / stray spaces, a header-only file, the time offset (applied through
``apply_file`` and read back from the real tables)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from n2w_pipeline.corrections import apply_file
from n2w_pipeline_tests.corrections.common import (
    GOOD,
    H0,
    SHIP,
    S,
    assert_rejected,
    corrections_rows,
    ts,
    write,
)
from n2w_pipeline_tests.helpers import wide_cells

BAD_CONTENT = {
    "no timestamp column": (GOOD, "time,{a}\n{t0},1\n", [GOOD, "line 1", "no 'timestamp' column"]),
    "empty file": (GOOD, "", [GOOD, "line 1", "empty file"]),
    "same channel twice": (GOOD, "timestamp,{a}, {a} \n{t0},1,2\n", [GOOD, "line 1", "columns 2 and 3"]),
    "not UTF-8": (GOOD, b"timestamp,{a}\n{t0},1\n{t1},\xff\n", [GOOD, "line 3", "not UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_rejected_files_name_file_line_reason_and_write_nothing(case, settings, catalog, conn, chans):
    assert_rejected(BAD_CONTENT[case], settings, catalog, conn, chans[0])


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


def test_time_offset_shifts_file_timestamps(settings, catalog, conn, chans):
    s2 = replace(settings, csv_time_offset_hours=-2.0)
    path = write(s2, GOOD, f"timestamp,{chans[0]}\n2025-03-01 02:00,4\n")
    apply_file(conn, s2, catalog, path)
    assert wide_cells(conn, s2, catalog.group(1), SHIP)[1] == {(H0, chans[0]): 4.0}
