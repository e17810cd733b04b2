"""The crafted dataset every checks test starts from."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.write import corrections_table_name, ensure_support_tables, ensure_wide_table
from n2w_pipeline_tests.checks.helpers import SHIP, T0, T1, T2, T3, T4
from n2w_pipeline_tests.test_wide_assets import insert_rows


@pytest.fixture
def crafted(settings: Settings, tmp_path: Path, conn: psycopg.Connection):
    """Two groups over two hours: a silent channel, NULL/unparsable/non-finite values,
    two unknown channels and corrections over a value, over a NULL, on a new row and NaN."""
    lists = tmp_path / "crafted_lists"
    lists.mkdir()
    (lists / "1_small.txt").write_text("/a\n/b\n/c\n/silent\n")
    (lists / "2_other.txt").write_text("/e\n")
    s = replace(settings, channel_lists_dir=lists)
    catalog = load_catalog(lists)
    insert_rows(conn, s, [
        (SHIP, "/a", T0, "Decimal", 1.5, None, None, None),
        (SHIP, "/b", T0, "Integer", None, 42, None, None),
        (SHIP, "/c", T0, "String", None, None, None, "n/a"),          # unparsable
        (SHIP, "/e", T0, "Decimal", 9.0, None, None, None),
        (SHIP, "/a", T1, "Decimal", None, None, None, None),          # NULL value
        (SHIP, "/b", T1, "Integer", None, 7, None, None),
        (SHIP, "/x/unknown", T1, "Decimal", 1.0, None, None, None),   # in no list
        (SHIP, "/a", T2, "Decimal", 2.0, None, None, None),
        (SHIP, "/c", T2, "String", None, None, None, " 3.5 "),
        (SHIP, "/x/unknown", T2, "Decimal", 2.0, None, None, None),
        (SHIP, "/y/unknown", T2, "String", None, None, None, "x"),
        (SHIP, "/b", T3, "Integer", None, 5, None, None),
        (SHIP, "/e", T3, "String", None, None, None, "Infinity"),     # non-finite
        ("IMO9976915", "/a", T0, "Decimal", 55.0, None, None, None),  # another ship
    ])
    ensure_support_tables(conn, s)
    corrections = {  # (group, time) -> {channel: value}, as the corrections shadow tables hold them
        (1, T0): {"/a": 10.0, "/c": 11.0},   # over a narrow value, over an unparsable one
        (1, T4): {"/b": 12.0},               # a cell and a row with no narrow row
        (2, T2): {"/e": float("nan")},       # a NaN correction: a row, no cell
    }
    for (number, t), cells in corrections.items():
        g = catalog.group(number)
        shadow = corrections_table_name(s, SHIP, number)
        ensure_wide_table(conn, s, g, SHIP, table=shadow, hours=(t, t + dt.timedelta(hours=1)))
        conn.execute(sql.SQL("INSERT INTO {} (created_time, {}) VALUES (%s, {})").format(
            sql.Identifier(s.target_schema, shadow), sql.SQL(", ").join(map(sql.Identifier, cells)),
            sql.SQL(", ").join(sql.Placeholder() * len(cells))), (t, *cells.values()))
    return s, catalog
