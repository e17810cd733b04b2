"""Pieces of ``benchmarks/realtime.py``: the Dagster daemon, where a realtime delay goes
(from the instance's own records), and the backfill load of ``--under-load``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from n2w_pipeline.defs.realtime import SENSOR_NAME  # noqa: E402

# --------------------------------------------------------------------------- daemon


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "dagster-daemon"
    cmd = [str(exe), "run", "-w", str(ROOT / "workspace.yaml")]
    return subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the whole process group, SIGKILL whatever is left after ``grace``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _pg(dagster_url: str) -> str:
    return dagster_url.replace("postgresql+psycopg2://", "postgresql://")


def wait_first_tick(dagster_url: str, timeout: float = 180.0) -> float:
    """Seconds until the realtime sensor has completed its first tick (cursor set)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with psycopg.connect(_pg(dagster_url), autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM job_ticks WHERE type = 'SENSOR' AND status <> 'STARTED' "
                    "AND tick_body LIKE %s", (f'%"{SENSOR_NAME}"%',)).fetchone()
                if row and row[0]:
                    return time.time() - t0
        except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
            pass
        time.sleep(1)
    raise SystemExit(f"the realtime sensor did not tick within {timeout:.0f} s")


def wait_quiet(dagster_url: str, quiet: float = 15.0, timeout: float = 240.0) -> float:
    """Seconds until no run has been queued or running for ``quiet`` seconds: the daemon's
    start-up work (the day products' first ticks request runs of the last finished day) is
    over before the first measured minute, as on a daemon that has been up for a while."""
    t0 = time.time()
    since = time.time()
    while time.time() - t0 < timeout:
        with psycopg.connect(_pg(dagster_url), autocommit=True) as conn:
            (busy,) = conn.execute("SELECT count(*) FROM runs WHERE status IN "
                                   "('QUEUED', 'NOT_STARTED', 'STARTING', 'STARTED')").fetchone()
        if busy:
            since = time.time()
        elif time.time() - since >= quiet:
            return time.time() - t0
        time.sleep(1)
    return time.time() - t0


# --------------------------------------------------------------------------- where the time goes


@dataclass
class RunTimes:
    """A realtime run's timeline (epoch seconds) from the instance's run and event records."""

    ships: list[str]
    created: float  # the tick submitted it
    status: str
    events: dict[str, float] = field(default_factory=dict)  # event type → first timestamp

    def at(self, *kinds: str) -> float | None:
        found = [self.events[k] for k in kinds if k in self.events]
        return min(found) if found else None


EVENTS = ("PIPELINE_STARTING", "PIPELINE_START", "STEP_START", "ASSET_MATERIALIZATION", "STEP_SUCCESS",
          "PIPELINE_SUCCESS", "PIPELINE_FAILURE")


def sensor_runs(dagster_url: str) -> list[RunTimes]:
    """The realtime sensor's runs, with the times of the events that mark their phases."""
    with psycopg.connect(_pg(dagster_url), autocommit=True) as conn:
        rows = conn.execute(
            """SELECT r.run_id, r.status, extract(epoch FROM r.create_timestamp AT TIME ZONE 'UTC'), s.value
               FROM runs r JOIN run_tags t ON t.run_id = r.run_id
               LEFT JOIN run_tags s ON s.run_id = r.run_id AND s.key = 'n2w/realtime_ships'
               WHERE t.key = 'dagster/sensor_name' AND t.value = %s ORDER BY 3""", (SENSOR_NAME,)).fetchall()
        runs = {rid: RunTimes((ships or "").split(","), float(c), status) for rid, status, c, ships in rows}
        for rid, kind, ts in conn.execute(
                """SELECT run_id, dagster_event_type, min(extract(epoch FROM timestamp AT TIME ZONE 'UTC'))
                   FROM event_logs WHERE run_id = ANY(%s) AND dagster_event_type = ANY(%s)
                   GROUP BY 1, 2""", (list(runs), list(EVENTS))):
            runs[rid].events[kind] = float(ts)
    return sorted(runs.values(), key=lambda r: r.created)


PHASES = ("tick", "queue", "process start", "run set-up", "read+pivot+write")


def stages(committed: float, readable: float, ship: str, runs: list[RunTimes]) -> dict[str, float] | None:
    """Where one arrival's delay went, through the first run created after its commit that
    its ship triggered: commit → run created (the sensor: waiting for a tick and the tick),
    → dequeued and launched, → the run worker's process up (code loaded), → the step
    started (resources, executor), → its rows readable (the slice committed)."""
    for r in runs:
        if ship not in r.ships or r.created < committed - 0.5:
            continue
        starting, start, step = r.at("PIPELINE_STARTING"), r.at("PIPELINE_START"), r.at("STEP_START")
        if starting is None or start is None or step is None or readable < step:
            continue
        return {"tick": r.created - committed, "queue": starting - r.created,
                "process start": start - starting, "run set-up": step - start,
                "read+pivot+write": readable - step}
    return None


def tick_cadence(dagster_url: str) -> tuple[float, float, int]:
    """(median seconds between two realtime ticks, median tick duration, ticks) of the run."""
    with psycopg.connect(_pg(dagster_url), autocommit=True) as conn:
        bodies = [r[0] for r in conn.execute(
            "SELECT tick_body FROM job_ticks WHERE type = 'SENSOR' AND tick_body LIKE %s ORDER BY id",
            (f'%"{SENSOR_NAME}"%',))]
    starts, durations = [], []
    for body in bodies:
        data = json.loads(body)
        starts.append(float(data.get("timestamp") or 0))
        if data.get("end_timestamp"):
            durations.append(float(data["end_timestamp"]) - float(data["timestamp"]))
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return (statistics.median(gaps) if gaps else float("nan"),
            statistics.median(durations) if durations else float("nan"), len(starts))


# --------------------------------------------------------------------------- the load


class BackfillLoad:
    """``n2w backfill --all`` of one ship over its generated days, again and again, beside the
    realtime measurement (the CLI a user runs; its runs share the instance's pool)."""

    def __init__(self, env: dict[str, str], ship: str, start: dt.datetime, days: int, log: Path) -> None:
        self.cmd = [sys.executable, "-m", "n2w_pipeline.cli", "backfill", "--ship", ship, "--start",
                    f"{start:%Y-%m-%d}", "--end", f"{start + dt.timedelta(days=days):%Y-%m-%d}", "--all",
                    "--quiet"]
        self.env = {**os.environ, **env}
        self.log = log
        self.stop = threading.Event()
        self.passes: list[float] = []
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with self.log.open("w") as out:
            while not self.stop.is_set():
                t0 = time.time()
                self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
                if self.proc.wait() == 0:
                    self.passes.append(time.time() - t0)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc, grace=5)
        self.thread.join(timeout=30)
