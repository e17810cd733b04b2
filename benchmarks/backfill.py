"""Backfill benchmark: n2w through Dagster against crosstab and other baselines, one run.

    .venv/bin/n2w bench backfill            # reference shape, one ship-week (~40M rows)
    .venv/bin/n2w bench backfill --quick    # one ship-day (~6M rows)
    .venv/bin/n2w bench backfill --fleet    # 8 ships x 1 day in one table (benchmarks/_fleet.py)

Generates the reference fleet shape (1,052 channels, 15 s cadence, ~5 % gaps) for one
ship into the scratch schema ``n2w_bench`` (reused when it already holds the window),
then measures, side by side and on fresh target tables each time:

* the server-side extraction ceiling: the extraction query ``COPY … TO '/dev/null'``
  (superuser) or ``TO STDOUT`` drained without parsing, one day per statement;
* ``tablefunc.crosstab`` into the same three tables, one query per group per day (its
  strongest form: one query over a whole week spills its sorts), the value rule in the query,
  the days shared out over two connections side by side (both cores, as n2w has them);
* n2w through Dagster (``n2w backfill``'s code path, run start-up included) for one
  ship-day and one ship-week, each in a fresh process whose peak RSS is reported;
* ``max(v) FILTER (WHERE channel = …) … GROUP BY created_time`` for one ship-hour;
* row-by-row Python dicts + ``executemany`` upsert for one ship-hour;
* Dagster's own cost for a one-ship-year run (8,784 hour partitions): a no-op asset
  with the wide assets' specs, partitions and backfill policy, run in-process.

Dagster runs of the benchmark go to their own instance database (``n2w_bench_dagster``),
so they never mark partitions of your real instance as materialised. Results are printed
as a table and written to ``benchmarks/results/backfill-<time>.json``.
"""


import argparse
import datetime as dt
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup, load_catalog  # noqa: E402
from n2w_pipeline.config import Settings  # noqa: E402
from n2w_pipeline.database import dagster_storage_url, database_url  # noqa: E402
from n2w_pipeline.extract import NarrowReader  # noqa: E402
from n2w_pipeline.generate import generate  # noqa: E402
from n2w_pipeline.write import ensure_wide_table  # noqa: E402

SOURCE = "n2w_bench"
TARGET = "n2w_bench_wide"
CROSSTAB = "n2w_bench_crosstab"
BASELINE = "n2w_bench_baseline"
SHIP = "IMO9976903"
START = dt.datetime(2025, 3, 1)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
YEAR_HOURS = 8784


def bench_settings(base: Settings, target: str = TARGET, checks: bool = False) -> Settings:
    """The scratch schemas, one ship; asset checks run inside the timed runs only with
    ``checks`` (their cost is measured as a run of its own)."""
    extra = {"checks_in_runs": checks} if hasattr(base, "checks_in_runs") else {}
    return replace(base, source_schema=SOURCE, target_schema=target, ships=(SHIP,),
                   partition_start="2025-01-01-00:00", **extra)


def value_sql(settings: Settings) -> sql.Composed:
    """The value rule in SQL (same as helpers.sql_reference), NaN/±Infinity → NULL."""
    c = settings.columns
    return sql.SQL(
        """(SELECT CASE WHEN x IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
             THEN NULL ELSE x END FROM (SELECT CASE {vf}
      WHEN 'Decimal' THEN {dv} WHEN 'Integer' THEN {lv}::float8
      WHEN 'Boolean' THEN CASE WHEN {bv} THEN 1.0 WHEN NOT {bv} THEN 0.0 END
      WHEN 'String' THEN CASE WHEN pg_input_is_valid(btrim({sv}), 'float8')
                              THEN btrim({sv})::float8 END END AS x) v)"""
    ).format(vf=sql.Identifier(c.value_format), dv=sql.Identifier(c.double_v),
             lv=sql.Identifier(c.long_v), bv=sql.Identifier(c.bool_v), sv=sql.Identifier(c.str_v))


# ---------------------------------------------------------------- data

def ensure_data(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
                start: dt.datetime, end: dt.datetime) -> tuple[int, float]:
    """Generate the window unless its first and last hours already have rows; then VACUUM
    and ANALYZE it (ANALYZE only if it existed), so every method is timed on a table in the
    state of a live one, with statistics and no autovacuum running."""
    src = sql.Identifier(*settings.source_qualified)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (src.as_string(conn),)).fetchone()
    if exists and exists[0]:
        probe = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE ship_id = %s AND created_time >= %s "
                        "AND created_time < %s)").format(src)
        first = conn.execute(probe, (SHIP, start, start + HOUR)).fetchone()
        last = conn.execute(probe, (SHIP, end - HOUR, end)).fetchone()
        if first and first[0] and last and last[0]:
            conn.execute(sql.SQL("ANALYZE {}").format(src))
            return 0, 0.0
    t0 = time.perf_counter()
    n = generate(conn, settings, catalog, [SHIP], start, end, seed=1)
    # a live table is vacuumed; left to autovacuum, it vacuums the fresh table (10+ minutes
    # for a ship-month) while the methods are being timed
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(src))
    return n, time.perf_counter() - t0


def count_rows(conn: psycopg.Connection, settings: Settings, start: dt.datetime, end: dt.datetime) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND created_time >= %s AND created_time < %s")
        .format(sql.Identifier(*settings.source_qualified)), (SHIP, start, end)).fetchone()
    return int(row[0]) if row else 0


def fresh_tables(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
                 hours: tuple[dt.datetime, dt.datetime] | None = None) -> None:
    """Drop and re-create the benchmark's target schema with empty wide tables (with the
    time partitions of ``hours``, for baselines that insert themselves)."""
    schema = sql.Identifier(settings.target_schema)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    for ship in settings.ships:
        for g in catalog.groups:
            ensure_wide_table(conn, settings, g, ship, hours=hours)
    if is_superuser(conn):
        conn.execute("CHECKPOINT")  # every method starts without the previous one's dirty pages


def is_superuser(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------- methods

def ceiling(url: str, settings: Settings, catalog: ChannelCatalog, superuser: bool,
            start: dt.datetime, end: dt.datetime) -> dict:
    """Server producing the extraction's binary COPY (``NarrowReader.discard``), one day per
    statement, no client; without superuser rights the reader's whole read instead."""
    channels = [ch for g in catalog.groups for ch in g.channels]
    with NarrowReader(url, settings, channels) as reader:
        t0 = time.perf_counter()
        day = start
        while day < end:
            nxt = min(day + DAY, end)
            if superuser:
                reader.discard(SHIP, day, nxt)
            else:
                reader.read(SHIP, day, nxt)
            day = nxt
        seconds = time.perf_counter() - t0
    return {"seconds": seconds,
            "how": ("COPY (extract) TO '/dev/null'" if superuser
                    else "the reader's read, client parsing included")}


def crosstab(url: str, settings: Settings, catalog: ChannelCatalog,
             ship_days: list[tuple[str, dt.datetime, dt.datetime]], streams: int = 2) -> dict:
    """tablefunc.crosstab, one INSERT … SELECT per group per ship-day, value rule in the
    query; the ship-days shared out over ``streams`` connections working side by side
    (both cores, as n2w has them)."""
    from concurrent.futures import ThreadPoolExecutor

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS tablefunc")

    def stream(items: list[tuple[str, dt.datetime, dt.datetime]]) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            for ship, day, nxt in items:
                for g in catalog.groups:
                    crosstab_group(conn, settings, g, ship, day, nxt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        for f in [pool.submit(stream, ship_days[i::streams]) for i in range(streams)]:
            f.result()
    return {"seconds": time.perf_counter() - t0}


def crosstab_group(conn: psycopg.Connection, settings: Settings, g: ChannelGroup, ship: str,
                   day: dt.datetime, nxt: dt.datetime) -> None:
    c = settings.columns
    source = sql.SQL(
        "SELECT {ct}, {ch}, {val} FROM {src} WHERE {ship} = {s} AND {ct} >= {a} AND {ct} < {b} "
        "AND {ch} = ANY({chans}) ORDER BY 1"
    ).format(ct=sql.Identifier(c.created_time), ch=sql.Identifier(c.channel),
             val=value_sql(settings), src=sql.Identifier(*settings.source_qualified),
             ship=sql.Identifier(c.ship_id), s=sql.Literal(ship), a=sql.Literal(day), b=sql.Literal(nxt),
             chans=sql.Literal(list(g.channels))).as_string(conn)
    categories = sql.SQL(
        "SELECT ch FROM unnest({}::text[]) WITH ORDINALITY u(ch, i) ORDER BY i"
    ).format(sql.Literal(list(g.channels))).as_string(conn)
    cols = [sql.Identifier("created_time")] + [sql.Identifier(col) for col in g.columns]
    coldefs = sql.SQL(", ").join(
        [sql.SQL("created_time timestamp")]
        + [sql.SQL("{} float8").format(sql.Identifier(col)) for col in g.columns])
    # the two query texts are crosstab's arguments: bound as values
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT * FROM crosstab(%s, %s) AS ct({})").format(
            sql.Identifier(settings.target_schema, settings.table_name(ship, g.number)),
            sql.SQL(", ").join(cols), coldefs),
        (source, categories),
    )


def max_filter(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
               start: dt.datetime, end: dt.datetime) -> dict:
    """``max(v) FILTER (WHERE channel = …)`` per column, GROUP BY created_time, per group."""
    c = settings.columns
    t0 = time.perf_counter()
    for g in catalog.groups:
        aggs = sql.SQL(", ").join(sql.SQL("max(v) FILTER (WHERE ch = %s)") for _ in g.channels)
        cols = [sql.Identifier("created_time")] + [sql.Identifier(col) for col in g.columns]
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} ({cols}) SELECT t, {aggs} FROM (SELECT {ct} AS t, {ch} AS ch, {val} AS v "
                "FROM {src} WHERE {ship} = %s AND {ct} >= %s AND {ct} < %s AND {ch} = ANY(%s)) n "
                "GROUP BY t"
            ).format(t=sql.Identifier(settings.target_schema, settings.table_name(SHIP, g.number)),
                     cols=sql.SQL(", ").join(cols), aggs=aggs, ct=sql.Identifier(c.created_time),
                     ch=sql.Identifier(c.channel), val=value_sql(settings),
                     src=sql.Identifier(*settings.source_qualified), ship=sql.Identifier(c.ship_id)),
            (*g.channels, SHIP, start, end, list(g.channels)),
        )
    return {"seconds": time.perf_counter() - t0}


def executemany_rows(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
                     start: dt.datetime, end: dt.datetime) -> dict:
    """The replaced system's way: rows as Python tuples, dicts per timestamp, executemany
    ``INSERT … ON CONFLICT DO UPDATE`` of wide rows in batches of 50,000 narrow rows."""
    import math

    c = settings.columns
    t0 = time.perf_counter()
    rows = conn.execute(
        sql.SQL("SELECT {ct}, {ch}, {vf}, {dv}, {lv}, {bv}, {sv} FROM {src} "
                "WHERE {ship} = %s AND {ct} >= %s AND {ct} < %s").format(
            ct=sql.Identifier(c.created_time), ch=sql.Identifier(c.channel),
            vf=sql.Identifier(c.value_format), dv=sql.Identifier(c.double_v),
            lv=sql.Identifier(c.long_v), bv=sql.Identifier(c.bool_v), sv=sql.Identifier(c.str_v),
            src=sql.Identifier(*settings.source_qualified), ship=sql.Identifier(c.ship_id)),
        (SHIP, start, end)).fetchall()

    def value(fmt, dv, lv, bv, sv):  # noqa: ANN001, ANN202
        if fmt == "Decimal":
            x = dv
        elif fmt == "Integer":
            x = None if lv is None else float(lv)
        elif fmt == "Boolean":
            x = None if bv is None else float(bv)
        elif fmt == "String":
            try:
                x = float(sv.strip()) if sv is not None else None
            except ValueError:
                x = None
        else:
            x = None
        return x if x is None or math.isfinite(x) else None

    statements = {}
    for g in catalog.groups:
        cols = [sql.Identifier("created_time")] + [sql.Identifier(col) for col in g.columns]
        statements[g.number] = sql.SQL(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (created_time) DO UPDATE SET {}").format(
            sql.Identifier(settings.target_schema, settings.table_name(SHIP, g.number)),
            sql.SQL(", ").join(cols), sql.SQL(", ").join(sql.Placeholder() for _ in cols),
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(col) for col in cols[1:]))
    for i in range(0, len(rows), 50_000):
        wide: dict[int, dict[dt.datetime, dict[str, float | None]]] = {g.number: {} for g in catalog.groups}
        for t, ch, fmt, dv, lv, bv, sv in rows[i:i + 50_000]:
            loc = catalog.locate(ch)
            if loc is None:
                continue
            wide[loc[0]].setdefault(t, {})[ch] = value(fmt, dv, lv, bv, sv)
        with conn.cursor() as cur:
            for g in catalog.groups:
                params = [(t, *(vals.get(ch) for ch in g.channels)) for t, vals in wide[g.number].items()]
                if params:
                    cur.executemany(statements[g.number], params)
    return {"seconds": time.perf_counter() - t0}


def n2w_run(start: dt.datetime, end: dt.datetime, parallel: int = 1, checks: bool = False,
            source: str = SOURCE, ships: tuple[str, ...] = (SHIP,),
            ships_per_run: int | None = None) -> dict:
    """n2w through Dagster (``n2w backfill``'s code path) in a fresh process: wall time of
    the runs, and the peak RSS of the process or worker that peaked (a run's process).
    ``ships_per_run``: N2W_BACKFILL_SHIPS_PER_RUN of n2w backfill's plan (None: its default)."""
    spec = {"start": start.isoformat(), "end": end.isoformat(), "parallel": parallel, "checks": checks,
            "source": source, "ships": list(ships), "ships_per_run": ships_per_run}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"n2w run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(text: str) -> None:
    from n2w_pipeline.commands._common import run_backfill
    from n2w_pipeline.priority import lower_priority

    spec = json.loads(text)
    ships = tuple(spec["ships"])
    settings = replace(bench_settings(Settings.from_env(), checks=spec["checks"]),
                       source_schema=spec["source"], ships=ships)
    if spec.get("ships_per_run"):
        settings = replace(settings, backfill_ships_per_run=spec["ships_per_run"])
    start, end = dt.datetime.fromisoformat(spec["start"]), dt.datetime.fromisoformat(spec["end"])
    lower_priority(settings.backfill_nice)  # as `n2w backfill` does (alone on the machine: no effect)
    t0 = time.perf_counter()
    summaries = run_backfill(settings, list(ships), start, end, quiet=True, parallel=spec["parallel"])
    seconds = time.perf_counter() - t0
    rows = sum(next(iter(s["assets"].values()))["narrow_rows_read"] for s in summaries)
    # --parallel runs in worker processes (waited for: RUSAGE_CHILDREN is the largest one's)
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({"seconds": seconds, "rows": rows, "runs": len(summaries), "peak_rss": rss * 1024}))


def run_creation(settings: Settings, catalog: ChannelCatalog) -> dict:
    """Dagster's cost for one run over one ship × 8,784 hours, work skipped: a no-op
    multi-asset with the wide assets' specs, partitions and backfill policy."""
    import dagster as dg

    from n2w_pipeline.defs.partitions import partition_key, wide_partitions
    from n2w_pipeline.defs.wide_assets import _spec

    marks: dict[str, float] = {}

    @dg.multi_asset(name="narrow_to_wide", specs=[_spec(settings, g) for g in catalog.groups],
                    partitions_def=wide_partitions(settings),
                    backfill_policy=dg.BackfillPolicy.multi_run(YEAR_HOURS), can_subset=True)
    def noop(context: dg.AssetExecutionContext):  # noqa: ANN202
        marks["body_start"] = time.perf_counter()
        marks["partitions"] = len(context.partition_keys)
        for g in catalog.groups:
            yield dg.MaterializeResult(asset_key=dg.AssetKey(g.asset_name))

    first = dt.datetime(2025, 1, 1)
    last = first + dt.timedelta(hours=YEAR_HOURS - 1)
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [noop], instance=instance,
            tags={"dagster/asset_partition_range_start": partition_key(SHIP, first),
                  "dagster/asset_partition_range_end": partition_key(SHIP, last),
                  "n2w/launched_by": "n2w bench backfill (run creation)"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    t_end = time.perf_counter()
    assert result.success
    # the body's yields return only after Dagster stored their per-partition events
    return {"partitions": marks["partitions"], "create_and_start_s": marks["body_start"] - t0,
            "finish_s": t_end - marks["body_start"], "total_s": t_end - t0}


# ---------------------------------------------------------------- main

def bench_dagster_env(base: Settings) -> None:
    """Point this process (and its children) at a benchmark-only Dagster instance database."""
    from n2w_pipeline.instance import apply_dagster_env

    url = database_url(base)
    storage = dagster_storage_url(base)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            have = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'n2w_bench_dagster'").fetchone()
            if not have:
                conn.execute("CREATE DATABASE n2w_bench_dagster")
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(storage)
        storage = urlunsplit(parts._replace(path="/n2w_bench_dagster"))
    except psycopg.Error as exc:
        print(f"note: cannot create database n2w_bench_dagster ({exc}); benchmark runs go to "
              "the configured Dagster instance", file=sys.stderr)
    os.environ["N2W_DAGSTER_PG_URL"] = storage
    apply_dagster_env(base)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one ship-day of data (n2w: 6 h and a day)")
    p.add_argument("--month", action="store_true",
                   help="also generate and run a ship-month (30 days; ~10 min of generation)")
    p.add_argument("--parallel", type=int, default=1, help="n2w backfill --parallel for the runs")
    p.add_argument("--no-checks-run", action="store_true",
                   help="skip the extra ship-week run with the in-run asset checks on")
    p.add_argument("--fleet", action="store_true",
                   help="the fleet benchmark instead: 8 ships x 1 day interleaved in one table "
                   "(benchmarks/_fleet.py)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return 0
    if args.fleet:
        import _fleet

        return _fleet.main(args)

    base = Settings.from_env()
    settings = bench_settings(base)
    catalog = load_catalog(settings.channel_lists_dir)
    url = database_url(settings)
    bench_dagster_env(base)
    days = 30 if args.month else 1 if args.quick else 7
    end = START + days * DAY
    week_end = START + (1 if args.quick else 7) * DAY
    small_end = START + (dt.timedelta(hours=6) if args.quick else DAY)
    results: dict = {"machine": {"cpus": os.cpu_count()}, "shape": {"channels": len(catalog.all_channels),
                                                                   "cadence_s": 15, "ship": SHIP}}
    rows_out = []

    def line(name: str, rows: int, seconds: float, rss: int | None = None, note: str = "") -> None:
        rows_out.append({"method": name, "narrow_rows": rows, "seconds": seconds,
                         "rows_per_s": rows / seconds if seconds else 0.0, "peak_rss": rss, "note": note})
        print(f"  {name:<46} {rows:>12,} rows {seconds:>8.1f} s {rows / seconds:>12,.0f} rows/s", flush=True)

    with psycopg.connect(url, autocommit=True) as conn:
        n, secs = ensure_data(conn, settings, catalog, START, end)
        if n:
            print(f"generated {n:,} narrow rows in {secs:.0f} s ({n / secs:,.0f} rows/s)")
        week_rows = count_rows(conn, settings, START, week_end)
        hour_rows = count_rows(conn, settings, START, START + HOUR)
        print(f"data: {week_rows:,} narrow rows in {SOURCE} for {SHIP} "
              f"{START:%Y-%m-%d} .. {week_end:%Y-%m-%d}")

        r = ceiling(url, settings, catalog, is_superuser(conn), START, week_end)
        line(f"extraction ceiling ({r['how']})", week_rows, r["seconds"])
        cross = replace(settings, target_schema=CROSSTAB)
        fresh_tables(conn, cross, catalog, (START, week_end))
        days = [(SHIP, START + i * DAY, min(START + (i + 1) * DAY, week_end))
                for i in range(-(-(week_end - START) // DAY))]
        r = crosstab(url, cross, catalog, days, streams=2)
        line("tablefunc.crosstab, per group per day, 2 streams", week_rows, r["seconds"])
        base_s = replace(settings, target_schema=BASELINE)
        fresh_tables(conn, base_s, catalog, (START, START + HOUR))
        r = max_filter(conn, base_s, catalog, START, START + HOUR)
        line("max() FILTER … GROUP BY, one ship-hour", hour_rows, r["seconds"])
        fresh_tables(conn, base_s, catalog, (START, START + HOUR))
        r = executemany_rows(conn, base_s, catalog, START, START + HOUR)
        line("row-by-row executemany upsert, one ship-hour", hour_rows, r["seconds"])

        big = "day" if args.quick else "week"
        runs = [("n2w through Dagster, one ship-" + ("6 h" if args.quick else "day"), small_end, False)]
        runs.append((f"n2w through Dagster, one ship-{big}", week_end, False))
        if not args.no_checks_run:
            runs.append((f"n2w + in-run asset checks, one ship-{big}", week_end, True))
        if args.month:
            runs.append(("n2w through Dagster, one ship-month", end, False))
        for name, stop, checks in runs:
            fresh_tables(conn, settings, catalog)
            r = n2w_run(START, stop, args.parallel, checks)
            line(name, r["rows"], r["seconds"], r["peak_rss"],
                 f"{r['runs']} run(s), slices of {settings.slice_hours} h")
    creation = run_creation(settings, catalog)
    results["run_creation_one_ship_year"] = creation
    results["methods"] = rows_out
    cross_rate = next(m["rows_per_s"] for m in rows_out if m["method"].startswith("tablefunc"))
    ceil_rate = rows_out[0]["rows_per_s"]

    print()
    print(f"{'method':<48} {'narrow rows':>12} {'s':>7} {'rows/s':>11} {'x crosstab':>10} "
          f"{'x ceiling':>9} {'peak RSS':>9}")
    for m in rows_out:
        rss = f"{m['peak_rss'] / 2**20:,.0f} MB" if m["peak_rss"] else ""
        m["x_crosstab"] = m["rows_per_s"] / cross_rate
        m["x_ceiling"] = m["rows_per_s"] / ceil_rate
        print(f"{m['method']:<48} {m['narrow_rows']:>12,} {m['seconds']:>7.1f} {m['rows_per_s']:>11,.0f} "
              f"{m['x_crosstab']:>10.2f} {m['x_ceiling']:>9.2f} {rss:>9}")
    print()
    print(f"Dagster, one run of {creation['partitions']:,} partitions (1 ship-year, no-op body): "
          f"created and started in {creation['create_and_start_s']:.1f} s, finished "
          f"({len(catalog.groups)} x {creation['partitions']:,} materialisations) in "
          f"{creation['finish_s']:.1f} s, {creation['total_s']:.1f} s in all")
    with_checks = [m for m in rows_out if "asset checks" in m["method"]]
    plain = [m for m in rows_out if m["method"] == f"n2w through Dagster, one ship-{big}"]
    if with_checks and plain:
        extra = with_checks[0]["seconds"] / plain[0]["seconds"] - 1
        results["checks_overhead"] = extra
        print(f"in-run asset checks add {100 * extra:+.1f} % to the ship-{big} backfill "
              f"({plain[0]['seconds']:.1f} s -> {with_checks[0]['seconds']:.1f} s)")
    n2w = [m for m in rows_out if m["method"].startswith("n2w through") and m["peak_rss"]]
    for a, b in itertools.pairwise(n2w):  # day → week (→ month): bounded by the slice, not the range
        ratio = b["peak_rss"] / a["peak_rss"]
        results.setdefault("peak_rss_ratios", {})[f"{b['method']} / {a['method']}"] = ratio
        print(f"peak RSS {b['method'].split(', ')[-1]} / {a['method'].split(', ')[-1]}: {ratio:.2f}")
    folder = ROOT / "benchmarks" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"backfill-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
