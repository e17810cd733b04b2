"""Asset checks: exact figures on a crafted dataset, a broken table caught cell by cell,
through real Dagster runs (in-run and on-demand job), the CLI and the pure function."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline import cli
from n2w_pipeline.channels import load_catalog
from n2w_pipeline.checks import Thresholds, check_window, evaluate
from n2w_pipeline.config import Settings
from n2w_pipeline.definitions import build_definitions
from n2w_pipeline.defs.checks import CHECK_JOB, ON_DEMAND
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline.write import corrections_table_name, ensure_support_tables, ensure_wide_table
from n2w_pipeline_tests.helpers import hour_key, run_wide, sql_reference, wide_cells
from n2w_pipeline_tests.test_wide_assets import insert_rows

SHIP = "IMO9976903"
H0 = dt.datetime(2025, 3, 1, 0, 0)
H1 = H0 + dt.timedelta(hours=1)
END = H0 + dt.timedelta(hours=2)
S = dt.timedelta(seconds=15)
T0, T1, T2, T3, T4 = H0, H0 + S, H1, H1 + S, H1 + 2 * S


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


def _materialise(settings, catalog, **kw) -> dg.ExecuteInProcessResult:
    result = run_wide(settings, catalog, first=hour_key(SHIP, H0), last=hour_key(SHIP, H1), **kw)
    assert result.success
    return result


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def _md(ev: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in ev.metadata.items()}


def _sql_figures(conn, settings, group, ship=SHIP, start=H0, end=END) -> dict:
    """Every figure the checks report, computed here in SQL (independently of checks.py)."""
    table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
    counts = sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in group.columns)
    row = conn.execute(sql.SQL("SELECT count(*), {} FROM {}").format(counts, table)).fetchone()
    rows, per_col = row[0], dict(zip(group.channels, row[1:], strict=True))
    c = settings.columns
    narrow = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} = %s AND {} = ANY(%s) AND {} >= %s AND {} < %s").format(
            sql.Identifier(*settings.source_qualified), sql.Identifier(c.ship_id),
            sql.Identifier(c.channel), sql.Identifier(c.created_time), sql.Identifier(c.created_time)),
        (ship, list(group.channels), start, end),
    ).fetchone()[0]
    ref_times, ref_cells = sql_reference(conn, settings, group, ship, start, end)
    shadow = sql.Identifier(settings.target_schema, corrections_table_name(settings, ship, group.number))
    corr = [
        (t, ch, v)
        for col, ch in zip(group.columns, group.channels, strict=True)
        for t, v in conn.execute(sql.SQL("SELECT created_time, {0} FROM {1} WHERE {0} IS NOT NULL").format(
            sql.Identifier(col), shadow)).fetchall()
    ]
    unknown = conn.execute(
        sql.SQL("SELECT {ch}, count(*) FROM {src} WHERE {ship} = %s AND NOT ({ch} = ANY(%s)) "
                "AND {ct} >= %s AND {ct} < %s GROUP BY 1 ORDER BY 2 DESC, 1").format(
            ch=sql.Identifier(c.channel), src=sql.Identifier(*settings.source_qualified),
            ship=sql.Identifier(c.ship_id), ct=sql.Identifier(c.created_time)),
        (ship, list(load_catalog(settings.channel_lists_dir).all_channels), start, end),
    ).fetchall()
    filled_corr = sum(1 for _, _, v in corr if v == v)
    over_narrow = sum(1 for t, ch, _ in corr if (t, ch) in _narrow_cells(conn, settings, ship))
    over_null = sum(1 for t, ch, _ in corr
                    if (t, ch) in _narrow_cells(conn, settings, ship) and (t, ch) not in ref_cells)
    return {
        "rows": rows, "cells": sum(per_col.values()), "per_channel": per_col,
        "narrow_rows": narrow, "nulls": narrow - len(ref_cells),
        "expected_rows": len(ref_times | {t for t, _, _ in corr}),
        "corrections": len(corr), "adjustment": filled_corr - over_narrow + over_null,
        "over_narrow": over_narrow, "over_null": over_null,
        "unknown": [{"channel": ch, "rows": n} for ch, n in unknown],
    }


def _narrow_cells(conn, settings, ship) -> set[tuple[dt.datetime, str]]:
    c = settings.columns
    return set(conn.execute(
        sql.SQL("SELECT {}, {} FROM {} WHERE {} = %s").format(
            sql.Identifier(c.created_time), sql.Identifier(c.channel),
            sql.Identifier(*settings.source_qualified), sql.Identifier(c.ship_id)),
        (ship,),
    ).fetchall())


def test_every_figure_matches_sql_on_crafted_data(crafted, conn):
    settings, catalog = crafted
    result = _materialise(settings, catalog)
    ev = _evaluations(result)
    assert len(ev) == 8  # 4 checks × 2 groups, all in the run
    g1, g2 = catalog.groups

    # the crafted numbers by hand, and the same from SQL
    f1, f2 = _sql_figures(conn, settings, g1), _sql_figures(conn, settings, g2)
    assert (f1["rows"], f1["cells"], f1["narrow_rows"], f1["nulls"]) == (5, 8, 8, 2)
    assert (f1["corrections"], f1["over_narrow"], f1["over_null"], f1["adjustment"]) == (3, 2, 1, 2)
    assert (f2["rows"], f2["cells"], f2["narrow_rows"], f2["nulls"], f2["adjustment"]) == (3, 1, 2, 1, 0)

    for g, f in ((g1, f1), (g2, f2)):
        name = g.asset_name
        fill = _md(ev[(name, "null_fill_rate")])
        slots = f["rows"] * len(g.channels)
        assert fill["filled_cells"] == f["cells"] and fill["cell_slots"] == slots
        assert fill["filled_pct"] == round(100 * f["cells"] / slots, 3)
        assert ev[(name, "null_fill_rate")].passed is False  # 40 % and 33 % < 90 %
        assert ev[(name, "null_fill_rate")].severity == dg.AssetCheckSeverity.WARN
        assert fill["ships"] == [SHIP]
        assert fill["windows"] == [[SHIP, H0.isoformat(), END.isoformat()]]

        rec = ev[(name, "reconciliation")]
        md = _md(rec)
        assert rec.passed is True and rec.severity == dg.AssetCheckSeverity.ERROR
        assert md["narrow_rows"] == f["narrow_rows"]
        assert md["filled_wide_cells"] == f["cells"]
        assert md["null_values_counted"] == f["nulls"]
        assert md["correction_adjustment"] == f["adjustment"]
        assert md["corrections_over_narrow_values"] == f["over_narrow"]
        assert md["corrections_over_null_values"] == f["over_null"]
        assert md["expected_rows"] == md["wide_rows"] == f["rows"]
        assert md["cell_balance"] == 0 and md["first_differences"] == []

        unk = ev[(name, "unknown_channels")]
        assert unk.passed is False and unk.severity == dg.AssetCheckSeverity.WARN
        assert _md(unk)["unknown_channels"] == f["unknown"] == [
            {"channel": "/x/unknown", "rows": 2}, {"channel": "/y/unknown", "rows": 1}]
        assert _md(unk)["unknown_rows"] == 3

    md1 = _md(ev[(g1.asset_name, "reconciliation")])
    assert md1["null_values_by_reason"] == {"null_value": 1, "unparsable": 1}
    assert md1["corrections_nan"] == 0
    assert _md(ev[(g2.asset_name, "reconciliation")])["corrections_nan"] == 1

    # the ten emptiest channels of group 1 with their rates, from SQL's per-column counts
    per = f1["per_channel"]
    want = sorted(per.items(), key=lambda kv: (kv[1], kv[0]))[:10]
    table = _md(ev[(g1.asset_name, "null_fill_rate")])["emptiest_channels"]
    for ch, n in want:
        assert f"| `{ch}` | {n:,} | {100 * n / f1['rows']:.2f} |" in table
    assert [ch for ch, _ in want] == ["/silent", "/a", "/c", "/b"]

    cov = ev[(g1.asset_name, "channel_coverage")]
    cmd = _md(cov)
    assert cov.passed is False and cov.severity == dg.AssetCheckSeverity.WARN
    assert cmd["silent_channels"] == [ch for ch, n in per.items() if n == 0] == ["/silent"]
    assert cmd["channels_with_values"] == 3 and cmd["coverage_pct"] == 75.0
    assert ev[(g2.asset_name, "channel_coverage")].passed is True

    # the wide table itself is what the SQL reference + corrections says
    times, cells = wide_cells(conn, settings, g1, SHIP)
    assert times == {T0, T1, T2, T3, T4}
    assert cells == {(T0, "/a"): 10.0, (T0, "/b"): 42.0, (T0, "/c"): 11.0, (T1, "/b"): 7.0,
                     (T2, "/a"): 2.0, (T2, "/c"): 3.5, (T3, "/b"): 5.0, (T4, "/b"): 12.0}


def test_deleted_cell_and_row_fail_reconciliation_naming_them(crafted, conn):
    settings, catalog = crafted
    _materialise(settings, catalog)
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
    result = _materialise(settings, catalog)
    assert _evaluations(result)[(g1.asset_name, "reconciliation")].passed


def test_single_partition_run_records_per_partition_and_range_names_windows(crafted):
    settings, catalog = crafted
    with dg.instance_for_test() as instance:
        _materialise(settings, catalog, instance=instance)
        key = hour_key(SHIP, H1)
        single = run_wide(settings, catalog, partition_key=key, instance=instance)
        assert single.success
        ev = _evaluations(single)
        rec = ev[("wide_1_small", "reconciliation")]
        assert rec.partition == key
        assert _md(rec)["windows"] == [[SHIP, H1.isoformat(), END.isoformat()]]
        assert _md(rec)["narrow_rows"] == 3  # /a, /c at T2 and /b at T3
        check_key = dg.AssetCheckKey(dg.AssetKey("wide_1_small"), "reconciliation")
        history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
        done = [(r.partition, r.status.value) for r in history if r.status.value != "PLANNED"]
        assert (key, "SUCCEEDED") in done  # per partition from the single-partition run
        assert (None, "SUCCEEDED") in done  # the range run's result, without a partition


def test_checks_can_be_switched_off_and_thresholds_are_per_group(crafted):
    settings, catalog = crafted
    off = build_wide_assets(replace(settings, checks_in_runs=False), catalog)
    assert not list(off.check_specs)
    on = build_wide_assets(settings, catalog)
    spec = next(s for s in on.check_specs if s.name == "reconciliation")
    assert spec.blocking and "narrow" in (spec.description or "")
    env = Settings.from_env({"N2W_CHECK_MIN_FILL_PCT": "90, 2=30", "N2W_CHECK_MIN_COVERAGE_PCT": "70",
                             "N2W_CHECKS_IN_RUNS": "0"})
    assert not env.checks_in_runs
    th = Thresholds.from_settings(env)
    assert (th.fill(1), th.fill(2), th.coverage(1), th.coverage(2)) == (90.0, 30.0, 70.0, 70.0)
    with pytest.raises(ValueError, match="N2W_CHECK_MIN_FILL_PCT"):
        Settings.from_env({"N2W_CHECK_MIN_FILL_PCT": "2=abc"})


def test_on_demand_job_cli_and_pure_function_agree(crafted, conn, monkeypatch, capsys):
    settings, catalog = crafted
    _materialise(settings, catalog)
    outcomes = check_window(settings.database_url, settings, catalog, [SHIP], H0, END)
    assert [(o.group, o.name, o.passed) for o in outcomes] == [
        (1, "null_fill_rate", False), (1, "channel_coverage", False), (1, "reconciliation", True),
        (1, "unknown_channels", False), (2, "null_fill_rate", False), (2, "channel_coverage", True),
        (2, "reconciliation", True), (2, "unknown_channels", False),
    ]
    th = replace(settings, check_min_fill_pct=((0, 90.0), (1, 40.0)))
    fill = evaluate(conn, th, catalog.groups[:1], [(SHIP, H0, END)], names=["null_fill_rate"])
    assert fill[0].passed and fill[0].metadata["filled_pct"] == 40.0  # exactly at the minimum

    # the job the UI launches: a non-partitioned job of checks only, config = the window
    defs = build_definitions(settings)
    job = defs.resolve_job_def(CHECK_JOB)
    assert job.partitions_def is None
    with dg.instance_for_test() as instance:
        res = job.execute_in_process(
            run_config={"ops": {"n2w_window_checks": {"config": {
                "ship": SHIP, "start": H0.isoformat(), "end": END.isoformat()}}}},
            instance=instance,
        )
    assert res.success
    ev = _evaluations(res)
    assert set(ev) == {("wide_1_small", ON_DEMAND), ("wide_2_other", ON_DEMAND)}
    one = ev[("wide_1_small", ON_DEMAND)]
    md = _md(one)
    assert not one.passed and one.severity == dg.AssetCheckSeverity.WARN
    assert md["failed_checks"] == ["null_fill_rate", "channel_coverage", "unknown_channels"]
    assert md["reconciliation: narrow_rows"] == 8 and md["start"] == H0.isoformat()

    # the CLI prints the same verdicts; a broken cell makes it exit 1 and name the cell
    env = {"N2W_DATABASE_URL": settings.database_url, "N2W_SOURCE_SCHEMA": settings.source_schema,
           "N2W_TARGET_SCHEMA": settings.target_schema, "N2W_SHIPS": ",".join(settings.ships),
           "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["check", "--ship", SHIP, "--start", "2025-03-01", "--end", "2025-03-01T02:00"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    lines = [ln.split()[:4] for ln in out.splitlines() if ln.startswith(SHIP)]
    assert lines == [[SHIP, str(o.group), o.name, "PASS" if o.passed else o.severity] for o in outcomes]
    table = sql.Identifier(settings.target_schema, settings.table_name(SHIP, 1))
    conn.execute(sql.SQL('UPDATE {} SET "/a" = NULL WHERE created_time = %s').format(table), (T2,))
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert f"missing_cell at {T2.isoformat()} /a" in out


def test_in_run_check_counts_what_the_run_read_on_demand_counts_the_table(crafted, conn):
    """A row arriving after the run read its hour: the run's own check reconciles what it
    read (passes); the on-demand check counts the narrow table and names the new cell."""
    settings, catalog = crafted
    g1 = catalog.groups[0]
    rec = _evaluations(_materialise(settings, catalog))[(g1.asset_name, "reconciliation")]
    assert rec.passed
    assert _md(rec)["narrow_counted_from"].startswith("the rows this run read")
    assert _md(rec)["narrow_rows"] == _sql_figures(conn, settings, g1)["narrow_rows"]

    late = H1 + 5 * S
    insert_rows(conn, settings, [(SHIP, "/a", late, "Decimal", 4.5, None, None, None)])
    [rec] = evaluate(conn, settings, [g1], [(SHIP, H0, END)], names=["reconciliation"])
    assert not rec.passed
    assert rec.metadata["narrow_counted_from"] == "a pass over the narrow table"
    assert rec.metadata["cell_balance"] == 1
    assert rec.metadata["expected_rows"] == rec.metadata["wide_rows"] + 1
    assert [(d["time"], d["channel"], d["kind"]) for d in rec.metadata["first_differences"]] == [
        (late.isoformat(), None, "missing_row"), (late.isoformat(), "/a", "missing_cell")]
