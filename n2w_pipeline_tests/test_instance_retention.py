"""Retention of the Dagster instance: old runs go, or lose their log lines when they still hold
a partition's latest materialisation; what the UI and resume read is unchanged."""

import datetime as dt

import dagster as dg
import pytest

from n2w_pipeline.defs.instance_retention import prune_instance
from n2w_pipeline_tests.ops_env import dagster_database

parts = dg.StaticPartitionsDefinition(["a", "b"])


@dg.asset(partitions_def=parts)
def hourly(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    for i in range(5):
        context.log.info(f"progress line {i}")
    if context.run.tags.get("fail"):
        raise RuntimeError("boom")
    return dg.MaterializeResult(metadata={"rows": 1})


def events(instance: dg.DagsterInstance, run_id: str) -> list:
    return instance.all_logs(run_id)


def test_old_runs_are_deleted_or_slimmed_and_partition_status_stays(pg_url):
    with dagster_database(pg_url) as storage, dg.instance_for_test(
            overrides={"storage": {"postgres": {"postgres_url": storage}}}) as instance:
        def run(key: str, **tags: str) -> str:
            return dg.materialize([hourly], instance=instance, partition_key=key, tags=tags,
                                  raise_on_error=False).run_id

        superseded, latest_a, latest_b = run("a"), run("a"), run("b")
        failed = run("b", fail="1")
        before = set(instance.get_materialized_partitions(hourly.key))
        assert before == {"a", "b"}
        logs_before = len(events(instance, latest_a))

        # nothing is old enough yet
        assert prune_instance(instance, days=30)["deleted_runs"] == 0
        counts = prune_instance(instance, days=1, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))

        assert counts["deleted_runs"] == 2 and counts["kept_runs"] == 2
        assert instance.get_run_by_id(superseded) is None and instance.get_run_by_id(failed) is None
        for kept in (latest_a, latest_b):
            left = events(instance, kept)
            types = {e.dagster_event.event_type_value for e in left if e.dagster_event}
            assert {"ASSET_MATERIALIZATION", "PIPELINE_SUCCESS", "STEP_SUCCESS"} <= types  # RUN_SUCCESS
            assert not [e for e in left if "progress line" in e.user_message], "log lines must be gone"
        assert counts["deleted_log_events"] >= 2 * 5 and len(events(instance, latest_a)) < logs_before
        assert set(instance.get_materialized_partitions(hourly.key)) == before
        latest = instance.get_latest_materialization_event(hourly.key)
        assert latest is not None and latest.run_id in (latest_a, latest_b)
        # a second pass changes nothing
        again = prune_instance(instance, days=1, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
        assert again == {"deleted_runs": 0, "kept_runs": 2, "deleted_log_events": 0}


@pytest.mark.parametrize("value", ["0", "off"])
def test_retention_off_keeps_everything(value):
    from n2w_pipeline.config import Settings

    assert Settings.from_env({"N2W_INSTANCE_RETENTION_DAYS": value}).instance_retention_days is None
