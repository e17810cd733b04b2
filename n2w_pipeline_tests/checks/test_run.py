"""Running the checks through real Dagster runs (in-run and the on-demand job), the CLI and
the pure function."""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
from psycopg import sql

from n2w_pipeline import cli
from n2w_pipeline.checks import check_window, evaluate
from n2w_pipeline.definitions import build_definitions
from n2w_pipeline.defs.checks import CHECK_JOB, ON_DEMAND
from n2w_pipeline_tests.checks.helpers import END, H0, H1, SHIP, T2, evaluations, materialise, metadata
from n2w_pipeline_tests.helpers import hour_key, run_wide


def test_single_partition_run_records_per_partition_and_range_names_windows(crafted):
    settings, catalog = crafted
    with dg.instance_for_test() as instance:
        materialise(settings, catalog, instance=instance)
        key = hour_key(SHIP, H1)
        single = run_wide(settings, catalog, partition_key=key, instance=instance)
        assert single.success
        ev = evaluations(single)
        rec = ev[("wide_1_small", "reconciliation")]
        assert rec.partition == key
        assert metadata(rec)["windows"] == [[SHIP, H1.isoformat(), END.isoformat()]]
        assert metadata(rec)["narrow_rows"] == 3  # /a, /c at T2 and /b at T3
        check_key = dg.AssetCheckKey(dg.AssetKey("wide_1_small"), "reconciliation")
        history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
        done = [(r.partition, r.status.value) for r in history if r.status.value != "PLANNED"]
        assert (key, "SUCCEEDED") in done  # per partition from the single-partition run
        assert (None, "SUCCEEDED") in done  # the range run's result, without a partition


def test_on_demand_job_cli_and_pure_function_agree(crafted, conn, monkeypatch, capsys):
    settings, catalog = crafted
    materialise(settings, catalog)
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
    ev = evaluations(res)
    assert set(ev) == {("wide_1_small", ON_DEMAND), ("wide_2_other", ON_DEMAND)}
    one = ev[("wide_1_small", ON_DEMAND)]
    md = metadata(one)
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
