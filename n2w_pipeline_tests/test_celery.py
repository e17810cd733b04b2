"""N2W_EXECUTOR=celery for real: a Redis server and two `n2w worker` processes started
here, backfills whose steps run on the workers (their logs and the runs' events say
which), the n2w_database pool capping steps whatever the workers, a worker killed in the
middle of a step, and a broker that is down. Tables are checked against the SQL pivot.

Channel lists are cut to 40 channels per group: the subject is where steps run, not the
pivot at full width (test_backfill covers that), and small slices keep this module fast."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog, load_catalog
from n2w_pipeline.cli import main
from n2w_pipeline.commands._celery_backfill import BACKFILL_TAG, run_celery
from n2w_pipeline.commands._common import BackfillProgress, plan_runs
from n2w_pipeline.config import Settings
from n2w_pipeline.generate import generate
from n2w_pipeline.instance import BOOKKEEPING_ENV, DB_POOL, apply_dagster_env, sync_pool_limit
from n2w_pipeline.write import lock_hours
from n2w_pipeline_tests.conftest import REPO
from n2w_pipeline_tests.helpers import sql_reference, wide_cells

H0 = dt.datetime(2025, 3, 1, 0, 0)
HOUR = dt.timedelta(hours=1)
SHIPS = ("IMO9976903", "IMO9976915")
CHANNELS_PER_GROUP = 40
VISIBILITY_TIMEOUT = 20  # s: a step of a dead worker is redelivered after this (steps here: ~1-5 s)
STEP_EVENT = "Executing steps narrow_to_wide in celery worker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, timeout: float = 120.0):  # noqa: ANN001, ANN202
    """Poll ``predicate`` until it returns something truthy (a liveness guard, not a timing
    assertion: the timeout only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's; .ci/run installs it) on a free port."""
    import redis

    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    pidfile = folder / "redis.pid"
    try:
        subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                        "--save", "", "--dir", str(folder), "--pidfile", str(pidfile),
                        "--logfile", str(folder / "redis.log")], check=True)
    except FileNotFoundError:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    client = redis.Redis(host="127.0.0.1", port=port)
    _wait(lambda: _pings(client), "redis-server to answer", 20)
    yield f"redis://127.0.0.1:{port}/0"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    _wait(lambda: not _alive(pid), "redis-server to stop", 20)


def _pings(client) -> bool:  # noqa: ANN001
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Worker:
    name: str
    log: Path
    proc: subprocess.Popen | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Cluster:
    """Two `n2w worker` processes sharing the env of this test module."""

    env: dict[str, str]
    folder: Path
    settings: Settings
    catalog: ChannelCatalog
    workers: dict[str, Worker] = field(default_factory=dict)

    def start(self, name: str) -> Worker:
        w = Worker(name, self.folder / f"{name}-{uuid.uuid4().hex[:6]}.log")
        with open(w.log, "wb") as out:
            w.proc = subprocess.Popen(
                [sys.executable, "-m", "n2w_pipeline.cli", "worker", "--name", name, "--concurrency", "1"],
                env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.folder)
        self.workers[name] = w
        return w

    def wait_ready(self) -> None:
        for w in self.workers.values():
            _wait(lambda w=w: "ready." in w.text() or w.proc.poll() is not None, f"{w.name} to start")
            assert w.proc.poll() is None, w.text()[-2000:]

    def kill(self, name: str) -> None:
        """SIGKILL the worker's whole process group: main process and pool children, as a
        machine that dies would."""
        w = self.workers[name]
        os.killpg(w.proc.pid, signal.SIGKILL)
        w.proc.wait(10)

    def ensure_running(self) -> None:
        for name, w in list(self.workers.items()):
            if w.proc.poll() is not None:
                self.start(name)
        self.wait_ready()

    def stop(self) -> None:
        for w in self.workers.values():
            if w.proc.poll() is None:
                os.killpg(w.proc.pid, signal.SIGQUIT)  # cold shutdown: they are idle
        for w in self.workers.values():
            try:
                w.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait(10)


def _settings_env(s: Settings) -> dict[str, str]:
    return {
        "N2W_DATABASE_URL": s.database_url or "", "N2W_SOURCE_SCHEMA": s.source_schema,
        "N2W_TARGET_SCHEMA": s.target_schema, "N2W_SHIPS": ",".join(s.ships),
        "N2W_CHANNEL_LISTS": str(s.channel_lists_dir), "N2W_SLICE_HOURS": str(s.slice_hours),
        "N2W_RUN_HOURS": str(s.run_hours), "N2W_STATE_DIR": str(s.state_dir),
        "N2W_PARTITION_START": s.partition_start, "N2W_REALTIME": "0",
    }


@pytest.fixture(scope="module")
def cluster(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Data (2 ships x 6 hours, cut channel lists) in a fresh schema, a fresh Dagster
    instance database, this process's env set like the workers', and two workers."""
    folder = tmp_path_factory.mktemp("celery")
    lists = folder / "channel_lists"
    lists.mkdir()
    for f in sorted((REPO / "channel_lists").glob("*.txt")):
        ids = [ln for ln in f.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        (lists / f.name).write_text("\n".join(ids[:CHANNELS_PER_GROUP]) + "\n")
    tag = uuid.uuid4().hex[:10]
    schema, instance_db = f"t_celery_{tag}", f"n2w_test_dagster_{tag}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(instance_db)))
    storage = urlunsplit(urlsplit(pg_url)._replace(scheme="postgresql+psycopg2", path=f"/{instance_db}"))
    settings = Settings(database_url=pg_url, source_schema=schema, target_schema=schema, ships=SHIPS,
                        channel_lists_dir=lists, state_dir=folder / "state", slice_hours=1, run_hours=4,
                        realtime=False, executor="celery", celery_broker=redis_url,
                        celery_visibility_timeout=VISIBILITY_TIMEOUT)
    env = _settings_env(settings) | {
        "N2W_DAGSTER_PG_URL": storage, "N2W_EXECUTOR": "celery", "N2W_CELERY_BROKER": redis_url,
        "N2W_CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
    assert Settings.from_env(env) == settings
    catalog = load_catalog(lists)
    with psycopg.connect(pg_url, autocommit=True) as c:
        generate(c, settings, catalog, SHIPS, H0, H0 + 6 * HOUR, seed=19)
    cl = Cluster(env, folder, settings, catalog)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("DAGSTER_HOME", "N2W_COMPUTE_LOG_DIR", *BOOKKEEPING_ENV):
            mp.setenv(key, "")  # restored afterwards: apply_dagster_env sets them
        for key, value in env.items():
            mp.setenv(key, value)
        try:
            cl.start("w1")
            cl.start("w2")
            cl.wait_ready()
            yield cl
        finally:
            cl.stop()
            with psycopg.connect(pg_url, autocommit=True) as c:
                c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(instance_db)))


def _assert_equals_reference(cl: Cluster, ship: str, start: dt.datetime, end: dt.datetime) -> None:
    with psycopg.connect(cl.settings.database_url, autocommit=True) as conn:
        for g in cl.catalog.groups:
            ref_times, ref_cells = sql_reference(conn, cl.settings, g, ship, start, end)
            times, cells = wide_cells(conn, cl.settings, g, ship)
            inside = {t for t in times if start <= t < end}
            assert ref_cells and inside == ref_times, (ship, g.number)
            assert {k: v for k, v in cells.items() if start <= k[0] < end} == ref_cells, (ship, g.number)


def _step_records(instance: dg.DagsterInstance, run_id: str) -> list:
    return [r for r in instance.get_records_for_run(run_id, limit=10_000).records]


def _workers_of(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The Celery workers that picked up the run's step (dagster-celery's engine event)."""
    out = []
    for rec in _step_records(instance, run_id):
        e = rec.event_log_entry
        event = e.dagster_event
        if event and event.is_engine_event and STEP_EVENT in (event.message or ""):
            md = event.engine_event_data.metadata
            out.append(md["Celery worker"].value.split("@")[0])
    return out


def _run_ids(instance: dg.DagsterInstance) -> set[str]:
    return {r.run_id for r in instance.get_runs()}


def _new_runs(instance: dg.DagsterInstance, before: set[str]) -> list[dg.DagsterRun]:
    return [r for r in reversed(instance.get_runs()) if r.run_id not in before]


def test_backfill_steps_run_on_the_workers_capped_by_the_pool_and_equal_the_sql_pivot(cluster):
    """Two runs (2 ships x 2 hours) orchestrated at once as `n2w backfill --parallel 2` does,
    two idle workers, the pool n2w_database limited to 1. Every run's step ran on one of
    the workers (the run's engine event names it, the worker's log shows the step); the
    second step was submitted only after the first had ended — the slot is claimed by the
    run's orchestrator before the step goes to Celery and freed when the worker's result
    comes back (event-log order, no clocks); the bar, fed from the run logs, counted every
    ship-hour; no slot stays claimed; the tables equal the SQL pivot."""
    cl = cluster
    cl.ensure_running()
    settings = cl.settings
    runs = plan_runs(SHIPS, H0, H0 + 2 * HOUR, 2, ships_per_run=2)  # both ships x one hour, twice
    assert len(runs) == 2
    apply_dagster_env(settings)
    bar = io.StringIO()
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots(DB_POOL, 1)
        done: dict = {}
        try:
            run_celery(runs, 2, BackfillProgress(4, quiet=False, stream=bar),
                       lambda run, summary: done.update({run: summary}))
        finally:
            sync_pool_limit(instance)
        assert set(done) == set(runs)
        assert "4/4 ship-hours" in bar.getvalue()
        marks = []
        for run in runs:
            run_id = done[run]["run_id"]
            (worker,) = _workers_of(instance, run_id)
            log = cl.workers[worker].text()
            assert f"run {run_id} step narrow_to_wide started" in log
            assert f"run {run_id} step narrow_to_wide ended: step succeeded" in log
            recs = _step_records(instance, run_id)
            submit = next(r.storage_id for r in recs
                          if "Submitting celery task" in (r.event_log_entry.user_message or ""))
            success = next(r.storage_id for r in recs if r.event_log_entry.dagster_event_type
                           == dg.DagsterEventType.STEP_SUCCESS)
            marks.append((submit, success))
        first, second = sorted(marks)
        assert second[0] > first[1], "the second step was submitted before the first one ended"
        assert instance.event_log_storage.get_concurrency_info(DB_POOL).active_slot_count == 0
        print("steps ran on:", [_workers_of(instance, done[r]["run_id"]) for r in runs])
    for ship in SHIPS:
        _assert_equals_reference(cl, ship, H0, H0 + 2 * HOUR)


def _hours_in_tables(cl: Cluster, ship: str, start: dt.datetime, end: dt.datetime
                     ) -> list[dict[dt.datetime, int]]:
    """Per wide table of ``ship``: rows per hour in [start, end)."""
    with psycopg.connect(cl.settings.database_url, autocommit=True) as conn:
        out = []
        for g in cl.catalog.groups:
            table = sql.Identifier(cl.settings.target_schema, cl.settings.table_name(ship, g.number))
            exists = conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone()[0]
            rows = conn.execute(sql.SQL("SELECT date_trunc('hour', created_time), count(*) FROM {} "
                                        "WHERE created_time >= %s AND created_time < %s GROUP BY 1"
                                        ).format(table), (start, end)).fetchall() if exists else []
            out.append(dict(rows))
        return out


def _waiting_on_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                           "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                           ).fetchone()
        return bool(row and row[0])


def test_a_worker_killed_mid_step_leaves_whole_slices_and_the_step_is_redelivered(cluster):
    """`n2w backfill` (the command) of 1 ship x 02:00-06:00 in 1-hour slices; hour 05:00 is
    locked by the test, so the step commits 02:00-04:00 and waits. Its worker is killed
    with its whole process group: the tables then hold whole hours only (each hour in all
    three tables, or in none). The unacknowledged step goes back to the queue after the visibility timeout,
    the other worker runs it again, and the backfill finishes by itself: tables equal the
    SQL pivot, both workers appear in the run's log, no pool slot stays claimed."""
    cl = cluster
    cl.ensure_running()
    ship, start, end = SHIPS[0], H0 + 2 * HOUR, H0 + 6 * HOUR
    url = cl.settings.database_url
    holder = psycopg.connect(url)
    lock_hours(holder, ship, end - HOUR, end)  # held in an open transaction
    apply_dagster_env(cl.settings)
    with dg.DagsterInstance.get() as instance:
        before = _run_ids(instance)
    cmd = [sys.executable, "-m", "n2w_pipeline.cli", "backfill", "--ship", ship, "--start",
           start.isoformat(), "--end", end.isoformat(), "--quiet"]
    backfill = subprocess.Popen(cmd, env={**os.environ, **cl.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=cl.folder)
    try:
        _wait(lambda: _waiting_on_lock(url)
              and all(len(h) == 3 for h in _hours_in_tables(cl, ship, start, end)),
              "the step to commit three slices and wait for the locked hour")
        with dg.DagsterInstance.get() as instance:
            (run,) = _new_runs(instance, before)
        started = f"run {run.run_id} step narrow_to_wide started"
        victim = _wait(lambda: next((n for n, w in cl.workers.items() if started in w.text()), None),
                       "the worker running the step to log it")
        cl.kill(victim)
        # whole slices only: each committed hour is in every table with the reference's rows
        hours = _hours_in_tables(cl, ship, start, end)
        assert all(set(h) == {start, start + HOUR, start + 2 * HOUR} for h in hours), hours
        with psycopg.connect(url, autocommit=True) as conn:
            for g, per_hour in zip(cl.catalog.groups, hours, strict=True):
                ref_times, _ = sql_reference(conn, cl.settings, g, ship, start, end - HOUR)
                for h, n in per_hour.items():
                    assert n == sum(1 for t in ref_times if h <= t < h + HOUR)
        holder.rollback()
        out, _ = backfill.communicate(timeout=VISIBILITY_TIMEOUT + 120)
    except BaseException:
        if backfill.poll() is None:
            backfill.kill()
        print(backfill.communicate()[0][-3000:])
        for w in cl.workers.values():
            print(w.name, w.text()[-3000:])
        raise
    finally:
        holder.close()
    assert backfill.returncode == 0, out
    _assert_equals_reference(cl, ship, start, end)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert BACKFILL_TAG in run.tags
        survivor = next(n for n in cl.workers if n != victim)
        ran_on = _workers_of(instance, run.run_id)
        assert ran_on[0] == victim and survivor in ran_on[1:], ran_on
        assert instance.event_log_storage.get_concurrency_info(DB_POOL).active_slot_count == 0


def test_under_celery_only_runs_of_the_wide_table_step_leave_the_machine(settings, monkeypatch):
    """N2W_EXECUTOR=celery: the code location's executor sends a run to Celery only when it
    holds the wide-table step; runs of every other asset (corrections, exports, rollups) and
    the check job keep Dagster's default executor. The realtime sensor's run config is valid
    under both settings."""
    from dataclasses import replace

    from n2w_pipeline.definitions import build_definitions
    from n2w_pipeline.defs.executor import runs_wide_step, step_run_config
    from n2w_pipeline.defs.wide_assets import build_wide_assets

    monkeypatch.setenv("N2W_CELERY_BROKER", "redis://127.0.0.1:1/0")  # never contacted here
    celery = replace(settings, executor="celery", celery_broker="redis://127.0.0.1:1/0")
    wide = build_wide_assets(settings, load_catalog(settings.channel_lists_dir))
    for s, executor in ((settings, "multi_or_in_process_executor"), (celery, "n2w")):
        defs = build_definitions(s)
        everything = defs.resolve_implicit_global_asset_job_def()
        job = everything.get_subset(asset_selection=set(wide.keys),
                                    asset_check_selection=set(wide.check_keys))
        assert job.executor_def.name == executor
        assert dg.validate_run_config(job, step_run_config(s))
        assert runs_wide_step(job)
    others = [a for a in defs.resolve_asset_graph().assets_defs
              if a.is_executable and a.is_materializable and not set(a.keys) & set(wide.keys)]
    assert len(others) >= 3  # corrections, exports, rollups
    for a in others:
        job = everything.get_subset(asset_selection=set(a.keys), asset_check_selection=set(a.check_keys))
        assert not runs_wide_step(job), a.keys
    assert not runs_wide_step(defs.resolve_job_def("n2w_check_window"))
    # N2W_CELERY_QUEUE routes the step (dagster-celery's queue tag); `n2w worker` listens there
    queued = Settings.from_env({"N2W_EXECUTOR": "celery", "N2W_CELERY_BROKER": "redis://x/0",
                                "N2W_CELERY_QUEUE": "n2w_wide",
                                "N2W_CHANNEL_LISTS": str(s.channel_lists_dir)})
    step = build_wide_assets(queued, load_catalog(s.channel_lists_dir)).op
    assert step.tags["dagster-celery/queue"] == "n2w_wide"
    assert "dagster-celery/queue" not in wide.op.tags  # the default queue, `dagster`


def test_broker_down_at_start_is_one_clear_line(cluster, monkeypatch, capsys):
    """`n2w backfill` and `n2w worker` with nothing listening at the broker URL: exit with
    one line naming the variable, the URL and the reason, no traceback."""
    down = f"redis://:secret@127.0.0.1:{_free_port()}/0"
    monkeypatch.setenv("N2W_CELERY_BROKER", down)
    for argv in (["backfill", "--start", "2025-03-01", "--end", "2025-03-01T01:00", "--all"], ["worker"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        message = str(exc.value)
        assert len(message.splitlines()) == 1, message
        assert "N2W_CELERY_BROKER" in message and "not reachable" in message and "127.0.0.1" in message
        assert "secret" not in message
    assert "Traceback" not in capsys.readouterr().err


def test_a_failed_celery_run_prints_one_line_and_no_dagster_log(cluster):
    """`n2w backfill` whose run fails on a worker (a trigger rejects the rows): the terminal
    shows n2w's one-line reason and how to resume, no stack trace and no Dagster log line."""
    from n2w_pipeline.materialize import prepare_tables

    cl = cluster
    cl.ensure_running()
    s, ship = cl.settings, SHIPS[1]
    start, end = H0 + 4 * HOUR, H0 + 6 * HOUR
    table = sql.Identifier(s.target_schema, s.table_name(ship, cl.catalog.groups[0].number))
    fn = sql.Identifier(s.target_schema, "n2w_test_reject_celery")
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        prepare_tables(conn, s, cl.catalog.groups, [ship], (start, end))
        conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                             "$$BEGIN RAISE EXCEPTION 'simulated failure'; END$$").format(fn))
        conn.execute(sql.SQL("CREATE TRIGGER reject_celery BEFORE INSERT ON {} FOR EACH ROW "
                             "WHEN (NEW.created_time >= {}) EXECUTE FUNCTION {}()").format(
            table, sql.Literal(start), fn))
    try:
        out = subprocess.run([sys.executable, "-m", "n2w_pipeline.cli", "backfill", "--ship", ship, "--start",
                              start.isoformat(), "--end", end.isoformat()], env={**os.environ, **cl.env},
                             capture_output=True, text=True, cwd=cl.folder, timeout=VISIBILITY_TIMEOUT + 120)
    finally:
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS reject_celery ON {}").format(table))
    assert out.returncode == 1, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("[")]  # minus the bar
    assert "Traceback" not in out.stderr and " - dagster - " not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 2 and "simulated failure" in lines[0] and "resume" in lines[1], lines
