"""Differences: a broken table caught cell by cell, and repaired by a re-run."""

from __future__ import annotations

from psycopg import sql

from n2w_pipeline.checks import evaluate
from n2w_pipeline_tests.checks.helpers import END, H0, SHIP, T1, T2, T3, evaluations, materialise


def test_deleted_cell_and_row_fail_reconciliation_naming_them(crafted, conn):
    settings, catalog = crafted
    materialise(settings, catalog)
    g1 = catalog.groups[0]
    table = sql.Identifier(settings.target_schema, settings.table_name(SHIP, 1))
    conn.execute(sql.SQL('UPDATE {} SET "/b" = NULL WHERE created_time = %s').format(table), (T1,))

    [rec] = evaluate(conn, settings, [g1], [(SHIP, H0, END)], names=["reconciliation"])
    assert not rec.passed and rec.severity == "ERROR"
    assert rec.metadata["cell_balance"] == 1
    assert rec.metadata["failing_hours"] == [[SHIP, H0.isoformat()]]
    assert rec.metadata["first_differences"] == [
        {"ship": SHIP, "time": T1.isoformat(), "channel": "/b", "kind": "missing_cell",
         "expected": 7.0, "actual": None}]
    assert f"missing_cell at {T1.isoformat()} /b" in rec.summary

    # a whole row gone (second hour), and a cell that no narrow value backs
    conn.execute(sql.SQL("DELETE FROM {} WHERE created_time = %s").format(table), (T3,))
    conn.execute(sql.SQL('UPDATE {} SET "/silent" = 1 WHERE created_time = %s').format(table), (T2,))
    [rec] = evaluate(conn, settings, [g1], [(SHIP, H0, END)], names=["reconciliation"])
    assert rec.metadata["expected_rows"] == 5 and rec.metadata["wide_rows"] == 4
    diffs = [(d["time"], d["channel"], d["kind"]) for d in rec.metadata["first_differences"]]
    assert diffs == [
        (T1.isoformat(), "/b", "missing_cell"),
        (T2.isoformat(), "/silent", "extra_cell"),
        (T3.isoformat(), None, "missing_row"),
        (T3.isoformat(), "/b", "missing_cell"),
    ]

    # a re-run repairs the table; the run's own checks pass again
    result = materialise(settings, catalog)
    assert evaluations(result)[(g1.asset_name, "reconciliation")].passed
