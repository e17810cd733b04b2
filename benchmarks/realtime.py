"""Near-realtime latency: narrow insert commit → wide row readable, through the real daemon.

On a fresh embedded PostgreSQL in a scratch state dir (or --state-dir), this:

1. creates the narrow table with the fleet's indexes and the arrival (id) index, loads
   ten minutes of every ship for the hour two hours ago and materialises that hour
   directly (it is "already done");
2. starts ``dagster-daemon run`` (no webserver) on n2w's instance and workspace, with the
   realtime sensor on (N2W_REALTIME=1), and waits for its first tick;
3. once the daemon's start-up runs are done, every 60 s (at a random second of the daemon's
   5 s loop, as ships send), for --minutes minutes, inserts one minute of 15-second samples of every
   listed channel for each of --ships ships (one transaction per ship, 4 timestamps ×
   1,052 channels = 4,208 rows), stamped with the current UTC minute; at minute
   --late-at it also inserts a late minute for the hour that is already done;
4. polls the wide tables every --poll seconds and records, per ship-minute, the delay
   from the insert's commit to all its timestamps being readable in all three wide
   tables, and samples the CPU time of the Dagster process tree (daemon, code server,
   run workers) and of the PostgreSQL server;
5. prints a per-minute table (p50, p95, max, CPU shares), the late batch's delay, the
   runs the sensor launched, and checks that every inserted row reached the wide tables
   (cell count of group 3 and row count of every table equal the narrow rows).

With ``--under-load`` a backfill of one ship (``n2w backfill --all`` over ``--load-days``
days of every channel, generated first, for days long before the realtime hours) runs beside
it, again and again, as a ship-week backfill would load the machine.

Where the delay goes, per arrival (medians), from the instance's own records: the sensor
(commit → the run created by a tick: waiting for the next tick, and the tick), the queue
(created → launched), the run worker's process start (code loaded), the run's set-up
(resources, executor) and the run's read, pivot and write up to the rows readable.

Run: ``python benchmarks/realtime.py`` or ``n2w bench realtime`` (``--minutes 3`` for a
quick look). Dagster is stopped by process group: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _realtime_parts import (  # noqa: E402
    PHASES,
    BackfillLoad,
    sensor_runs,
    stages,
    start_daemon,
    stop_group,
    tick_cadence,
    wait_first_tick,
    wait_quiet,
)

from n2w_pipeline.channels import load_catalog  # noqa: E402
from n2w_pipeline.config import REFERENCE_SHIPS, Settings  # noqa: E402
from n2w_pipeline.database import _embedded_server  # noqa: E402
from n2w_pipeline.generate import create_source_indexes, create_source_table, generate  # noqa: E402
from n2w_pipeline.instance import dagster_env  # noqa: E402
from n2w_pipeline.materialize import materialize_window  # noqa: E402
from n2w_pipeline.realtime.index import ensure_arrival_index  # noqa: E402

TARGET_P95 = {"idle": 10.0, "under load": 20.0}
LOAD_START = dt.datetime(2025, 3, 3)  # the load's days: long before the realtime hours
MINUTE = dt.timedelta(minutes=1)
STAMPS = 4  # 15-second samples per minute


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/realtime.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=int, default=10, help="minutes of inserts (default 10)")
    p.add_argument("--ships", type=int, default=8, help="ships sending data (default 8)")
    p.add_argument("--late-at", type=int, default=3,
                   help="minute at which the late batch for the finished hour arrives (default 3)")
    p.add_argument("--poll", type=float, default=0.25, help="wide-table poll interval, s (default 0.25)")
    p.add_argument("--state-dir", type=Path, help="state dir (default: a scratch dir, deleted after)")
    p.add_argument("--keep", action="store_true", help="keep the scratch state dir and server")
    p.add_argument("--under-load", action="store_true",
                   help="run a backfill of one ship beside it (`n2w backfill --all` of --load-days days of "
                   "every channel, again and again), as a ship-week backfill would load the machine")
    p.add_argument("--load-days", type=int, default=7,
                   help="days of narrow rows the load backfills (default 7: a ship-week, ~42M rows, "
                   "~11 GB of disk with the wide tables)")
    p.add_argument("--interval", type=int, default=None,
                   help="N2W_REALTIME_INTERVAL_SECONDS for the sensor (default: n2w's)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- inserts


INSERT = """INSERT INTO {src} ({ship}, {ch}, {ct}, {sct}, {dv}, {vf})
SELECT %(ship)s, c, t, clock_timestamp(), round((random() * 1000)::numeric, 3)::float8, 'Decimal'
FROM unnest(%(chans)s::text[]) c
CROSS JOIN generate_series(%(t0)s::timestamp, %(t0)s::timestamp + interval '45 seconds',
                           interval '15 seconds') t"""


def insert_minute(conn: psycopg.Connection, settings: Settings, ship: str, minute: dt.datetime,
                  chans: list[str]) -> float:
    """One ship-minute in one transaction; returns the wall time right after its commit."""
    c = settings.columns
    q = sql.SQL(INSERT).format(
        src=sql.Identifier(*settings.source_qualified), ship=sql.Identifier(c.ship_id),
        ch=sql.Identifier(c.channel), ct=sql.Identifier(c.created_time),
        sct=sql.Identifier(c.server_created_time), dv=sql.Identifier(c.double_v),
        vf=sql.Identifier(c.value_format),
    )
    conn.execute(q, {"ship": ship, "chans": chans, "t0": minute})  # autocommit: committed here
    return time.time()


# --------------------------------------------------------------------------- latency


@dataclass
class Arrival:
    ship: str
    minute: dt.datetime
    committed: float
    index: int  # benchmark minute it was inserted in
    late: bool = False
    readable: float | None = None

    @property
    def delay(self) -> float | None:
        return None if self.readable is None else self.readable - self.committed


@dataclass
class Poller:
    """Watches the wide tables for every waiting arrival (one query per arrival)."""

    url: str
    settings: Settings
    groups: list[int]
    interval: float
    waiting: list[Arrival] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, a: Arrival) -> None:
        with self.lock:
            self.waiting.append(a)

    def pending(self) -> int:
        with self.lock:
            return len(self.waiting)

    def query(self, ship: str) -> sql.Composed:
        counts = [
            sql.SQL("(SELECT count(*) FROM {} WHERE created_time >= %(a)s AND created_time < %(b)s)").format(
                sql.Identifier(self.settings.target_schema, self.settings.table_name(ship, g)))
            for g in self.groups
        ]
        return sql.SQL("SELECT LEAST({})").format(sql.SQL(", ").join(counts))

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                with self.lock:
                    todo = list(self.waiting)
                for a in todo:
                    try:
                        (n,) = conn.execute(self.query(a.ship),
                                            {"a": a.minute, "b": a.minute + MINUTE}).fetchone()  # type: ignore[misc]
                    except psycopg.errors.UndefinedTable:
                        n = 0
                    if n >= STAMPS:
                        a.readable = time.time()
                        with self.lock:
                            self.waiting.remove(a)
                self.stop.wait(self.interval)


# --------------------------------------------------------------------------- CPU


class CpuMeter:
    """CPU seconds of a process tree: own + reaped children of every live member, so a
    run worker that exits between two samples is still counted (in its parent)."""

    def __init__(self, root_pid: int) -> None:
        self.root = root_pid

    def total(self) -> float:
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        out = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                out += t.user + t.system + t.children_user + t.children_system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out


def postmaster_pid(state_dir: Path) -> int | None:
    pidfile = state_dir / "pgdata" / "postmaster.pid"
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- checks


def verify(conn: psycopg.Connection, settings: Settings, catalog, ships: list[str],  # noqa: ANN001
           windows: list[tuple[dt.datetime, dt.datetime]]) -> list[str]:
    """Every narrow row of the benchmark's windows is in the wide tables: row counts of
    every table and the non-NULL cell count of group 3 equal the narrow side."""
    problems = []
    src = sql.Identifier(*settings.source_qualified)
    g3 = catalog.group(3)
    for ship in ships:
        for a, b in windows:
            (stamps,) = conn.execute(sql.SQL(
                "SELECT count(DISTINCT created_time) FROM {} WHERE ship_id = %s AND created_time >= %s "
                "AND created_time < %s").format(src), (ship, a, b)).fetchone()  # type: ignore[misc]
            for g in catalog.groups:
                (rows,) = conn.execute(sql.SQL(
                    "SELECT count(*) FROM {} WHERE created_time >= %s AND created_time < %s").format(
                    sql.Identifier(settings.target_schema, settings.table_name(ship, g.number))),
                    (a, b)).fetchone()  # type: ignore[misc]
                if rows != stamps:
                    problems.append(f"{ship} group {g.number} {a:%H:%M}-{b:%H:%M}: {rows} wide rows, "
                                    f"{stamps} narrow timestamps")
            (narrow,) = conn.execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE ship_id = %s AND created_time >= %s AND created_time < %s "
                "AND data_channel_id = ANY(%s)").format(src), (ship, a, b, list(g3.channels))).fetchone()  # type: ignore[misc]
            filled = sql.SQL(" + ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in g3.columns)
            (cells,) = conn.execute(sql.SQL("SELECT coalesce({}, 0) FROM {} WHERE created_time >= %s "
                                            "AND created_time < %s").format(
                filled, sql.Identifier(settings.target_schema, settings.table_name(ship, 3))),
                (a, b)).fetchone()  # type: ignore[misc]
            if cells != narrow:
                problems.append(f"{ship} group 3 {a:%H:%M}-{b:%H:%M}: {cells} cells, {narrow} narrow values")
    return problems


# --------------------------------------------------------------------------- main


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


GB_PER_LOAD_DAY = 1.6  # narrow rows, their indexes and the wide rows of one ship-day, on disk


def prepare(args: argparse.Namespace, url: str, settings: Settings, catalog, ships: list[str],  # noqa: ANN001
            chans: list[str], done_hour: dt.datetime) -> None:
    """The narrow table (the load's days first, on the fresh table: loaded without indexes),
    its indexes, and the finished hour's history, materialised."""
    with psycopg.connect(url, autocommit=True) as conn:
        create_source_table(conn, settings)
        if args.under_load:
            need = args.load_days * GB_PER_LOAD_DAY + 3
            free = shutil.disk_usage(settings.state_dir).free / 1e9
            if free < need:
                raise SystemExit(f"--under-load with --load-days {args.load_days} needs ~{need:.0f} GB of "
                                 f"disk, {free:.0f} GB free: give fewer --load-days")
            t0 = time.time()
            n = generate(conn, settings, catalog, [ships[0]], LOAD_START,
                         LOAD_START + dt.timedelta(days=args.load_days), own_table=True)
            print(f"load: {n:,} narrow rows of {ships[0]} over {args.load_days} day(s) generated in "
                  f"{time.time() - t0:.0f} s")
        create_source_indexes(conn, settings)
        ensure_arrival_index(conn, settings)
        t0 = time.time()
        for ship in ships:
            for m in range(10):
                insert_minute(conn, settings, ship, done_hour + m * MINUTE, chans)
            materialize_window(url, settings, catalog, ship, done_hour, done_hour + dt.timedelta(hours=1))
        print(f"history: {done_hour:%Y-%m-%d %H:00} (10 min x {len(ships)} ships) loaded and "
              f"materialised in {time.time() - t0:.1f} s")


def measure(args: argparse.Namespace, url: str, settings: Settings, ships: list[str], chans: list[str],
            done_hour: dt.datetime, poller: Poller, daemon_pid: int, ncpu: int) -> tuple[list, list]:
    """Insert a minute per ship every 60 s for --minutes, and the late minute; CPU per minute."""
    arrivals: list[Arrival] = []
    minutes: list[dict] = []
    dagster_cpu = CpuMeter(daemon_pid)
    pg_pid = postmaster_pid(settings.state_dir)
    pg_cpu = CpuMeter(pg_pid) if pg_pid else None
    me = psutil.Process()
    start = time.time()
    cpu0 = (dagster_cpu.total(), pg_cpu.total() if pg_cpu else 0.0, sum(me.cpu_times()[:2]))
    rng = random.Random(14)  # ships do not send in step with the daemon's 5 s loop: a random phase
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(args.minutes):
            slot = start + 60 * i
            time.sleep(max(0.0, slot + rng.uniform(0.0, 5.0) - time.time()))
            minute = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
            batch = [(ship, minute, False) for ship in ships]
            if i == args.late_at:
                batch += [(ship, done_hour + 30 * MINUTE, True) for ship in ships]
            for ship, when, late in batch:
                a = Arrival(ship, when, insert_minute(conn, settings, ship, when, chans), i, late=late)
                arrivals.append(a)
                poller.add(a)
            time.sleep(max(0.0, slot + 60 - time.time()))
            cpu = (dagster_cpu.total(), pg_cpu.total() if pg_cpu else 0.0, sum(me.cpu_times()[:2]))
            wall = time.time() - slot
            minutes.append({"i": i, "minute": minute, "load": os.getloadavg()[0],
                            "dagster": (cpu[0] - cpu0[0]) / wall / ncpu * 100,
                            "pg": (cpu[1] - cpu0[1]) / wall / ncpu * 100,
                            "bench": (cpu[2] - cpu0[2]) / wall / ncpu * 100})
            cpu0 = cpu
            print(f"  minute {i + 1}/{args.minutes} inserted at {minute:%H:%M}; "
                  f"{poller.pending()} ship-minute(s) not yet readable", flush=True)
    deadline = time.time() + 180
    while poller.pending() and time.time() < deadline:
        time.sleep(1)
    return arrivals, minutes


def report(args: argparse.Namespace, arrivals: list[Arrival], minutes: list[dict], runs: list, ncpu: int,
           done_hour: dt.datetime, cadence: tuple[float, float, int]) -> tuple[list[float], list]:
    print()
    print("delay from narrow commit to wide rows readable (s), per minute of inserts:")
    print(f"{'minute':>6} {'at':>6} {'n':>3} {'p50':>6} {'p95':>6} {'max':>6} {'lost':>5} "
          f"{'Dagster CPU':>11} {'PostgreSQL CPU':>14} {'bench CPU':>9} {'load1':>6}")
    for m in minutes:
        ds = [a.delay for a in arrivals if a.index == m["i"] and not a.late and a.delay is not None]
        lost = sum(1 for a in arrivals if a.index == m["i"] and not a.late and a.delay is None)
        print(f"{m['i'] + 1:>6} {m['minute']:%H:%M} {len(ds):>3} {pct(ds, 50):>6.1f} {pct(ds, 95):>6.1f} "
              f"{max(ds, default=float('nan')):>6.1f} {lost:>5} {m['dagster']:>10.1f}% {m['pg']:>13.1f}% "
              f"{m['bench']:>8.1f}% {m['load']:>6.2f}")
    ds = [a.delay for a in arrivals if not a.late and a.delay is not None]
    late = [a for a in arrivals if a.late]
    late_ds = [a.delay for a in late if a.delay is not None]
    n_minutes = len(minutes) or 1
    lost = sum(1 for a in arrivals if not a.late and a.delay is None)
    print(f"{'all':>6} {'':>6} {len(ds):>3} {pct(ds, 50):>6.1f} {pct(ds, 95):>6.1f} "
          f"{max(ds, default=float('nan')):>6.1f} {lost:>5} "
          f"{sum(m['dagster'] for m in minutes) / n_minutes:>10.1f}% "
          f"{sum(m['pg'] for m in minutes) / n_minutes:>13.1f}% "
          f"{sum(m['bench'] for m in minutes) / n_minutes:>8.1f}%")
    print(f"(CPU share = CPU-seconds / (wall seconds x {ncpu} CPUs); poll resolution {args.poll} s)")
    print(f"late batch for {done_hour:%H}:30 ({len(late)} ship-minutes, hour already materialised): "
          f"p50 {pct(late_ds, 50):.1f} s, max {max(late_ds, default=float('nan')):.1f} s, "
          f"{len(late) - len(late_ds)} not readable")
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    print(f"runs launched by the sensor: {len(runs)} {statuses}; sensor ticks every {cadence[0]:.1f} s "
          f"(median), a tick takes {cadence[1]:.2f} s, {cadence[2]} ticks")
    split = [(a.delay, st) for a in arrivals if not a.late and a.readable
             and (st := stages(a.committed, a.readable, a.ship, runs))]
    if split:
        parts = "; ".join(f"{name} {statistics.median(st[name] for _, st in split):.1f} s" for name in PHASES)
        share = statistics.median(st["tick"] / d for d, st in split if d)
        print(f"where the delay goes (median over {len(split)} arrivals): {parts}")
        print(f"the sensor's share of the delay (commit -> run created by a tick): {100 * share:.0f} % "
              "(median)")
    return ds, late_ds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = args.state_dir is None
    state = (args.state_dir or Path(tempfile.mkdtemp(prefix="n2w-bench-rt-", dir="/tmp"))).resolve()
    ships = list(REFERENCE_SHIPS[: args.ships])
    os.environ.pop("N2W_DATABASE_URL", None)
    os.environ.pop("N2W_DAGSTER_PG_URL", None)
    settings = replace(Settings.from_env(), state_dir=state, ships=tuple(ships),
                       channel_lists_dir=ROOT / "channel_lists", database_url=None)
    catalog = load_catalog(settings.channel_lists_dir)
    chans = list(catalog.all_channels)
    ncpu = psutil.cpu_count() or 1
    mode = "under load" if args.under_load else "idle"
    print(f"state dir {state}; {len(ships)} ships x {len(chans)} channels x {STAMPS} samples per minute, "
          f"{args.minutes} min, {ncpu} CPUs, {mode}")

    env = {**dagster_env(settings), "N2W_SHIPS": ",".join(ships), "N2W_REALTIME": "1",
           "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir), "PYTHONUNBUFFERED": "1",
           "N2W_MIGRATION_DIR": str(state / "migration_data")}
    if args.interval:
        env["N2W_REALTIME_INTERVAL_SECONDS"] = str(args.interval)
    url = env["N2W_DATABASE_URL"]  # as `n2w dev`: data in `n2w`, the instance in `dagster`
    settings = replace(settings, database_url=url)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    done_hour = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=2)
    prepare(args, url, settings, catalog, ships, chans, done_hour)

    log = state / "daemon.log"
    daemon = start_daemon(env, log)
    load = (BackfillLoad(env, ships[0], LOAD_START, args.load_days, state / "load.log")
            if args.under_load else None)
    poller = Poller(url, settings, [g.number for g in catalog.groups], args.poll)
    thread = threading.Thread(target=poller.run, daemon=True)
    try:
        print(f"dagster-daemon pid {daemon.pid} (log {log}); waiting for the sensor's first tick ...")
        print(f"first tick after {wait_first_tick(env['N2W_DAGSTER_PG_URL']):.1f} s")
        print(f"start-up runs done, daemon quiet, after {wait_quiet(env['N2W_DAGSTER_PG_URL']):.0f} s")
        if load is not None:
            load.start()
            time.sleep(10)  # the first backfill run under way before the first minute
        thread.start()
        arrivals, minutes = measure(args, url, settings, ships, chans, done_hour, poller, daemon.pid, ncpu)
        poller.stop.set()
        thread.join()
        runs = sensor_runs(env["N2W_DAGSTER_PG_URL"])
        cadence = tick_cadence(env["N2W_DAGSTER_PG_URL"])
    finally:
        if load is not None:
            load.finish()
        stop_group(daemon)
        poller.stop.set()
    if load is not None:
        passes = ", ".join(f"{p:.0f} s" for p in load.passes) or "none finished"
        print(f"load: `n2w backfill --all` of {ships[0]} over {args.load_days} day(s) ran beside it; "
              f"passes completed: {passes} (log {state / 'load.log'})")
    ds, late_ds = report(args, arrivals, minutes, runs, ncpu, done_hour, cadence)

    windows = [(done_hour, done_hour + dt.timedelta(hours=1))]
    if arrivals:
        first = min(a.minute for a in arrivals if not a.late)
        last = max(a.minute for a in arrivals if not a.late)
        windows.append((first, last + MINUTE))
    with psycopg.connect(url, autocommit=True) as conn:
        problems = verify(conn, settings, catalog, ships, windows)
    print("completeness: " + ("every inserted row is in the wide tables" if not problems
                              else f"{len(problems)} problem(s): {problems[:5]}"))
    p95 = pct(ds, 95)
    late = [a for a in arrivals if a.late]
    ok = (p95 <= TARGET_P95[mode] and not problems and len(late_ds) == len(late)
          and all(a.delay is not None for a in arrivals))
    verdict = "MET" if ok else "NOT MET"
    print(f"target ({mode}) p95 <= {TARGET_P95[mode]:.0f} s, no late row lost: {verdict} (p95 {p95:.1f} s)")

    if scratch and not args.keep:
        server = _embedded_server(state)
        server.cleanup_mode = "delete"
        server.cleanup()
        shutil.rmtree(state, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
