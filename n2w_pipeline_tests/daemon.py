"""The real Dagster daemon in a test: started on n2w's workspace, stopped by process group,
and the few waits and inserts the realtime tests that drive it share."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from n2w_pipeline.config import Settings
from n2w_pipeline.defs.realtime import SENSOR_NAME

REPO = Path(__file__).resolve().parent.parent


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``dagster-daemon run`` on n2w's workspace, in a process group of its own."""
    exe = Path(sys.executable).parent / "dagster-daemon"
    return subprocess.Popen([str(exe), "run", "-w", str(REPO / "workspace.yaml")], env=env, cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to its process group, SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait(what: str, check: Callable[[], object], timeout: float = 240.0) -> float:
    """Poll ``check`` until it is true; the monotonic time it was."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic()


def libpq_url(dagster_url: str) -> str:
    return dagster_url.replace("postgresql+psycopg2://", "postgresql://")


def sensor_ticked(dagster_url: str) -> bool:
    """The realtime sensor has finished a tick (the instance at ``dagster_url``)."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(libpq_url(dagster_url), autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM job_ticks WHERE type = 'SENSOR' AND status <> 'STARTED' "
                        "AND tick_body LIKE %s", (f'%"{SENSOR_NAME}"%',)).fetchone()
        return bool(row and row[0])
    return False


def insert_minute(conn: psycopg.Connection, settings: Settings, ship: str, minute: dt.datetime,
                  chans: list[str]) -> None:
    """One minute of 15 s Decimal samples of ``chans`` for ``ship``, in one statement."""
    from psycopg import sql

    table = sql.Identifier(settings.source_schema, settings.source_table)
    conn.execute(sql.SQL(
        "INSERT INTO {} (ship_id, data_channel_id, created_time, double_v, value_format) "
        "SELECT %s, c, t, random() * 100, 'Decimal' FROM unnest(%s::text[]) c CROSS JOIN "
        "generate_series(%s::timestamp, %s::timestamp + interval '45 s', interval '15 s') t").format(table),
        (ship, chans, minute, minute))
