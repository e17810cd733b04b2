"""The value rule as the extraction evaluates it in the server, on real rows, both with
``pg_input_is_valid`` (PostgreSQL 16+) and with the PL/pgSQL stand-in older servers get."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline import value_rule
from n2w_pipeline.config import Settings
from n2w_pipeline.extract import NarrowReader
from n2w_pipeline.pivot import resolve_values
from n2w_pipeline_tests.test_wide_assets import insert_rows

SHIP = "IMO9976903"
T0 = dt.datetime(2025, 3, 1)

# (value_format, double_v, long_v, bool_v, str_v) → expected cell, or the reason it has none
CASES: list[tuple[tuple, float | str]] = [
    (("Decimal", 1.5, None, None, None), 1.5),
    (("Decimal", None, 7, None, "8"), "null_value"),       # only double_v counts
    (("Decimal", math.nan, None, None, None), "non_finite"),
    (("Decimal", -math.inf, None, None, None), "non_finite"),
    (("Integer", 2.5, -42, None, None), -42.0),
    (("Integer", None, 2**53 + 1, None, None), float(2**53 + 1)),
    (("Boolean", None, None, True, None), 1.0),
    (("Boolean", None, None, False, None), 0.0),
    (("Boolean", None, None, None, None), "null_value"),
    (("String", None, None, None, " 3.25\t\n"), 3.25),     # surrounding whitespace ignored
    (("String", None, None, None, "+.5"), 0.5),
    (("String", None, None, None, "5."), 5.0),
    (("String", None, None, None, "1E+02"), 100.0),
    (("String", None, None, None, None), "null_value"),
    (("String", None, None, None, ""), "unparsable"),
    (("String", None, None, None, "n/a"), "unparsable"),
    (("String", None, None, None, "1,5"), "unparsable"),
    (("String", None, None, None, "0x10"), "unparsable"),  # PostgreSQL's float8 would take it
    (("String", None, None, None, "1_000"), "unparsable"),
    (("String", None, None, None, "NaN"), "non_finite"),
    (("String", None, None, None, " -Infinity "), "non_finite"),
    (("String", None, None, None, "inf"), "non_finite"),
    (("String", None, None, None, "1e999"), "non_finite"),  # out of float8's range
    (("Float", 3.0, None, None, None), "unknown_format"),
    ((None, 3.0, 3, None, None), "unknown_format"),
]


def _rows() -> list[tuple]:
    return [
        (SHIP, f"/c{i:02d}", T0, *case) for i, (case, _) in enumerate(CASES)
    ]


@pytest.mark.parametrize("native", [True, False], ids=["pg_input_is_valid", "plpgsql"])
def test_extraction_applies_the_rule_in_the_server(
    settings: Settings, conn: psycopg.Connection, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows(conn, settings, _rows())
    if not native:  # what a PostgreSQL 15 server gets
        real = value_rule.install
        monkeypatch.setattr(value_rule, "install", lambda execute, version: real(execute, 150000))
    channels = [f"/c{i:02d}" for i in range(len(CASES))]
    with NarrowReader(settings.database_url, settings, channels) as reader:
        narrow = reader.read(SHIP, T0, T0 + dt.timedelta(hours=1))
    assert narrow.height == len(CASES)
    assert narrow.get_column("channel").null_count() == len(CASES)  # all listed: no ids sent
    values, issues = resolve_values(narrow.drop("channel"))
    got_values = dict(values.filter(pl.col("value").is_not_null()).select("code", "value").iter_rows())
    got_reasons = {code: reason for _, code, reason, _ in issues.iter_rows()}
    assert issues.get_column("count").to_list() == [1] * issues.height
    for code, (_, expected) in enumerate(CASES):
        if isinstance(expected, str):
            assert got_reasons.get(code) == expected, (CASES[code], got_values.get(code))
            assert code not in got_values
        else:
            assert got_values.get(code) == expected, CASES[code]
            assert code not in got_reasons


def test_checks_rule_gives_the_same_cells(settings: Settings, conn: psycopg.Connection) -> None:
    """``cell_value`` (checks) and the extraction agree, with either validity test."""
    insert_rows(conn, settings, _rows())
    src = sql.Identifier(*settings.source_qualified)
    for version in (conn.info.server_version, 150000):
        native = value_rule.install(conn.execute, version)
        cell = value_rule.ValueRule(settings.columns, "n", native).cell_value()
        got = dict(conn.execute(
            sql.SQL("SELECT n.data_channel_id, {} FROM {} n").format(cell, src)
        ).fetchall())
        for i, (case, expected) in enumerate(CASES):
            assert got[f"/c{i:02d}"] == (None if isinstance(expected, str) else expected), case
