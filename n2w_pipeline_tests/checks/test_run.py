"""Running the checks through real Dagster runs (in-run, checks only, the on-demand job), what
the UI then shows for them, the CLI and the pure function."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import dagster as dg
import pytest
from dagster._core.loader import LoadingContextForTest
from psycopg import sql

from n2w_pipeline import cli
from n2w_pipeline.checks import CHECK_NAMES, check_window, evaluate
from n2w_pipeline.definitions import build_definitions
from n2w_pipeline.defs.checks import CHECK_JOB, IN_RUN, ON_DEMAND, RECHECK, latest_windows
from n2w_pipeline.defs.partitions import wide_partitions
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline_tests.checks.helpers import END, H0, H1, SHIP, T2, S, evaluations, materialise, metadata
from n2w_pipeline_tests.helpers import hour_key, run_wide, table_digest
from n2w_pipeline_tests.test_wide_assets import insert_rows


def _latest_as_the_ui_reads_it(instance: dg.DagsterInstance, asset: str, check: str):
    """(latest record, its resolved status, whether it counts for the latest materialisation):
    for a non-partitioned check, what the asset graph and the Checks tab show (dagster-graphql's
    AssetCheck.executionForLatestMaterialization)."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)

    async def read():  # noqa: ANN202
        ctx = LoadingContextForTest(instance)
        rec = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        return rec, await rec.resolve_status(ctx), await rec.targets_latest_materialization(ctx)

    return asyncio.run(read())


def test_every_run_records_one_result_per_check_naming_its_windows(crafted):
    """A range run (backfill) and a single-partition run (realtime) both record one result per
    check, naming the windows checked; each is what the UI then shows as the check's status
    (with partitioned specs the range run's result sat beside per-partition records that the
    UI resolved to SKIPPED)."""
    settings, catalog = crafted
    specs = list(build_wide_assets(settings, catalog).check_specs)
    assert len(specs) == 8 and all(s.partitions_def is None for s in specs)
    with dg.instance_for_test() as instance:
        ranged = materialise(settings, catalog, instance=instance)
        rec = evaluations(ranged)[("wide_1_small", "reconciliation")]
        assert rec.partition is None and rec.passed
        assert metadata(rec)["windows"] == [[SHIP, H0.isoformat(), END.isoformat()]]
        assert metadata(rec)["checked"] == IN_RUN
        latest, status, current = _latest_as_the_ui_reads_it(instance, "wide_1_small", "reconciliation")
        assert (latest.run_id, latest.partition, status.value, current) == (
            ranged.run_id, None, "SUCCEEDED", True)

        single = run_wide(settings, catalog, partition_key=hour_key(SHIP, H1), instance=instance)
        assert single.success
        rec = evaluations(single)[("wide_1_small", "reconciliation")]
        assert rec.partition is None
        assert metadata(rec)["windows"] == [[SHIP, H1.isoformat(), END.isoformat()]]
        assert metadata(rec)["narrow_rows"] == 3  # /a, /c at T2 and /b at T3
        latest, status, current = _latest_as_the_ui_reads_it(instance, "wide_1_small", "reconciliation")
        assert (latest.run_id, status.value, current) == (single.run_id, "SUCCEEDED", True)
        # a failing check shows as failed, with its severity
        latest, status, current = _latest_as_the_ui_reads_it(instance, "wide_1_small", "null_fill_rate")
        assert (status.value, current, latest.evaluation.severity) == (
            "FAILED", True, dg.AssetCheckSeverity.WARN)

        check_key = dg.AssetCheckKey(dg.AssetKey("wide_1_small"), "reconciliation")
        history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
        assert sorted((r.run_id, r.partition, r.status.value) for r in history) == sorted(
            [(ranged.run_id, None, "SUCCEEDED"), (single.run_id, None, "SUCCEEDED")])


def test_checks_run_alone_recheck_the_latest_materialisation_counting_the_table(crafted, conn):
    """The Checks tab's Execute runs checks without their asset and without a partition: they
    are evaluated over the hours the asset's latest materialisation wrote, counting the narrow
    table (a row that arrived since fails reconciliation, naming it, and as a blocking check
    fails the run), and write nothing."""
    settings, catalog = crafted
    g1 = catalog.groups[0]
    table = settings.table_name(SHIP, g1.number)
    checks = dg.AssetSelection.checks(*[dg.AssetCheckKey(dg.AssetKey(g1.asset_name), n) for n in CHECK_NAMES])
    assets = build_wide_assets(settings, catalog)
    resources = {"n2w_db": N2WDatabase(url=settings.database_url)}
    with dg.instance_for_test() as instance:
        materialise(settings, catalog, instance=instance)
        late = H1 + 5 * S
        insert_rows(conn, settings, [(SHIP, "/a", late, "Decimal", 4.5, None, None, None)])
        before = table_digest(conn, settings.target_schema, table)
        res = dg.materialize([assets], instance=instance, selection=checks, resources=resources,
                             raise_on_error=False)
        assert not res.success  # reconciliation is blocking: its failure fails the run …
        assert not res.get_asset_materialization_events()  # … which wrote nothing
        assert table_digest(conn, settings.target_schema, table) == before
        ev = evaluations(res)
        assert set(ev) == {(g1.asset_name, n) for n in CHECK_NAMES}
        rec = ev[(g1.asset_name, "reconciliation")]
        assert not rec.passed and metadata(rec)["checked"] == RECHECK
        assert metadata(rec)["windows"] == [[SHIP, H0.isoformat(), END.isoformat()]]
        assert f"first difference missing_row at {late.isoformat()}" in (rec.description or "")
        latest, status, current = _latest_as_the_ui_reads_it(instance, g1.asset_name, "reconciliation")
        assert (latest.run_id, status.value, current) == (res.run_id, "FAILED", True)

        # after a single-partition run, its hour is what the checks re-read
        assert run_wide(settings, catalog, partition_key=hour_key(SHIP, H1), instance=instance).success
        assert latest_windows(instance, wide_partitions(settings), dg.AssetKey(g1.asset_name)) == [
            (SHIP, H1, END)]


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

    # the job the UI launches: non-partitioned, config = the window; it records the same four
    # checks under their own names, as the latest evaluation the UI shows
    defs = build_definitions(settings)
    job = defs.resolve_job_def(CHECK_JOB)
    assert job.partitions_def is None
    with dg.instance_for_test() as instance:
        ranged = materialise(settings, catalog, instance=instance)
        res = job.execute_in_process(
            run_config={"ops": {"n2w_window_checks": {"config": {
                "ship": SHIP, "start": H0.isoformat(), "end": END.isoformat()}}}},
            instance=instance,
        )
        assert res.success
        ev = evaluations(res)
        assert [(int(a.split("_")[1]), n, e.passed) for (a, n), e in ev.items()] == [
            (o.group, o.name, o.passed) for o in outcomes]
        one = ev[("wide_1_small", "reconciliation")]
        assert metadata(one)["checked"] == ON_DEMAND and metadata(one)["narrow_rows"] == 8
        assert metadata(one)["windows"] == [[SHIP, H0.isoformat(), END.isoformat()]]
        assert one.description.startswith(f"on demand, {SHIP} 2025-03-01 00:00..2025-03-01 02:00: ")
        assert ev[("wide_1_small", "channel_coverage")].severity == dg.AssetCheckSeverity.WARN
        latest, status, current = _latest_as_the_ui_reads_it(instance, "wide_1_small", "reconciliation")
        assert (latest.run_id, status.value, current) == (res.run_id, "SUCCEEDED", True)
        assert latest.run_id != ranged.run_id
        with pytest.raises(dg.DagsterInvalidConfigError):  # a ship is required
            job.execute_in_process(run_config={"ops": {"n2w_window_checks": {"config": {}}}},
                                   instance=instance)

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
