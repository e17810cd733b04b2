"""Fleet benchmark (``n2w bench backfill --fleet``): a narrow table holding the whole fleet.

Generates 8 ships × 1 day of the reference shape into one table, ``n2w_bench_fleet``,
interleaved hour by hour as ingestion lays it out (kept for the next run), and measures in
one run, on fresh target tables each time:

* the extraction ceilings on that table, the server producing the binary COPY into
  ``/dev/null`` on one connection: n2w's fleet read (8 ships, 3 hours a statement) and its
  one-ship read (a ship-day a statement, ship after ship);
* ``tablefunc.crosstab`` per group per ship-day, the ship-days in two streams (both cores);
* ``n2w backfill`` of the 8 ships (runs of neighbouring ships × hours, one read per slice
  for all of them), ``--parallel 1`` and ``2``: the better is the CLI's best;
* n2w in runs of one ship each, as the UI's "Materialize all…" cuts a fleet backfill
  (8 runs, two at a time), on the table as generated (PostgreSQL 18 skip-scans the primary
  key), then with ``n2w prepare``'s ``(ship_id, created_time)`` index (its build timed;
  dropped again afterwards, so the next run finds the table as generated);
* for comparison, n2w on one ship-week alone in its table (``n2w_bench``, the backfill
  benchmark's data; generated if missing), in the same run.

Before each timed method the narrow table it reads is read into the page cache (``warm``):
the two tables together are about the machine's free memory, and a method would otherwise
pay for what the previous one evicted.

Peak RSS is per run's process (the worker's with ``--parallel 2``). Results are printed and
written to ``benchmarks/results/backfill-fleet-<time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import time
from dataclasses import replace

import psycopg
from backfill import (
    DAY,
    ROOT,
    SHIP,
    START,
    bench_dagster_env,
    bench_settings,
    count_rows,
    crosstab,
    ensure_data,
    fresh_tables,
    is_superuser,
    n2w_run,
)
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog, load_catalog
from n2w_pipeline.config import REFERENCE_SHIPS, Settings
from n2w_pipeline.database import database_url
from n2w_pipeline.extract import NarrowReader
from n2w_pipeline.generate import generate
from n2w_pipeline.source_indexes import ensure_ship_time_index, ship_time_index_name

FLEET_SOURCE = "n2w_bench_fleet"
FLEET_CROSSTAB = "n2w_bench_fleet_crosstab"
SHIPS = REFERENCE_SHIPS
HOUR = dt.timedelta(hours=1)


def ensure_fleet_data(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog) -> int:
    """8 ships × START's day, interleaved hour by hour; generated unless the first and last
    ship have rows in the first and last hour. VACUUM ANALYZE after generating."""
    src = sql.Identifier(*settings.source_qualified)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (src.as_string(conn),)).fetchone()
    if exists and exists[0]:
        probe = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE ship_id = %s AND created_time >= %s "
                        "AND created_time < %s)").format(src)
        have = [conn.execute(probe, (ship, h, h + HOUR)).fetchone()
                for ship in (SHIPS[0], SHIPS[-1]) for h in (START, START + DAY - HOUR)]
        if all(r and r[0] for r in have):
            conn.execute(sql.SQL("ANALYZE {}").format(src))
            return 0
    t0 = time.perf_counter()
    n = generate(conn, settings, catalog, SHIPS, START, START + DAY, seed=1, interleave=True)
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(src))
    print(f"generated {n:,} narrow rows (8 ships x 1 day, interleaved) in {time.perf_counter() - t0:.0f} s")
    return n


def ceilings(url: str, settings: Settings, catalog: ChannelCatalog, superuser: bool) -> dict[str, float]:
    """Seconds for the fleet read (3 h of the 8 ships a statement) and the one-ship read (a
    ship-day a statement) of the whole table, server side only (or read by the client
    without superuser rights)."""
    channels = [ch for g in catalog.groups for ch in g.channels]
    out = {}
    with NarrowReader(url, settings, channels) as reader:
        go = reader.discard if superuser else reader.read_fleet
        t0 = time.perf_counter()
        for i in range(8):
            go(SHIPS, START + 3 * i * HOUR, START + 3 * (i + 1) * HOUR)  # type: ignore[arg-type]
        out["fleet"] = time.perf_counter() - t0
        warm(url, settings.source_schema)
        one = reader.discard if superuser else reader.read
        t0 = time.perf_counter()
        for ship in SHIPS:
            one(ship, START, START + DAY)  # type: ignore[arg-type]
        out["one_ship"] = time.perf_counter() - t0
    return out


def warm(url: str, schema: str, table: str = "tbl_data_timeseries") -> bool:
    """Read the narrow table's files (heap and indexes) into the page cache before a timed
    method, so no method pays for the previous one's reads (the two narrow tables together
    are about the machine's free memory). Needs the server's files on this machine (the
    embedded server); False, and nothing done, otherwise."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            (data,) = conn.execute("SHOW data_directory").fetchone() or ("",)
        except psycopg.Error:
            return False
        files = conn.execute(
            "SELECT pg_relation_filepath(c) FROM (SELECT %s::regclass AS c UNION ALL "
            "SELECT indexrelid::regclass FROM pg_index WHERE indrelid = %s::regclass) r",
            (f"{schema}.{table}",) * 2).fetchall()
    try:
        for (rel,) in files:
            base = os.path.join(data, rel)
            for path in [base] + sorted(glob.glob(base + ".*")):
                with open(path, "rb", buffering=0) as f:
                    while f.read(1 << 24):
                        pass
    except OSError:
        return False
    return True


def drop_ship_time_index(conn: psycopg.Connection, settings: Settings) -> None:
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
        sql.Identifier(settings.source_schema, ship_time_index_name(settings))))


def main(args: argparse.Namespace) -> int:
    base = Settings.from_env()
    one = bench_settings(base)
    fleet = replace(one, source_schema=FLEET_SOURCE, ships=SHIPS)
    catalog = load_catalog(one.channel_lists_dir)
    url = database_url(one)
    bench_dagster_env(base)
    week_end = START + 7 * DAY
    rows_out: list[dict] = []

    def line(name: str, rows: int, seconds: float, rss: int | None = None, note: str = "") -> None:
        rows_out.append({"method": name, "narrow_rows": rows, "seconds": seconds,
                         "rows_per_s": rows / seconds if seconds else 0.0, "peak_rss": rss, "note": note})
        print(f"  {name:<58} {rows:>11,} rows {seconds:>7.1f} s {rows / seconds:>11,.0f} rows/s"
              + (f" {rss / 2**20:>6,.0f} MB" if rss else ""), flush=True)

    def n2w(name: str, **kw: object) -> dict:
        source = str(kw.get("source", FLEET_SOURCE))
        with psycopg.connect(url, autocommit=True) as conn:
            fresh_tables(conn, fleet if source == FLEET_SOURCE else one, catalog)
        warm(url, source)
        r = n2w_run(**kw)  # type: ignore[arg-type]
        line(name, r["rows"], r["seconds"], r["peak_rss"], f"{r['runs']} run(s)")
        return r

    with psycopg.connect(url, autocommit=True) as conn:
        ensure_fleet_data(conn, fleet, catalog)
        ensure_data(conn, one, catalog, START, week_end)
        drop_ship_time_index(conn, fleet)  # left by an interrupted earlier run
        fleet_rows = _fleet_rows(conn, fleet)
        week_rows = count_rows(conn, one, START, week_end)
        superuser = is_superuser(conn)
    print(f"data: {fleet_rows:,} narrow rows in {FLEET_SOURCE} (8 ships x {START:%Y-%m-%d}, interleaved); "
          f"{week_rows:,} in n2w_bench ({SHIP}, {START:%Y-%m-%d} + 7 days)")

    if not warm(url, FLEET_SOURCE):
        print("note: the narrow tables' files are not on this machine: each method finds the page "
              "cache as the previous one left it")
    c = ceilings(url, fleet, catalog, superuser)
    how = "COPY TO '/dev/null'" if superuser else "read by the client"
    line(f"extraction ceiling, fleet read (8 ships x 3 h), {how}", fleet_rows, c["fleet"])
    line(f"extraction ceiling, one-ship reads (ship-days), {how}", fleet_rows, c["one_ship"])
    cross = replace(fleet, target_schema=FLEET_CROSSTAB)
    with psycopg.connect(url, autocommit=True) as conn:
        fresh_tables(conn, cross, catalog, (START, START + DAY))
    warm(url, FLEET_SOURCE)
    r = crosstab(url, cross, catalog, [(s, START, START + DAY) for s in SHIPS], streams=2)
    line("tablefunc.crosstab per group per ship-day, 2 streams", fleet_rows, r["seconds"])
    fleet_kw = {"start": START, "end": START + DAY, "source": FLEET_SOURCE, "ships": SHIPS}
    for parallel in (1, 2):  # blocks of 8 ships x 12 h (N2W_BACKFILL_SHIPS_PER_RUN=8): fleet reads
        n2w(f"n2w backfill, 8 ships x day, --parallel {parallel}", parallel=parallel, **fleet_kw)
    n2w("n2w, a run per ship (the UI's cut), 2 at a time", parallel=2, ships_per_run=1, **fleet_kw)
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        ensure_ship_time_index(conn, fleet)
        built = time.perf_counter() - t0
    print(f"  n2w prepare: (ship_id, created_time) index built in {built:.1f} s")
    try:
        n2w("n2w, a run per ship, 2 at a time, with that index", parallel=2, ships_per_run=1, **fleet_kw)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            drop_ship_time_index(conn, fleet)
    n2w("n2w backfill, one ship-week alone in its table", start=START, end=week_end)
    return report(rows_out, built)


def _fleet_rows(conn: psycopg.Connection, settings: Settings) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_time >= %s AND created_time < %s")
                       .format(sql.Identifier(*settings.source_qualified)), (START, START + DAY)).fetchone()
    return int(row[0]) if row else 0


def report(rows_out: list[dict], index_build_s: float) -> int:
    cross = next(m for m in rows_out if m["method"].startswith("tablefunc"))
    single = rows_out[-1]
    fleet_runs = [m for m in rows_out if m["method"].startswith("n2w backfill, 8 ships")]
    best = max(fleet_runs, key=lambda m: m["rows_per_s"])
    print()
    print(f"{'method':<60} {'narrow rows':>11} {'s':>7} {'rows/s':>11} {'x crosstab':>10} "
          f"{'x 1-ship':>8} {'peak RSS':>9}")
    for m in rows_out:
        m["x_crosstab"] = m["rows_per_s"] / cross["rows_per_s"]
        m["x_one_ship_table"] = m["rows_per_s"] / single["rows_per_s"]
        rss = f"{m['peak_rss'] / 2**20:,.0f} MB" if m["peak_rss"] else ""
        print(f"{m['method']:<60} {m['narrow_rows']:>11,} {m['seconds']:>7.1f} {m['rows_per_s']:>11,.0f} "
              f"{m['x_crosstab']:>10.2f} {m['x_one_ship_table']:>8.2f} {rss:>9}")
    print()
    rss = max(m["peak_rss"] or 0 for m in rows_out)
    summary = {
        "best_fleet_method": best["method"],
        "fleet_x_crosstab": best["x_crosstab"],
        "fleet_x_one_ship_table": best["x_one_ship_table"],
        "max_peak_rss_mb": rss / 2**20,
        "index_build_s": index_build_s,
    }
    print(f"fleet table, CLI's best ({best['method'].split(', ')[-1]}): {best['x_crosstab']:.2f}x crosstab "
          f"(target >= 2.0), {best['x_one_ship_table']:.2f}x the one-ship table's rows/s (target >= 0.9); "
          f"largest peak RSS of a run {rss / 2**20:,.0f} MB (target <= 1 GB)")
    folder = ROOT / "benchmarks" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"backfill-fleet-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "methods": rows_out,
                                "summary": summary}, indent=2, default=str))
    print(f"written {path}")
    return 0
