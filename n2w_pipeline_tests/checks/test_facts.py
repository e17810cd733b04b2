"""Facts: the narrow side as the run read it (in-run) or counted from the table (on demand)."""

from __future__ import annotations

from n2w_pipeline.checks import evaluate
from n2w_pipeline_tests.checks.helpers import (
    END,
    H0,
    H1,
    SHIP,
    S,
    evaluations,
    materialise,
    metadata,
    sql_figures,
)
from n2w_pipeline_tests.test_wide_assets import insert_rows


def test_in_run_check_counts_what_the_run_read_on_demand_counts_the_table(crafted, conn):
    """A row arriving after the run read its hour: the run's own check reconciles what it
    read (passes); the on-demand check counts the narrow table and names the new cell."""
    settings, catalog = crafted
    g1 = catalog.groups[0]
    rec = evaluations(materialise(settings, catalog))[(g1.asset_name, "reconciliation")]
    assert rec.passed
    assert metadata(rec)["narrow_counted_from"].startswith("the rows this run read")
    assert metadata(rec)["narrow_rows"] == sql_figures(conn, settings, g1)["narrow_rows"]

    late = H1 + 5 * S
    insert_rows(conn, settings, [(SHIP, "/a", late, "Decimal", 4.5, None, None, None)])
    [rec] = evaluate(conn, settings, [g1], [(SHIP, H0, END)], names=["reconciliation"])
    assert not rec.passed
    assert rec.metadata["narrow_counted_from"] == "a pass over the narrow table"
    assert rec.metadata["cell_balance"] == 1
    assert rec.metadata["expected_rows"] == rec.metadata["wide_rows"] + 1
    assert [(d["time"], d["channel"], d["kind"]) for d in rec.metadata["first_differences"]] == [
        (late.isoformat(), None, "missing_row"), (late.isoformat(), "/a", "missing_cell")]
