"""Realtime runs in run workers loaded ahead of time (``n2w_pipeline/run_launcher.py``), through
the real daemon: they write exact tables; a worker killed in the middle of its run fails the run
at once and the sensor's retry completes the hour; a run terminated from another process (as
the UI does) is cancelled and completed the same way. Nothing is lost either way."""

from __future__ import annotations

import datetime as dt
import os
import signal
from dataclasses import replace
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.realtime import SENSOR_NAME
from n2w_pipeline.instance import dagster_env
from n2w_pipeline.run_launcher import PID_TAG
from n2w_pipeline.write import lock_hours
from n2w_pipeline_tests.daemon import insert_minute, sensor_ticked, start_daemon, stop, wait
from n2w_pipeline_tests.helpers import sql_reference, wide_cells
from n2w_pipeline_tests.ops_env import cli_env, dagster_database, tiny_lists

H0 = dt.datetime(2025, 3, 1, 6)
SHIP = "IMO9976903"


@pytest.fixture
def daemon_env(source: Settings, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """One ship, small lists, a Dagster instance database of its own; this process's
    ``DagsterInstance.get()`` is the daemon's instance."""
    settings = replace(source, ships=(SHIP,), slice_hours=1, channel_lists_dir=tiny_lists(tmp_path / "lists"))
    settings.migration_dir.mkdir(parents=True, exist_ok=True)
    with dagster_database(pg_url) as dagster_url:
        monkeypatch.setenv("N2W_DAGSTER_PG_URL", dagster_url)
        env = {**cli_env(settings, dagster_url, N2W_REALTIME="1", N2W_REALTIME_INTERVAL_SECONDS="1",
                         N2W_REALTIME_RETRY_SECONDS="1", PYTHONUNBUFFERED="1"), **dagster_env(settings)}
        for key in ("DAGSTER_HOME", "N2W_COMPUTE_LOG_DIR"):
            monkeypatch.setenv(key, env[key])
        yield settings, env


def _exact(conn: psycopg.Connection, settings: Settings, catalog, minutes: int) -> bool:  # noqa: ANN001
    end = H0 + dt.timedelta(minutes=minutes)
    try:
        return all(wide_cells(conn, settings, g, SHIP) == sql_reference(conn, settings, g, SHIP, H0, end)
                   and len(wide_cells(conn, settings, g, SHIP)[0]) == 4 * minutes for g in catalog.groups)
    except psycopg.errors.UndefinedTable:
        return False


def _realtime_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(reversed(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": SENSOR_NAME}))))


def _holding_run(conn: psycopg.Connection, instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    """The warm run waiting for the hour's lock, once it waits."""
    waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                           ).fetchone()[0]
    started = [r for r in _realtime_runs(instance) if r.status == dg.DagsterRunStatus.STARTED]
    return started[-1] if waiting and started and PID_TAG in started[-1].tags else None


def test_warm_run_workers_write_exact_tables_and_survive_kill_and_terminate(daemon_env, conn, tmp_path):
    settings, env = daemon_env
    catalog = load_catalog(settings.channel_lists_dir)
    chans = list(catalog.all_channels)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(env, log)
    holder = psycopg.connect(str(settings.database_url))
    try:
        with dg.DagsterInstance.get() as instance:
            wait("the realtime sensor's first tick", lambda: sensor_ticked(env["N2W_DAGSTER_PG_URL"]))
            # minute 1: the first realtime run starts the spares (it is launched Dagster's way)
            insert_minute(conn, settings, SHIP, H0, chans)
            wait("minute 1 in the wide tables", lambda: _exact(conn, settings, catalog, 1))
            # minute 2: a warm worker
            insert_minute(conn, settings, SHIP, H0 + dt.timedelta(minutes=1), chans)
            wait("minute 2 in the wide tables", lambda: _exact(conn, settings, catalog, 2))
            wait("the runs to finish", lambda: all(r.is_finished for r in _realtime_runs(instance)))
            warm = [r for r in _realtime_runs(instance) if PID_TAG in r.tags]
            assert warm, log.read_text()[-3000:]
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in warm), log.read_text()[-3000:]

            # minute 3: the warm worker killed while it waits inside its slice's transaction
            lock_hours(holder, SHIP, H0, H0 + dt.timedelta(hours=1))
            insert_minute(conn, settings, SHIP, H0 + dt.timedelta(minutes=2), chans)
            wait("a warm run inside the held hour", lambda: _holding_run(conn, instance))
            killed = _holding_run(conn, instance)
            os.kill(int(killed.tags[PID_TAG]), signal.SIGKILL)
            wait("the killed run to fail", lambda: instance.get_run_by_id(killed.run_id).status
                 == dg.DagsterRunStatus.FAILURE, timeout=30)
            holder.rollback()
            wait("minute 3 in the wide tables after the kill", lambda: _exact(conn, settings, catalog, 3))

            # minute 4: terminated from this process, as the UI's Terminate button does
            lock_hours(holder, SHIP, H0, H0 + dt.timedelta(hours=1))
            insert_minute(conn, settings, SHIP, H0 + dt.timedelta(minutes=3), chans)
            wait("a warm run inside the held hour", lambda: _holding_run(conn, instance))
            stopped = _holding_run(conn, instance)
            assert instance.run_launcher.terminate(stopped.run_id)
            holder.rollback()  # Dagster acts on the interrupt once the step's statement returns
            wait("the terminated run to be cancelled", lambda: instance.get_run_by_id(stopped.run_id).status
                 == dg.DagsterRunStatus.CANCELED, timeout=60)
            wait("minute 4 in the wide tables after the cancel", lambda: _exact(conn, settings, catalog, 4))
        assert daemon.poll() is None, log.read_text()[-3000:]
    finally:
        holder.close()
        stop(daemon)
