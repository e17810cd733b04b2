"""Scaling model: how long a fleet-year of backfill takes with 1-64 Celery workers, and what
limits it (the workers, the database server's CPU for COPY out and COPY in, its write
bandwidth, the network, connections, the launcher).

    .venv/bin/n2w bench scale_model                 # the model, from the figures below
    .venv/bin/n2w bench scale_model --measure       # measure the per-run figures here first
    .venv/bin/n2w bench scale_model --db-cores 32 --source-cores 16   # a replica as source

``--measure`` runs one ship-window of the reference shape (``benchmarks/backfill.py``'s
scratch schema ``n2w_bench``, generated if missing) through ``materialize_window`` — the
body of the wide-table step a worker runs — and reads, around it and around the server
alone producing the same extraction (``COPY … TO '/dev/null'``): wall time, this
process's CPU, the PostgreSQL server's CPU (its processes, from /proc), WAL written and
table bytes, and the most data connections open at once. From these it derives the
per-run rate and the server's COPY-out and COPY-in ceilings per core. Everything else is
an assumption, printed as such, and can be changed on the command line.

The model: each of W workers runs ``--steps-per-worker`` steps at once; a step turns
``--run-hours`` ship-hours into wide rows at the measured per-run rate after a fixed
start-up (Dagster run + Celery hand-off). The fleet's rate is the smallest of

* workers: W x steps x rows per run / (start-up + rows per run / per-run rate);
* source server CPU: cores x COPY-out rows per core-second (the extraction query);
* target server CPU: cores x COPY-in rows per core-second (COPY into the stage or table,
  upsert, value issues, locks); one server for both: cores / (1/out + 1/in);
* target disk: write bandwidth / WAL bytes per narrow row;
* network: bandwidth / bytes per narrow row out of the source (binary COPY of
  time, code, value: 38 bytes a row on the wire, from the COPY format);
* connections: max_connections / connections per run (pool limit set to the steps);
* launcher: each run's orchestrator process costs CPU-seconds on the launching machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

YEAR_HOURS = 8760
ROWS_PER_SHIP_HOUR = 1_052 * 4 * 60  # channels x 15-s samples an hour (the reference fleet)
WIRE_BYTES_PER_ROW = 38  # binary COPY: 2 + 3 x 4 (lengths) + 8 (time) + 4 (code) + 8 (value) + 4 (NULL id)
WORKERS = (1, 2, 4, 8, 16, 32, 64)
FLEETS = (8, 100)


@dataclass
class Figures:
    """Per-run figures; ``measured`` says where they come from. The defaults are this
    script's ``--measure`` of 2026-12-02 (one ship-day, 5,772,322 rows, on this 2-core
    machine with PostgreSQL on the same cores and other jobs running, load average 2.6)
    and, for the run's fixed cost and the launcher's CPU, ``n2w bench celery_workers`` of
    the same day (3 rounds). Three --measure runs that day, at loads 2.6-5.7, gave a
    per-step rate of 0.50-1.03M rows/s and COPY out of 1.4-1.9M rows per core-second."""

    run_rows_per_s: float = 1_030_000
    client_cpu_us_per_row: float = 0.73
    copy_out_rows_per_core_s: float = 1_430_000
    copy_in_rows_per_core_s: float = 6_490_000
    wal_bytes_per_row: float = 8.6
    table_bytes_per_row: float = 12.1
    connections_per_run: int = 4
    run_startup_s: float = 6.0
    launcher_cpu_s_per_run: float = 5.0
    measured: str = ("defaults: --measure of 2026-12-02 on 2 shared cores (load 2.6); run start-up "
                     "(~3.5 s to start a run + 2-3 s of Celery hand-off) and launcher CPU from "
                     "n2w bench celery_workers the same day")


FIGURE_DOCS = {
    "run_rows_per_s": "narrow rows/s inside one step (materialize_window)",
    "client_cpu_us_per_row": "worker CPU per narrow row, microseconds",
    "copy_out_rows_per_core_s": "server: extraction COPY, narrow rows per CPU-second",
    "copy_in_rows_per_core_s": "server: writing the wide rows, narrow rows per CPU-second",
    "wal_bytes_per_row": "WAL the target writes per narrow row",
    "table_bytes_per_row": "wide-table bytes per narrow row",
    "connections_per_run": "data connections a step holds at most",
    "run_startup_s": "a run's fixed cost around its step (Dagster run + Celery hand-off)",
    "launcher_cpu_s_per_run": "CPU-seconds of a run's orchestrator on the launching machine",
}


@dataclass
class Assumptions:
    db_cores: int = 16
    source_cores: int = 0  # 0: the narrow table is on the same server as the wide tables
    disk_mb_s: float = 1_000.0
    net_gbit: float = 10.0
    max_connections: int = 500
    launcher_cores: int = 4
    steps_per_worker: int = 1
    run_hours: int = 168


# ---------------------------------------------------------------- measuring

def _cpu(pid: int) -> float | None:
    """CPU-seconds of one process (a PostgreSQL backend), None once it has exited."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return None
    return t.user + t.system


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Sessions(threading.Thread):
    """The server side of the measured work: every 20 ms, the client backends of the
    database that were not there when this was created, their CPU-seconds (the last value
    seen before each exits) and how many were open at once. Autovacuum and other sessions
    are not counted."""

    def __init__(self, url: str) -> None:
        import psycopg

        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.before = set(self.pids())
        self.cpu: dict[int, float] = {}
        self.peak = 0
        self.halt = threading.Event()

    def pids(self) -> list[int]:
        rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                 "AND datname = current_database() AND pid <> pg_backend_pid()").fetchall()
        return [int(r[0]) for r in rows]

    def run(self) -> None:
        with self.conn:
            while not self.halt.wait(0.02):
                mine = [p for p in self.pids() if p not in self.before]
                self.peak = max(self.peak, len(mine))
                for pid in mine:
                    cpu = _cpu(pid)
                    if cpu is not None:
                        self.cpu[pid] = cpu


def measure(hours: int) -> Figures:
    import backfill as bf
    import psycopg

    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.config import Settings
    from n2w_pipeline.database import database_url
    from n2w_pipeline.extract import NarrowReader
    from n2w_pipeline.hours import window_slices
    from n2w_pipeline.materialize import materialize_window

    settings = bf.bench_settings(Settings.from_env(), target="n2w_bench_scale")
    catalog = load_catalog(settings.channel_lists_dir)
    url = database_url(settings)
    start, end = bf.START, bf.START + dt.timedelta(hours=hours)
    with psycopg.connect(url, autocommit=True) as conn:
        n, secs = bf.ensure_data(conn, settings, catalog, start, end)
        if n:
            print(f"generated {n:,} narrow rows in {secs:.0f} s")
        rows = bf.count_rows(conn, settings, start, end)
        if not bf.is_superuser(conn):
            raise SystemExit("--measure needs a superuser (COPY … TO '/dev/null') and the server on this "
                             "machine (its backends' CPU is read from /proc)")
        bf.fresh_tables(conn, settings, catalog, (start, end))
    print(f"measuring on {rows:,} narrow rows ({hours} ship-hours of {bf.SHIP})")

    channels = [ch for g in catalog.groups for ch in g.channels]
    with NarrowReader(url, settings, channels) as reader:
        cur = reader._conn.cursor()  # noqa: SLF001 - the reader's backend, to read its CPU
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
        cur.close()
        reader._conn.commit()  # noqa: SLF001
        cpu0, t0 = _cpu(pid) or 0.0, time.perf_counter()
        for a, b in window_slices(start, end, settings.slice_hours):
            reader.discard(bf.SHIP, a, b)
        extract_cpu, extract_wall = (_cpu(pid) or 0.0) - cpu0, time.perf_counter() - t0
    print(f"  server alone, extraction COPY to /dev/null: {extract_wall:.1f} s, {extract_cpu:.1f} CPU-s")

    with psycopg.connect(url, autocommit=True) as conn:
        lsn0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    sessions = _Sessions(url)
    sessions.start()
    me0, t0 = _self_cpu(), time.perf_counter()
    stats = materialize_window(url, settings, catalog, bf.SHIP, start, end)
    wall, client_cpu = time.perf_counter() - t0, _self_cpu() - me0
    sessions.halt.set()
    sessions.join()
    server_cpu = sum(sessions.cpu.values())
    with psycopg.connect(url, autocommit=True) as conn:
        wal = int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).fetchone()[0])
        size = int(conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
            (settings.target_schema,)).fetchone()[0])
    print(f"  step body (materialize_window): {wall:.1f} s, client {client_cpu:.1f} CPU-s, server "
          f"{server_cpu:.1f} CPU-s, WAL {wal / 1e6:,.0f} MB, tables {size / 1e6:,.0f} MB, "
          f"{sessions.peak} connections at most")
    assert stats.narrow_rows == rows, (stats.narrow_rows, rows)
    copy_in_cpu = max(server_cpu - extract_cpu, 1e-9)
    return replace(
        Figures(),
        run_rows_per_s=rows / wall,
        client_cpu_us_per_row=client_cpu / rows * 1e6,
        copy_out_rows_per_core_s=rows / extract_cpu,
        copy_in_rows_per_core_s=rows / copy_in_cpu,
        wal_bytes_per_row=wal / rows,
        table_bytes_per_row=size / rows,
        connections_per_run=sessions.peak,
        measured=(f"measured {dt.date.today()} with --measure ({rows:,} rows, {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.1f} at the end); run start-up and launcher "
                  "CPU from docs/scaling.md"),
    )


# ---------------------------------------------------------------- the model

def limits(f: Figures, a: Assumptions, workers: int) -> dict[str, float]:
    """Fleet narrow rows/s each resource allows with ``workers`` workers."""
    run_rows = a.run_hours * ROWS_PER_SHIP_HOUR
    steps = workers * a.steps_per_worker
    out = {"workers": steps * run_rows / (f.run_startup_s + run_rows / f.run_rows_per_s)}
    per_row_out, per_row_in = 1 / f.copy_out_rows_per_core_s, 1 / f.copy_in_rows_per_core_s
    if a.source_cores:
        out["source CPU (COPY out)"] = a.source_cores / per_row_out
        out["target CPU (COPY in)"] = a.db_cores / per_row_in
    else:
        out["database CPU (COPY out + in)"] = a.db_cores / (per_row_out + per_row_in)
    out["target disk (WAL)"] = a.disk_mb_s * 1e6 / f.wal_bytes_per_row
    out["network"] = a.net_gbit * 1e9 / 8 / WIRE_BYTES_PER_ROW
    max_steps = a.max_connections // max(f.connections_per_run, 1)
    if steps > max_steps:
        out["connections"] = out["workers"] * max_steps / steps
    out["launcher CPU"] = a.launcher_cores / f.launcher_cpu_s_per_run * run_rows
    return out


def table(f: Figures, a: Assumptions) -> list[dict]:
    rows = []
    for w in WORKERS:
        lim = limits(f, a, w)
        name = min(lim, key=lim.get)
        rate = lim[name]
        row = {"workers": w, "rows_per_s": rate, "limit": name,
               "connections": w * a.steps_per_worker * f.connections_per_run}
        for ships in FLEETS:
            row[f"hours_{ships}"] = ships * YEAR_HOURS * ROWS_PER_SHIP_HOUR / rate / 3600
        rows.append(row)
    return rows


def print_model(f: Figures, a: Assumptions) -> None:
    print(f"figures ({f.measured}):")
    for k, v in asdict(f).items():
        if k != "measured":
            print(f"  {k:<28} {v:>14,.2f}   {FIGURE_DOCS[k]}")
    print("assumptions (change them with the options):")
    for k, v in asdict(a).items():
        print(f"  {k:<28} {v:>14,}")
    print(f"  a ship-year = {YEAR_HOURS * ROWS_PER_SHIP_HOUR / 1e9:.2f}e9 narrow rows; "
          f"a run = {a.run_hours} ship-hours")
    print()
    head = (f"| workers | steps | connections | fleet rows/s | limited by | "
            f"{' | '.join(f'{s} ships: fleet-year' for s in FLEETS)} |")
    print(head)
    print("|" + "---|" * (5 + len(FLEETS)))
    for r in table(f, a):
        hours = " | ".join(_duration(r[f"hours_{s}"]) for s in FLEETS)
        print(f"| {r['workers']} | {r['workers'] * a.steps_per_worker} | {r['connections']} | "
              f"{r['rows_per_s'] / 1e6:,.1f}M | {r['limit']} | {hours} |")
    per_worker = limits(f, a, 1)["workers"]
    print("\nceilings (fleet narrow rows/s; the worker count from which each one binds):")
    for name, cap in sorted(limits(f, a, max(WORKERS)).items(), key=lambda kv: kv[1]):
        if name not in ("workers", "connections"):
            print(f"  {name:<30} {cap / 1e6:>8,.1f}M rows/s   from {math.ceil(cap / per_worker):>4} workers")
    max_steps = a.max_connections // max(f.connections_per_run, 1)
    print(f"  {'connections':<30} {max_steps * per_worker / 1e6:>8,.1f}M rows/s   from {max_steps:>4} "
          f"workers ({a.max_connections} / {f.connections_per_run} per step)")


def _duration(hours: float) -> str:
    return f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} d"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help="measure the per-run figures on this machine")
    p.add_argument("--hours", type=int, default=24, help="ship-hours --measure runs (default 24)")
    d = Assumptions()
    p.add_argument("--db-cores", type=int, default=d.db_cores, help="target (or only) server's cores")
    p.add_argument("--source-cores", type=int, default=d.source_cores,
                   help="cores of a separate source server (N2W_SOURCE_URL, e.g. a replica); 0: same")
    p.add_argument("--disk-mb-s", type=float, default=d.disk_mb_s, help="target's sustained write MB/s")
    p.add_argument("--net-gbit", type=float, default=d.net_gbit, help="network from source to workers")
    p.add_argument("--max-connections", type=int, default=d.max_connections)
    p.add_argument("--launcher-cores", type=int, default=d.launcher_cores,
                   help="cores of the machine running the runs' orchestrators (daemon or n2w backfill)")
    p.add_argument("--steps-per-worker", type=int, default=d.steps_per_worker,
                   help="`n2w worker --concurrency`")
    p.add_argument("--run-hours", type=int, default=d.run_hours, help="N2W_RUN_HOURS")
    p.add_argument("--run-rows-per-s", type=float, default=None, help="override the per-run rate")
    args = p.parse_args()
    figures = measure(args.hours) if args.measure else Figures()
    if args.run_rows_per_s:
        figures = replace(figures, run_rows_per_s=args.run_rows_per_s,
                          measured=figures.measured + "; per-run rate given on the command line")
    a = Assumptions(args.db_cores, args.source_cores, args.disk_mb_s, args.net_gbit, args.max_connections,
                    args.launcher_cores, args.steps_per_worker, args.run_hours)
    print_model(figures, a)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scale_model-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"figures": asdict(figures), "assumptions": asdict(a),
                                "table": table(figures, a)}, indent=2))
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
