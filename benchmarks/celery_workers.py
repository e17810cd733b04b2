"""Celery workers benchmark: `n2w backfill` wall time with 1 and 2 `n2w worker` processes,
beside Dagster's default executor, in one run on the same data.

    .venv/bin/n2w bench celery_workers              # 2 ships x 24 hours (~12M narrow rows)
    .venv/bin/n2w bench celery_workers --hours 6    # a quick look

Generates 2 ships of the reference shape into the scratch schema ``n2w_bench_fleet``
(reused when present), starts its own redis-server on a free port, and for each case
writes fresh wide tables (schema ``n2w_bench_celery``) with `n2w backfill --all` (one run
per ship, ``--parallel 2``): the default executor (steps in two local processes), then
N2W_EXECUTOR=celery with one worker and with two (``--concurrency 1`` each), and reports
where each run's step executed (the run's dagster-celery engine event). Dagster runs go to
the benchmark instance database ``n2w_bench_dagster``. On one machine the workers share its
cores with PostgreSQL and the launcher: the figures show the hand-off's cost and the
ceiling of one machine, not a fleet of workers (see ``scale_model.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import backfill as bf  # noqa: E402

from n2w_pipeline.channels import load_catalog  # noqa: E402
from n2w_pipeline.config import Settings  # noqa: E402
from n2w_pipeline.database import database_url  # noqa: E402
from n2w_pipeline.generate import generate  # noqa: E402

SOURCE, TARGET = "n2w_bench_fleet", "n2w_bench_celery"
SHIPS = ("IMO9976903", "IMO9976915")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_fleet(url: str, settings: Settings, hours: int) -> int:
    catalog = load_catalog(settings.channel_lists_dir)
    end = bf.START + dt.timedelta(hours=hours)
    with psycopg.connect(url, autocommit=True) as conn:
        src = sql.Identifier(*settings.source_qualified)
        have = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (src.as_string(conn),)).fetchone()[0]
        probe = sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND created_time >= %s "
                        "AND created_time < %s").format(src)
        if not have or any(conn.execute(probe, (s, end - bf.HOUR, end)).fetchone()[0] == 0 for s in SHIPS):
            t0 = time.perf_counter()
            n = generate(conn, settings, catalog, SHIPS, bf.START, end, seed=7)
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(src))
            print(f"generated {n:,} narrow rows in {time.perf_counter() - t0:.0f} s")
        total = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_time >= %s AND created_time < %s")
                             .format(src), (bf.START, end)).fetchone()[0]
    return int(total)


class Redis:
    def __init__(self, folder: Path) -> None:
        self.port, self.pidfile = _free_port(), folder / "redis.pid"
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "yes",
                        "--save", "", "--dir", str(folder), "--pidfile", str(self.pidfile),
                        "--logfile", str(folder / "redis.log")], check=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(100):
            if self.pidfile.exists():
                break
            time.sleep(0.1)

    def stop(self) -> None:
        if self.pidfile.exists():
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)


def start_workers(n: int, env: dict[str, str], folder: Path) -> list[tuple[subprocess.Popen, Path]]:
    out = []
    for i in range(n):
        log = folder / f"worker{i + 1}-{n}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "n2w_pipeline.cli", "worker", "--name",
                                     f"bench{i + 1}", "--concurrency", "1"], env=env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        out.append((proc, log))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if all("ready." in log.read_text(errors="replace") for _, log in out):
            return out
        if any(p.poll() is not None for p, _ in out):
            break
        time.sleep(0.2)
    stop_workers(out)
    raise SystemExit("workers did not start: see " + ", ".join(str(log) for _, log in out))


def stop_workers(workers: list[tuple[subprocess.Popen, Path]]) -> None:
    for proc, _ in workers:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGQUIT)
    for proc, _ in workers:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def fresh_target(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(TARGET)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(TARGET)))
        conn.execute("CHECKPOINT")


def backfill(env: dict[str, str], hours: int) -> tuple[float, float]:
    """Wall time and CPU-seconds of the `n2w backfill` process tree (the launcher's cost)."""
    import resource

    end = bf.START + dt.timedelta(hours=hours)
    cmd = [sys.executable, "-m", "n2w_pipeline.cli", "backfill", "--all", "--quiet", "--parallel", "2",
           "--start", bf.START.isoformat(), "--end", end.isoformat()]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"backfill failed:\n{done.stdout}\n{done.stderr}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def run_facts(since: float) -> tuple[list[str], list[float]]:
    """Where each run's step executed (dagster-celery's engine event) and each run's time
    outside its step: (step start - run start) + (run end - step end), from the event log."""
    import dagster as dg

    where, around = [], []
    kinds = {dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
             dg.DagsterEventType.RUN_SUCCESS}
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs(filters=dg.RunsFilter(created_after=dt.datetime.fromtimestamp(since))):
            at: dict = {}
            for rec in instance.get_records_for_run(run.run_id, limit=100_000).records:
                ev = rec.event_log_entry.dagster_event
                if ev is None:
                    continue
                if ev.event_type in kinds:
                    at[ev.event_type] = rec.event_log_entry.timestamp  # the last one: a rerun's
                if ev.is_engine_event and "in celery worker" in (ev.message or ""):
                    where.append(ev.engine_event_data.metadata["Celery worker"].value.split("@")[0])
            if len(at) == len(kinds):
                around.append(at[dg.DagsterEventType.STEP_START] - at[dg.DagsterEventType.RUN_START]
                              + at[dg.DagsterEventType.RUN_SUCCESS] - at[dg.DagsterEventType.STEP_SUCCESS])
    return sorted(where), around


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=int, default=24, help="hours per ship (default 24; one run per ship)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the three cases, in rotating order")
    args = p.parse_args()
    base = Settings.from_env()
    settings = replace(base, source_schema=SOURCE, target_schema=TARGET, ships=SHIPS,
                       partition_start="2025-01-01-00:00", run_hours=args.hours)
    url = database_url(settings)
    bf.bench_dagster_env(base)  # N2W_DAGSTER_PG_URL → n2w_bench_dagster, DAGSTER_HOME etc.
    rows = ensure_fleet(url, settings, args.hours)
    print(f"data: {rows:,} narrow rows, {len(SHIPS)} ships x {args.hours} h, runs of {args.hours} h")
    folder = Path(tempfile.mkdtemp(prefix="n2w-bench-celery-", dir="/tmp"))
    redis = Redis(folder)
    env = {**os.environ, "N2W_DATABASE_URL": url, "N2W_SOURCE_SCHEMA": SOURCE, "N2W_TARGET_SCHEMA": TARGET,
           "N2W_SHIPS": ",".join(SHIPS), "N2W_RUN_HOURS": str(args.hours), "N2W_REALTIME": "0",
           "N2W_PARTITION_START": settings.partition_start, "N2W_CELERY_BROKER": redis.url}
    env.pop("N2W_EXECUTOR", None)
    results = []
    try:
        cases = [("default executor, --parallel 2", 0), ("celery, 1 worker", 1), ("celery, 2 workers", 2)]
        order = [cases[(i + r) % len(cases)] for r in range(args.repeat) for i in range(len(cases))]
        for name, workers in order:  # rounds in rotating order: a busy minute hits each case
            fresh_target(url)
            case_env = dict(env, N2W_EXECUTOR="celery") if workers else env
            running = start_workers(workers, case_env, folder) if workers else []
            try:
                since = time.time()
                wall, launcher_cpu = backfill(case_env, args.hours)
                ran, around = run_facts(since)
            finally:
                stop_workers(running)
            results.append({"case": name, "workers": workers, "seconds": wall, "rows": rows,
                            "rows_per_s": rows / wall, "steps_on": ran, "outside_step_s": around,
                            "launcher_cpu_s": launcher_cpu})
            outside = ", ".join(f"{x:.1f}" for x in around)
            where = ", ".join(ran) or "local processes"
            print(f"  {name:<34} {wall:>7.1f} s {rows / wall:>12,.0f} rows/s   `n2w backfill` "
                  f"{launcher_cpu:.1f} CPU-s   a run outside its step: {outside} s   steps on: {where}",
                  flush=True)
    finally:
        redis.stop()
    shutil.rmtree(folder, ignore_errors=True)  # worker and Redis logs; kept when a case fails
    if args.repeat > 1:
        print("summary (wall s: min / median / max):")
        for name, _ in cases:
            walls = sorted(r["seconds"] for r in results if r["case"] == name)
            print(f"  {name:<34} {walls[0]:>7.1f} / {walls[len(walls) // 2]:>7.1f} / {walls[-1]:>7.1f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"celery_workers-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"rows": rows, "hours": args.hours, "results": results}, indent=2))
    print(f"written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
