"""``n2w dev``: the Dagster webserver and daemon on n2w's instance."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from n2w_pipeline.config import Settings
from n2w_pipeline.database import redact
from n2w_pipeline.instance import BOOKKEEPING_ENV, dagster_env, project_file


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    env = {**os.environ, **dagster_env(settings)}
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(project_file("workspace.yaml")),
           "-h", args.host, "-p", str(args.port)]
    print(f"n2w dev: Dagster UI on http://{args.host}:{args.port}")
    print(f"  data:     {redact(env['N2W_DATABASE_URL'])}")
    print(f"  instance: {redact(env['N2W_DAGSTER_PG_URL'])}  (DAGSTER_HOME={env['DAGSTER_HOME']})")
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return 130
    finally:
        if proc.poll() is None:
            _stop(proc)


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
