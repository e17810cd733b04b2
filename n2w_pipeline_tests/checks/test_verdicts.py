"""Verdicts: every figure on the crafted dataset against SQL, and the per-group thresholds."""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
import pytest

from n2w_pipeline.checks import Thresholds
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline_tests.checks.helpers import (
    END,
    H0,
    SHIP,
    T0,
    T1,
    T2,
    T3,
    T4,
    evaluations,
    materialise,
    metadata,
    sql_figures,
)
from n2w_pipeline_tests.helpers import wide_cells


def test_every_figure_matches_sql_on_crafted_data(crafted, conn):
    settings, catalog = crafted
    result = materialise(settings, catalog)
    ev = evaluations(result)
    assert len(ev) == 8  # 4 checks × 2 groups, all in the run
    g1, g2 = catalog.groups

    # the crafted numbers by hand, and the same from SQL
    f1, f2 = sql_figures(conn, settings, g1), sql_figures(conn, settings, g2)
    assert (f1["rows"], f1["cells"], f1["narrow_rows"], f1["nulls"]) == (5, 8, 8, 2)
    assert (f1["corrections"], f1["over_narrow"], f1["over_null"], f1["adjustment"]) == (3, 2, 1, 2)
    assert (f2["rows"], f2["cells"], f2["narrow_rows"], f2["nulls"], f2["adjustment"]) == (3, 1, 2, 1, 0)

    for g, f in ((g1, f1), (g2, f2)):
        name = g.asset_name
        fill = metadata(ev[(name, "null_fill_rate")])
        slots = f["rows"] * len(g.channels)
        assert fill["filled_cells"] == f["cells"] and fill["cell_slots"] == slots
        assert fill["filled_pct"] == round(100 * f["cells"] / slots, 3)
        assert ev[(name, "null_fill_rate")].passed is False  # 40 % and 33 % < 90 %
        assert ev[(name, "null_fill_rate")].severity == dg.AssetCheckSeverity.WARN
        assert fill["ships"] == [SHIP]
        assert fill["windows"] == [[SHIP, H0.isoformat(), END.isoformat()]]

        rec = ev[(name, "reconciliation")]
        md = metadata(rec)
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
        assert metadata(unk)["unknown_channels"] == f["unknown"] == [
            {"channel": "/x/unknown", "rows": 2}, {"channel": "/y/unknown", "rows": 1}]
        assert metadata(unk)["unknown_rows"] == 3

    md1 = metadata(ev[(g1.asset_name, "reconciliation")])
    assert md1["null_values_by_reason"] == {"null_value": 1, "unparsable": 1}
    assert md1["corrections_nan"] == 0
    assert metadata(ev[(g2.asset_name, "reconciliation")])["corrections_nan"] == 1

    # the ten emptiest channels of group 1 with their rates, from SQL's per-column counts
    per = f1["per_channel"]
    want = sorted(per.items(), key=lambda kv: (kv[1], kv[0]))[:10]
    table = metadata(ev[(g1.asset_name, "null_fill_rate")])["emptiest_channels"]
    for ch, n in want:
        assert f"| `{ch}` | {n:,} | {100 * n / f1['rows']:.2f} |" in table
    assert [ch for ch, _ in want] == ["/silent", "/a", "/c", "/b"]

    cov = ev[(g1.asset_name, "channel_coverage")]
    cmd = metadata(cov)
    assert cov.passed is False and cov.severity == dg.AssetCheckSeverity.WARN
    assert cmd["silent_channels"] == [ch for ch, n in per.items() if n == 0] == ["/silent"]
    assert cmd["channels_with_values"] == 3 and cmd["coverage_pct"] == 75.0
    assert ev[(g2.asset_name, "channel_coverage")].passed is True

    # the wide table itself is what the SQL reference + corrections says
    times, cells = wide_cells(conn, settings, g1, SHIP)
    assert times == {T0, T1, T2, T3, T4}
    assert cells == {(T0, "/a"): 10.0, (T0, "/b"): 42.0, (T0, "/c"): 11.0, (T1, "/b"): 7.0,
                     (T2, "/a"): 2.0, (T2, "/c"): 3.5, (T3, "/b"): 5.0, (T4, "/b"): 12.0}


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
