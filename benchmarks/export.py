"""Export benchmark: n2w to Parquet and ClickHouse against what a user would write instead, one run.

    .venv/bin/n2w bench export            # one ship-week of wide tables (~40M narrow rows behind them)
    .venv/bin/n2w bench export --quick    # one ship-day

Uses the backfill benchmark's scratch data: the narrow ship-week in ``n2w_bench`` (generated
if missing) and its wide tables in ``n2w_bench_wide`` (backfilled through n2w if missing), then
measures, side by side:

* n2w → Parquet, one ship-day and one ship-week; n2w → ClickHouse (embedded chDB), one
  ship-week, then again (a re-export replaces every ship-day); n2w → both (into empty targets).
  The code the export assets run (``export_days``: one snapshot per day, COPY/Arrow slices, temp
  file + rename, staged ClickHouse swap, the reconciliation included), each in a fresh process
  whose peak RSS and CPU seconds (from the start of the work) are reported;
* ``n2w export`` through Dagster for the ship-week into empty targets (run start-up included);
* ``polars.read_database(SELECT * …, psycopg connection).write_parquet(…)`` per group per day;
* ``COPY (SELECT * …) TO STDOUT (FORMAT csv)`` into a file per group per day;
* one analytic query, the hourly average of 10 channels over the week for the ship, on
  ClickHouse (chDB, the table as the load left it, then again once its background merges are
  done) and on PostgreSQL (the wide table), each warm and best of 7, with ClickHouse's
  per-query floor on that table (``SELECT count()``); then the same over four weeks (the week
  copied three times, shifted, into both tables alike).

CPU seconds per ship-day are given for the client process and, when the PostgreSQL server runs
on this machine, for the server (its backends' CPU): on a shared machine they move less than
the wall-clock rates.

Rows are wide rows (a timestamp of one group's table); cells are rows × that group's channels
(NULL cells included: every one is written). Results: ``benchmarks/results/export-<time>.json``.
"""

import argparse
import datetime as dt
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from n2w_pipeline.channels import load_catalog  # noqa: E402
from n2w_pipeline.config import Settings  # noqa: E402
from n2w_pipeline.database import database_url  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_backfill", ROOT / "benchmarks" / "backfill.py")
backfill = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(backfill)  # type: ignore[union-attr]

SHIP, START, DAY = backfill.SHIP, backfill.START, backfill.DAY
QUERY_CHANNELS = 10
ROWS_PER_SHIP_DAY = 3 * 5760  # three tables, 15-s rows


def export_settings(base: Settings) -> Settings:
    s = backfill.bench_settings(base)
    scratch = Path(base.state_dir) / "bench_export"
    return replace(s, export_dir=scratch / "parquet", clickhouse_path=scratch / "clickhouse",
                   clickhouse_url=None)


def ensure_wide(conn: psycopg.Connection, settings: Settings, catalog, days: int) -> None:  # noqa: ANN001
    """Backfill the wide tables through n2w unless their first and last hours have rows."""
    table = sql.Identifier(settings.target_schema, settings.table_name(SHIP, catalog.groups[-1].number))
    end = START + days * DAY
    have = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.as_string(conn),)).fetchone()
    if have and have[0]:
        probe = sql.SQL("SELECT count(*) FILTER (WHERE created_time < %s), count(*) FILTER "
                        "(WHERE created_time >= %s) FROM {} WHERE created_time >= %s AND created_time < %s")
        bounds = (START + backfill.HOUR, end - backfill.HOUR, START, end)
        row = conn.execute(probe.format(table), bounds).fetchone()
        if row and row[0] and row[1]:
            return
    from n2w_pipeline.commands._common import run_backfill

    t0 = time.perf_counter()
    run_backfill(settings, [SHIP], START, end, quiet=True)
    print(f"backfilled the wide tables in {time.perf_counter() - t0:.0f} s")


def child(kind: str, days: str) -> None:
    """One n2w export in this (fresh) process: parquet | clickhouse | both | dagster."""
    from n2w_pipeline.export.day import clickhouse_backend, export_days

    settings = export_settings(Settings.from_env())
    catalog = load_catalog(settings.channel_lists_dir)
    url = database_url(settings)
    n = int(days)
    import polars  # noqa: F401 - imported before the clock starts, like a worker that has run before
    import pyarrow.parquet  # noqa: F401

    if kind != "parquet":
        import chdb  # noqa: F401

    t0 = time.perf_counter()
    c0 = cpu_seconds()
    rows = cells = 0
    phases: dict[str, float] = {}
    if kind == "dagster":
        from n2w_pipeline.commands.export import run_export

        last = START.date() + dt.timedelta(days=n)
        summaries = run_export(settings, [SHIP], START.date(), last, "both", quiet=True)
        rows = sum(md["rows"] for s in summaries for k, md in s["assets"].items()
                   if k.startswith("parquet"))
        per = {g.number: len(g.columns) for g in catalog.groups}
        cells = sum(md["rows"] * per[int(k.split("_")[1])] for s in summaries
                    for k, md in s["assets"].items() if k.startswith("parquet"))
    else:
        pq = list(catalog.groups) if kind in ("parquet", "both") else []
        chg = list(catalog.groups) if kind in ("clickhouse", "both") else []
        pairs = [(SHIP, START.date() + dt.timedelta(days=i)) for i in range(n)]
        with clickhouse_backend(settings, None) if chg else _null() as backend:
            for r in export_days(url, settings, pairs, pq, chg, backend):
                bad = [g.group.number for g in r.groups.values()
                       if (g.parquet_mismatches or g.clickhouse_mismatches)]
                if bad:
                    raise SystemExit(f"reconciliation failed for groups {bad}")
                rows += r.rows
                cells += sum(g.rows * len(g.group.columns) for g in r.groups.values())
                for k, v in r.phases.items():
                    phases[k] = phases.get(k, 0.0) + v
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "cells": cells, "peak_rss": rss, "phases": phases,
                      "client_cpu_s": cpu}))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class ServerCpu:
    """CPU seconds of the PostgreSQL server, if it runs on this machine: its postmaster's own and
    its exited backends' (``/proc/<postmaster>/stat``), read around a method whose connections
    have closed by then. None where the server is elsewhere."""

    def __init__(self, url: str) -> None:
        self.pid: int | None = None
        try:
            with psycopg.connect(url) as conn:
                backend = conn.info.backend_pid
            self.pid = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
            self.read()
        except (OSError, ValueError, IndexError):
            self.pid = None

    def read(self) -> float | None:
        if self.pid is None:
            return None
        time.sleep(0.3)  # the method's backends exit and are counted in the postmaster's children
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class _null:
    def __enter__(self):  # noqa: ANN204
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run_child(kind: str, days: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(days)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} export failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def select_all(settings: Settings, group) -> sql.Composed:  # noqa: ANN001
    cols = [sql.Identifier("created_time")] + [sql.Identifier(c) for c in group.columns]
    return sql.SQL(
        "SELECT {} FROM {} WHERE created_time >= %s AND created_time < %s ORDER BY created_time").format(
        sql.SQL(", ").join(cols),
        sql.Identifier(settings.target_schema, settings.table_name(SHIP, group.number)))


def polars_baseline(url: str, settings: Settings, catalog, days: int, folder: Path) -> dict:  # noqa: ANN001
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    rows = cells = 0
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn:
        for i in range(days):
            a = START + i * DAY
            for g in catalog.groups:
                query = select_all(settings, g).as_string(conn)
                frame = pl.read_database(query, connection=conn, execute_options={"params": (a, a + DAY)})
                frame.write_parquet(folder / f"{g.asset_name}_{a:%Y-%m-%d}.parquet", compression="zstd")
                rows += frame.height
                cells += frame.height * len(g.columns)
    return {"seconds": time.perf_counter() - t0, "rows": rows, "cells": cells}


def copy_csv_baseline(url: str, settings: Settings, catalog, days: int, folder: Path) -> dict:  # noqa: ANN001
    folder.mkdir(parents=True, exist_ok=True)
    rows = cells = 0
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn:
        for i in range(days):
            a = START + i * DAY
            for g in catalog.groups:
                inner = select_all(settings, g).as_string(conn)
                stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(sql.SQL(inner))
                n = 0
                path = folder / f"{g.asset_name}_{a:%Y-%m-%d}.csv"
                with open(path, "wb") as f, conn.cursor() as cur, cur.copy(stmt, (a, a + DAY)) as copy:
                    for block in copy:
                        f.write(block)
                        n += bytes(block).count(b"\n")
                rows += n - 1
                cells += (n - 1) * len(g.columns)
    return {"seconds": time.perf_counter() - t0, "rows": rows, "cells": cells}


def query_bench(url: str, settings: Settings, catalog, days: int, repeat: int = 7,  # noqa: ANN001
                settle: bool = False) -> dict:
    """Hourly average of 10 channels of group 2 over ``days`` from START, one ship: ClickHouse vs
    PostgreSQL, each warm (one run first) and best of ``repeat``; ClickHouse's floors on this table
    (``SELECT count()``) and on none (``SELECT 1``) beside it. ClickHouse is measured on the table
    as the load left it (chDB starts merging its parts as soon as a session opens it, so these
    queries share the machine with those merges) and, with ``settle``, again once its background
    merges are done (the state queries see from then on, as on a server after its merges)."""
    from n2w_pipeline.export.clickhouse import ident
    from n2w_pipeline.export.day import clickhouse_backend

    g = max(catalog.groups, key=lambda x: len(x.columns))
    cols = list(g.columns[:QUERY_CHANNELS])
    end = START + days * DAY
    pg = sql.SQL("SELECT date_trunc('hour', created_time) AS h, {} FROM {} WHERE created_time >= %s "
                 "AND created_time < %s GROUP BY h ORDER BY h").format(
        sql.SQL(", ").join(sql.SQL("avg({})").format(sql.Identifier(c)) for c in cols),
        sql.Identifier(settings.target_schema, settings.table_name(SHIP, g.number)))
    table = f"{ident('n2w')}.{ident(g.asset_name)}"
    ch = (f"SELECT toStartOfHour(created_time) AS h, {', '.join(f'avg({ident(c)})' for c in cols)} "
          f"FROM {table} WHERE ship_id = {{ship:String}} AND created_time >= "
          "{a:DateTime64(6, 'UTC')} AND created_time < {b:DateTime64(6, 'UTC')} GROUP BY h ORDER BY h")
    params = {"ship": SHIP, "a": f"{START:%Y-%m-%d %H:%M:%S}", "b": f"{end:%Y-%m-%d %H:%M:%S}"}

    def best(fn) -> tuple[float, object]:  # noqa: ANN001
        out = fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    def parts(backend) -> int:  # noqa: ANN001
        got = backend.query_arrow("SELECT count() FROM system.parts WHERE database = 'n2w' AND "
                                  "table = {t:String} AND active", {"t": g.asset_name})
        return int(got.column(0)[0].as_py())

    with psycopg.connect(url) as conn:
        pg_s, pg_rows = best(lambda: conn.execute(pg, (START, end)).fetchall())
    out = {"days": days, "hours": len(pg_rows), "channels": len(cols), "postgres_s": pg_s}
    with clickhouse_backend(settings, None) as backend:
        out["clickhouse_parts"] = parts(backend)
        ch_s, ch_rows = best(lambda: backend.query_arrow(ch, params))
        count_s, _ = best(lambda: backend.query_arrow(f"SELECT count() FROM {table}"))
        one_s, _ = best(lambda: backend.query_arrow("SELECT 1"))
        out.update(clickhouse_s=ch_s, clickhouse_count_s=count_s, clickhouse_select1_s=one_s)
        if settle:
            out["settle_s"] = settle_merges(backend)
            out["clickhouse_settled_parts"] = parts(backend)
            out["clickhouse_settled_s"], _ = best(lambda: backend.query_arrow(ch, params))
            count = f"SELECT count() FROM {table}"
            out["clickhouse_settled_count_s"], _ = best(lambda: backend.query_arrow(count))
    assert ch_rows.num_rows == len(pg_rows), (ch_rows.num_rows, len(pg_rows))
    got = [ch_rows.column(1)[i].as_py() for i in range(ch_rows.num_rows)]
    want = [r[1] for r in pg_rows]
    assert all((a is None and b is None) or abs(a - b) <= 1e-9 * max(1.0, abs(b))
               for a, b in zip(got, want, strict=True))
    return out


def settle_merges(backend, timeout: float = 300.0) -> float:  # noqa: ANN001
    """Wait until ClickHouse's background merges of n2w's tables are done: none running and the
    active parts unchanged for 3 s in a row. Returns the seconds waited."""
    t0 = time.perf_counter()
    state, since = None, t0
    while time.perf_counter() - t0 < timeout:
        got = backend.query_arrow(
            "SELECT (SELECT count() FROM system.merges WHERE database = 'n2w'), "
            "(SELECT groupArraySorted(1000)(name) FROM system.parts WHERE database = 'n2w' AND active)")
        running, names = got.column(0)[0].as_py(), got.column(1)[0].as_py()
        now = time.perf_counter()
        if running or names != state:
            state, since = (None if running else names), now
        elif now - since >= 3.0:
            break
        time.sleep(0.25)
    return time.perf_counter() - t0


def extend_to_weeks(url: str, settings: Settings, catalog, weeks: int) -> int:  # noqa: ANN001
    """Copies of the loaded ship-week of group 2, shifted by 1 … weeks-1 weeks, into the
    PostgreSQL wide table and the ClickHouse table alike (same rows on both sides), for a query
    over a longer range. Returns the days the tables then hold."""
    from n2w_pipeline.export.clickhouse import ident
    from n2w_pipeline.export.day import clickhouse_backend

    g = max(catalog.groups, key=lambda x: len(x.columns))
    week = 7 * DAY
    pg_table = sql.Identifier(settings.target_schema, settings.table_name(SHIP, g.number))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in g.columns)
    with psycopg.connect(url, autocommit=True) as conn:
        for k in range(1, weeks):
            conn.execute(sql.SQL(
                "INSERT INTO {t} (created_time, {c}) SELECT created_time + %s, {c} FROM {t} "
                "WHERE created_time >= %s AND created_time < %s ON CONFLICT DO NOTHING").format(
                t=pg_table, c=cols), (k * week, START, START + week))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(pg_table))
    with clickhouse_backend(settings, None) as backend:
        table = f"{ident('n2w')}.{ident(g.asset_name)}"
        for k in range(1, weeks):
            backend.command(
                # the filter in a subquery: in the outer SELECT, created_time is the shifted alias
                f"INSERT INTO {table} SELECT * REPLACE (created_time + INTERVAL {7 * k} DAY AS created_time) "
                f"FROM (SELECT * FROM {table} WHERE created_time >= {{a:DateTime64(6, 'UTC')}} "
                "AND created_time < {b:DateTime64(6, 'UTC')})",
                {"a": f"{START:%Y-%m-%d %H:%M:%S}", "b": f"{START + week:%Y-%m-%d %H:%M:%S}"})
        backend.command(f"OPTIMIZE TABLE {table} FINAL")
    return 7 * weeks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one ship-day instead of a ship-week")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return 0
    base = Settings.from_env()
    settings = export_settings(base)
    catalog = load_catalog(settings.channel_lists_dir)
    url = database_url(settings)
    backfill.bench_dagster_env(base)
    days = 1 if args.quick else 7
    scratch = Path(base.state_dir) / "bench_export"
    with psycopg.connect(url, autocommit=True) as conn:
        n, secs = backfill.ensure_data(conn, replace(settings, target_schema=backfill.TARGET), catalog,
                                       START, START + days * DAY)
        if n:
            print(f"generated {n:,} narrow rows in {secs:.0f} s")
        ensure_wide(conn, settings, catalog, days)
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(
            sql.Identifier(settings.target_schema, settings.table_name(SHIP, 2))))
    rows_out: list[dict] = []
    server = ServerCpu(url)

    def measured(fn) -> dict:  # noqa: ANN001
        s0, c0 = server.read(), cpu_seconds()
        r = fn()
        r.setdefault("client_cpu_s", cpu_seconds() - c0)  # a child process reports its own
        s1 = server.read()
        r["server_cpu_s"] = None if s0 is None or s1 is None else s1 - s0
        return r

    def line(name: str, r: dict, note: str = "") -> None:
        m = {"method": name, **r, "rows_per_s": r["rows"] / r["seconds"],
             "cells_per_s": r["cells"] / r["seconds"], "note": note}
        rows_out.append(m)
        rss = f"{r['peak_rss'] / 2**20:,.0f} MB" if r.get("peak_rss") else ""
        print(f"  {name:<52} {r['rows']:>9,} rows {r['seconds']:>7.1f} s {m['rows_per_s']:>9,.0f} rows/s "
              f"{m['cells_per_s']:>12,.0f} cells/s {rss:>8} {cpu_text(m)}", flush=True)
        if r.get("phases"):
            shown = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items() if v >= 0.05)
            print(f"      seconds by phase: {shown}")

    def fresh_targets() -> None:
        for sub in ("parquet", "clickhouse", "clickhouse.lock"):
            target = scratch / sub
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)

    shutil.rmtree(scratch, ignore_errors=True)
    line("polars.read_database(...).write_parquet(...) per day", measured(lambda: polars_baseline(
        url, settings, catalog, days, scratch / "polars")))
    line("COPY (SELECT ...) TO STDOUT (FORMAT csv) to a file per day", measured(lambda: copy_csv_baseline(
        url, settings, catalog, days, scratch / "csv")))
    line("n2w -> Parquet, one ship-day", measured(lambda: run_child("parquet", 1)))
    if days > 1:
        line(f"n2w -> Parquet, one ship-week ({days} days)", measured(lambda: run_child("parquet", days)))
    line(f"n2w -> ClickHouse (chDB), {days} day(s)", measured(lambda: run_child("clickhouse", days)))
    q = query_bench(url, settings, catalog, days, settle=True)  # on the table as one load left it
    line(f"n2w -> ClickHouse again (replaces each ship-day), {days} day(s)",
         measured(lambda: run_child("clickhouse", days)))
    fresh_targets()
    line(f"n2w -> both, {days} day(s)", measured(lambda: run_child("both", days)), "first export")
    fresh_targets()
    line(f"n2w export --to both through Dagster, {days} day(s)", measured(lambda: run_child("dagster", days)),
         "first export, run start-up included")
    longer = None
    if days == 7:
        longer = query_bench(url, settings, catalog, extend_to_weeks(url, settings, catalog, 4))
    for qq in (q, longer):
        if qq:
            ms = {k: v * 1000 for k, v in qq.items() if k.endswith("_s")}
            print(f"  hourly avg of {qq['channels']} channels over {qq['days']} days ({qq['hours']} hours), "
                  f"one ship: PostgreSQL {ms['postgres_s']:.1f} ms, ClickHouse {ms['clickhouse_s']:.1f} ms "
                  f"({qq['postgres_s'] / qq['clickhouse_s']:.1f}x, {qq['clickhouse_parts']} parts); "
                  "ClickHouse "
                  f"SELECT count() on the table {ms['clickhouse_count_s']:.1f} ms, SELECT 1 "
                  f"{ms['clickhouse_select1_s']:.1f} ms")
            if "clickhouse_settled_s" in qq:
                print(f"    after ClickHouse's background merges ({qq['settle_s']:.0f} s, "
                      f"{qq['clickhouse_settled_parts']} parts): ClickHouse "
                      f"{ms['clickhouse_settled_s']:.1f} ms "
                      f"({qq['postgres_s'] / qq['clickhouse_settled_s']:.1f}x), SELECT count() "
                      f"{ms['clickhouse_settled_count_s']:.1f} ms")
    polars_rate = rows_out[0]["rows_per_s"]
    parquet = next(m for m in reversed(rows_out) if m["method"].startswith("n2w -> Parquet"))
    chm = next(m for m in rows_out if m["method"].startswith("n2w -> ClickHouse (chDB)"))
    day_rss = next(m for m in rows_out if m["method"] == "n2w -> Parquet, one ship-day")["peak_rss"]
    summary = {
        "parquet_x_polars": parquet["rows_per_s"] / polars_rate,
        "parquet_peak_rss_mb": parquet["peak_rss"] / 2**20,
        "parquet_rss_week_over_day": parquet["peak_rss"] / day_rss,
        "clickhouse_over_parquet_rate": chm["rows_per_s"] / parquet["rows_per_s"],
        "clickhouse_peak_rss_mb": chm["peak_rss"] / 2**20,
        "query_x": q["postgres_s"] / q["clickhouse_s"],
        "query_x_settled": q["postgres_s"] / q["clickhouse_settled_s"],
        "query_x_longer": longer["postgres_s"] / longer["clickhouse_s"] if longer else None,
    }
    print()
    print(f"{'method':<64} {'rows/s':>9} {'cells/s':>12} {'x polars':>8} {'peak RSS':>9}  CPU s per ship-day")
    for m in rows_out:
        rss = f"{m['peak_rss'] / 2**20:,.0f} MB" if m.get("peak_rss") else ""
        print(f"{m['method']:<64} {m['rows_per_s']:>9,.0f} {m['cells_per_s']:>12,.0f} "
              f"{m['rows_per_s'] / polars_rate:>8.2f} {rss:>9}  {cpu_text(m)}")
    print()
    longer_text = (f", over {longer['days']} days {summary['query_x_longer']:.1f}x" if longer else "")
    print(f"targets: Parquet {summary['parquet_x_polars']:.2f}x polars (>= 2); peak RSS "
          f"{summary['parquet_peak_rss_mb']:.0f} MB (<= 1024), "
          f"week/day {summary['parquet_rss_week_over_day']:.2f} "
          f"(flat); ClickHouse {summary['clickhouse_over_parquet_rate']:.2f}x Parquet rows/s (>= 0.5), "
          f"peak RSS {summary['clickhouse_peak_rss_mb']:.0f} MB; query {summary['query_x']:.1f}x faster "
          f"on ClickHouse (>= 10) as loaded, {summary['query_x_settled']:.1f}x after its merges{longer_text}")
    folder = ROOT / "benchmarks" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"export-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"methods": rows_out, "query": q, "query_longer": longer, "summary": summary,
                                "machine": {"cpus": os.cpu_count()}}, indent=2, default=str))
    print(f"written {path}")
    return 0


def cpu_text(m: dict) -> str:
    """Client and server CPU seconds per ship-day (a ship-day: the three tables' rows of one day)."""
    ship_days = m["rows"] / ROWS_PER_SHIP_DAY
    if not ship_days or m.get("client_cpu_s") is None:
        return ""
    server = f" + server {m['server_cpu_s'] / ship_days:.2f}" if m.get("server_cpu_s") is not None else ""
    return f"client {m['client_cpu_s'] / ship_days:.2f}{server}"


if __name__ == "__main__":
    sys.exit(main())
