"""``n2w dev``: the Dagster webserver and daemon on n2w's instance."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from n2w_pipeline.config import Settings
from n2w_pipeline.database import redact, require_reachable
from n2w_pipeline.instance import BOOKKEEPING_ENV, dagster_env, project_file, sync_pool_limit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dev",
        help="start the Dagster UI and daemon on n2w's PostgreSQL",
        description="Run `dagster dev` with the n2w code location (workspace.yaml) and the "
        "instance in dagster.yaml: runs and events in PostgreSQL (the embedded server's "
        "`dagster` database by default), the run queue and the n2w_database pool as configured "
        "there, and " + ", ".join(BOOKKEEPING_ENV) + " set. Stop with Ctrl-C.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    rt = p.add_mutually_exclusive_group()
    rt.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                    help="start the realtime sensor (narrow_realtime), even if it was stopped in the UI")
    rt.add_argument("--no-realtime", dest="realtime", action="store_false",
                    help="stop the realtime sensor, even if it was started in the UI. Without either "
                    "flag the sensor runs unless N2W_REALTIME=0 or it was stopped in the UI "
                    "(Dagster remembers a UI toggle)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    env = {**os.environ, **dagster_env(settings)}
    require_reachable(env["N2W_DAGSTER_PG_URL"], "the Dagster instance's database (N2W_DAGSTER_PG_URL)")
    _sync_pool(env)
    if args.realtime is not None:
        env["N2W_REALTIME"] = "1" if args.realtime else "0"
        _set_realtime(env, args.realtime)
    if args.realtime or (args.realtime is None and settings.realtime):
        _check_arrival_index(settings, settings.source_url or env["N2W_DATABASE_URL"])
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(project_file("workspace.yaml")),
           "-h", args.host, "-p", str(args.port)]
    print("\n".join(banner(settings, env, args.host, args.port)))
    sys.stdout.flush()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # Dagster runs in its own session: take it down too
        signal.signal(sig, _exit_on_signal)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return 130
    finally:
        if proc.poll() is None:
            _stop(proc)


def banner(settings: Settings, env: dict[str, str], host: str, port: int) -> list[str]:
    """What `n2w dev` prints at start: where the UI is and the databases, passwords masked."""
    lines = [f"n2w dev: Dagster UI on http://{host}:{port}",
             f"  data:     {redact(env['N2W_DATABASE_URL'])}"]
    if settings.source_url:
        lines.append(f"  source:   {redact(settings.source_url)}  (the narrow table)")
    if settings.source_primary_url:
        lines.append(f"  writers:  {redact(settings.source_primary_url)}  (the narrow table's primary)")
    lines.append(f"  instance: {redact(env['N2W_DAGSTER_PG_URL'])}  (DAGSTER_HOME={env['DAGSTER_HOME']})")
    return lines


def _set_realtime(env: dict[str, str], on: bool) -> None:
    """Start/stop the sensor in the instance (a UI toggle is stored there and beats the
    N2W_REALTIME default): ``dagster sensor start|stop``, a few seconds of code loading."""
    from n2w_pipeline.defs.realtime import SENSOR_NAME

    verb = "start" if on else "stop"
    cmd = [sys.executable, "-m", "dagster", "sensor", verb, SENSOR_NAME,
           "-w", str(project_file("workspace.yaml"))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    state = "running" if on else "stopped"
    if done.returncode == 0 or "already" in (done.stdout + done.stderr):
        print(f"  realtime: sensor {SENSOR_NAME} {state}")
    else:
        print(f"  realtime: could not {verb} {SENSOR_NAME}: {(done.stderr or done.stdout).strip()[-300:]}")


def _check_arrival_index(settings: Settings, url: str) -> None:
    """The sensor needs an index on the arrival column. On the embedded server n2w
    builds it; on your own database it prints the DDL (a billion-row build is yours to
    schedule), and the sensor skips its ticks with the same message until it exists."""
    import psycopg

    from n2w_pipeline.realtime.index import arrival_index_problem, ensure_arrival_index

    with psycopg.connect(url, autocommit=True) as conn:
        problem = arrival_index_problem(conn, settings)
        if problem is None or "does not exist" in problem:
            return
        if settings.database_url or settings.source_url:
            print(f"  realtime: {problem}")
            return
        print("  realtime: building the arrival index on the embedded database ...")
        ensure_arrival_index(conn, settings)


def _exit_on_signal(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP: leave through ``run``'s ``finally`` (which stops Dagster), once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _sync_pool(env: dict[str, str]) -> None:
    """Set the n2w_database pool limit in the instance before Dagster starts."""
    import dagster as dg

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with dg.DagsterInstance.get() as instance:
            limit = sync_pool_limit(instance)
        print(f"  pool n2w_database: {limit} concurrent wide-table steps")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _stop(proc: subprocess.Popen) -> None:
    """dagster dev can outlive SIGTERM for a while: stop the whole group, then kill."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
