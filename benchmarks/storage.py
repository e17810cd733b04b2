"""Storage benchmark: partitioned vs unpartitioned wide tables, rollups, retention, one run.

    .venv/bin/n2w bench storage              # backfill 2 ship-days each way, a ship-month of queries
    .venv/bin/n2w bench storage --quick      # backfill 6 ship-hours each way, a thinner month
    .venv/bin/n2w bench storage --days 30    # backfill the whole ship-month (~180M narrow rows)

Uses the backfill benchmark's generated narrow data (schema ``n2w_bench``, ship IMO9976903 from
2025-03-01; generated if missing), then, side by side in the same run:

* **backfill** rows/s of ``materialize_window`` (the code path of every backfill and realtime
  run) into partitioned tables and into plain (unpartitioned) tables of the same shape, on
  fresh tables each time, alternating (P, U, P, U, …; the best of each is compared);
* a **ship-month** of wide rows (March 2025: the backfilled days repeated over the month, so the
  values have the reference shape) in a partitioned and in a plain table set, and its hourly
  and daily **rollups** (refresh time per ship-day);
* **queries a dashboard runs** — one channel over one day, hourly averages of 10 channels over
  the month — from the partitioned table, from the rollups and from the plain table (each run
  5 interleaved rounds, medians of the client's time and of
  the server's execution time; the page cache is warm for all);
* **dropping the month**: detach + drop of its partitions vs ``DELETE`` of the same rows from
  the plain tables; **sizes on disk** of each.

Targets: backfill ≥ 0.95× unpartitioned; hourly averages of the month ≥ 50× faster from the
rollups than from the plain table; dropping a month ≤ 1 s. Results are printed and written to
``benchmarks/results/storage-<time>.json``. Run it alone: ``flock /tmp/n2w-bench.lock …``.
"""

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from backfill import SHIP, SOURCE, START, bench_settings, count_rows, ensure_data  # noqa: E402

from n2w_pipeline.channels import TIME_COLUMN, ChannelCatalog, load_catalog  # noqa: E402
from n2w_pipeline.config import Settings  # noqa: E402
from n2w_pipeline.database import database_url  # noqa: E402
from n2w_pipeline.materialize import materialize_window, prepare_tables  # noqa: E402
from n2w_pipeline.storage.partitioning import list_partitions  # noqa: E402
from n2w_pipeline.storage.rollups import ROLLUP_HOURLY, ensure_rollup_tables, refresh_day  # noqa: E402
from n2w_pipeline.write import ensure_support_tables  # noqa: E402

PART, PLAIN = "n2w_bench_part", "n2w_bench_plain"
MONTH, MONTH_END = dt.datetime(2025, 3, 1), dt.datetime(2025, 4, 1)
DAY = dt.timedelta(days=1)


def fresh(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog, plain: bool) -> None:
    """Empty target schema with the wide tables: partitioned (n2w's), or plain ones of the same
    shape (``CREATE TABLE … (LIKE partitioned)`` gives a regular table with the same columns)."""
    schema = sql.Identifier(settings.target_schema)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    prepare_tables(conn, settings, catalog.groups, [SHIP])
    if plain:
        for g in catalog.groups:
            name = settings.table_name(SHIP, g.number)
            t, tmp = sql.Identifier(settings.target_schema, name), sql.Identifier(settings.target_schema, "x")
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(tmp, t))
            conn.execute(sql.SQL("DROP TABLE {}").format(t))
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(tmp, sql.Identifier(name)))
    conn.execute("CHECKPOINT")


def backfill(url: str, conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog, plain: bool,
             end: dt.datetime) -> float:
    fresh(conn, settings, catalog, plain)
    t0 = time.perf_counter()
    materialize_window(url, settings, catalog, SHIP, START, end)
    return time.perf_counter() - t0


def fill_month(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog, days: int) -> int:
    """Repeat the backfilled days over March (only where no row exists yet); returns wide rows."""
    rows = 0
    for g in catalog.groups:
        t = sql.Identifier(settings.target_schema, settings.table_name(SHIP, g.number))
        ct = sql.Identifier(TIME_COLUMN)
        for k in range(days, 31, days):
            conn.execute(sql.SQL(
                "INSERT INTO {t} SELECT {ct} + %s * interval '1 day', {cols} FROM {t} "
                "WHERE {ct} >= %s AND {ct} < %s AND {ct} + %s * interval '1 day' < %s").format(
                t=t, ct=ct, cols=sql.SQL(", ").join(sql.Identifier(c) for c in g.columns)),
                (k, START, START + days * DAY, k, MONTH_END))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t))
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()
        rows += int(row[0]) if row else 0
    return rows


def server_ms(conn: psycopg.Connection, query: sql.Composable, params: tuple) -> float:
    """The server's execution time of ``query`` (EXPLAIN ANALYZE, no per-node timing), in ms."""
    explain = sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {}").format(query)
    plan = conn.execute(explain, params).fetchone()
    assert plan is not None
    return float(plan[0][0]["Execution Time"])


def queries(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
            rounds: int = 5) -> dict[str, dict[str, float]]:
    """The dashboard queries, each variant once per round (interleaved, so a busy moment of the
    machine hits them alike); median client seconds, median server ms, rows."""
    g = catalog.group(2)
    step = len(g.columns) // 10  # 10 channels spread over the group, as a dashboard picks them
    ten_cols, ten_ids = list(g.columns[::step][:10]), list(g.channels[::step][:10])
    day = MONTH + 14 * DAY
    ct = sql.Identifier(TIME_COLUMN)
    todo: dict[str, tuple[sql.Composable, tuple]] = {}
    for label, schema in (("partitioned", PART), ("plain", PLAIN)):
        t = sql.Identifier(schema, settings.table_name(SHIP, 2))
        todo[f"one channel, one day: {label} wide table"] = (sql.SQL(
            "SELECT {ct}, {c} FROM {t} WHERE {ct} >= %s AND {ct} < %s ORDER BY 1").format(
            ct=ct, c=sql.Identifier(ten_cols[0]), t=t), (day, day + DAY))
        todo[f"hourly avg of 10 channels, month: {label} wide table"] = (sql.SQL(
            "SELECT date_trunc('hour', {ct}), {aggs} FROM {t} WHERE {ct} >= %s AND {ct} < %s "
            "GROUP BY 1 ORDER BY 1").format(ct=ct, t=t, aggs=sql.SQL(", ").join(
                sql.SQL("avg({})").format(sql.Identifier(c)) for c in ten_cols)), (MONTH, MONTH_END))
    r = sql.Identifier(PART, ROLLUP_HOURLY)
    todo["one channel, one day: hourly rollup"] = (sql.SQL(
        "SELECT bucket, n, avg, min, max FROM {} WHERE ship_id = %s AND channel_id = %s "
        "AND bucket >= %s AND bucket < %s ORDER BY bucket").format(r), (SHIP, ten_ids[0], day, day + DAY))
    todo["hourly avg of 10 channels, month: hourly rollup"] = (sql.SQL(
        "SELECT bucket, channel_id, avg FROM {} WHERE ship_id = %s AND channel_id = ANY(%s) "
        "AND bucket >= %s AND bucket < %s ORDER BY bucket, channel_id").format(r),
        (SHIP, ten_ids, MONTH, MONTH_END))
    client: dict[str, list[float]] = {k: [] for k in todo}
    server: dict[str, list[float]] = {k: [] for k in todo}
    rows: dict[str, int] = {}
    for _ in range(rounds):
        for k, (q, params) in todo.items():
            t0 = time.perf_counter()
            rows[k] = len(conn.execute(q, params).fetchall())
            client[k].append(time.perf_counter() - t0)
            server[k].append(server_ms(conn, q, params))
    return {k: {"seconds": statistics.median(client[k]), "server_ms": statistics.median(server[k]),
                "rows": rows[k]} for k in todo}


def size(conn: psycopg.Connection, schema: str, names: list[str]) -> int:
    row = conn.execute("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                       "JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = ANY(%s)",
                       (schema, names)).fetchone()
    return int(row[0]) if row else 0


def wide_names(conn: psycopg.Connection, settings: Settings, catalog: ChannelCatalog,
               schema: str) -> list[str]:
    out = []
    for g in catalog.groups:
        name = settings.table_name(SHIP, g.number)
        out += [name] + [p.name for p in list_partitions(conn, schema, name)]
    return out


def wait_for_autovacuum(conn: psycopg.Connection, limit_s: float = 300.0) -> float:
    """Seconds waited until no autovacuum worker processes a table of the benchmark's schemas."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_progress_vacuum v JOIN pg_class c ON c.oid = v.relid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s)", ([PART, PLAIN],)
        ).fetchone()
        if not row or not row[0]:
            break
        time.sleep(1)
    return time.perf_counter() - t0 if time.perf_counter() - t0 > 0.5 else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="6 ship-hours backfilled each way (the month then repeats those 6 hours daily)")
    p.add_argument("--repeat", type=int, default=3,
                   help="backfills of each kind, alternating (default 3; the best of each is compared)")
    p.add_argument("--days", type=int, default=2,
                   help="ship-days backfilled each way (default 2; 30 = a month)")
    args = p.parse_args()
    base = Settings.from_env()
    catalog = load_catalog(base.channel_lists_dir)
    src = bench_settings(base)
    part, plain = replace(src, target_schema=PART), replace(src, target_schema=PLAIN)
    url = database_url(src)
    end = START + (dt.timedelta(hours=6) if args.quick else args.days * DAY)
    data_end = max(end, START + DAY)
    month_days = 31
    res: dict = {"quick": args.quick, "backfill_window": [START.isoformat(), end.isoformat()]}
    with psycopg.connect(url, autocommit=True) as conn:
        n, secs = ensure_data(conn, src, catalog, START, data_end)
        if n:
            print(f"generated {n:,} narrow rows in {secs:.0f} s into {SOURCE}")
        narrow = count_rows(conn, src, START, end)
        print(f"backfill: {narrow:,} narrow rows ({START:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}), "
              f"partitioned (P) vs plain (U), alternating")
        runs: dict[str, list[float]] = {"partitioned": [], "plain": []}
        for label, s, is_plain in [("partitioned", part, False), ("plain", plain, True)] * args.repeat:
            secs = backfill(url, conn, s, catalog, is_plain, end)
            runs[label].append(secs)
            print(f"  {label:<12} {secs:7.1f} s {narrow / secs:>12,.0f} rows/s", flush=True)
        best = {k: narrow / min(v) for k, v in runs.items()}
        ratio = best["partitioned"] / best["plain"]
        res["backfill"] = {"narrow_rows": narrow, "seconds": runs, "best_rows_per_s": best, "ratio": ratio}

        # a month of wide rows in both table sets: each holds the backfilled window, repeated
        fill_days = max(1, (end - START).days)
        wide_rows = {}
        for s in (part, plain):
            prepare_tables(conn, s, catalog.groups, [SHIP], (MONTH, MONTH_END))
            wide_rows[s.target_schema] = fill_month(conn, s, catalog, fill_days)
        print(f"ship-month: {wide_rows[PART]:,} wide rows (partitioned), {wide_rows[PLAIN]:,} (plain)")
        ensure_support_tables(conn, part)
        ensure_rollup_tables(conn, part)
        t0 = time.perf_counter()
        for d in range(month_days):
            refresh_day(conn, part, catalog.groups, SHIP, (MONTH + d * DAY).date())
        refresh_s = time.perf_counter() - t0
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(PART, ROLLUP_HOURLY)))
        print(f"rollups: {month_days} ship-days refreshed in {refresh_s:.1f} s "
              f"({refresh_s / month_days:.2f} s per ship-day)")
        res["rollup_refresh_s_per_ship_day"] = refresh_s / month_days

        q = queries(conn, part, catalog)
        res["queries"] = q
        print("\nquery (5 interleaved rounds, medians)                 client s   server ms      rows")
        for k, v in q.items():
            print(f"  {k:<52} {v['seconds']:8.4f} {v['server_ms']:11.2f} {v['rows']:>9,}")
        speedup = (q["hourly avg of 10 channels, month: plain wide table"]["seconds"]
                   / q["hourly avg of 10 channels, month: hourly rollup"]["seconds"])
        res["rollup_speedup_month_hourly_avg"] = speedup

        sizes = {"partitioned wide": size(conn, PART, wide_names(conn, part, catalog, PART)),
                 "plain wide": size(conn, PLAIN, wide_names(conn, plain, catalog, PLAIN)),
                 "hourly rollup": size(conn, PART, [ROLLUP_HOURLY]),
                 "daily rollup": size(conn, PART, ["n2w_rollup_daily"])}
        res["sizes_bytes"] = sizes
        print("\nsize on disk (tables + indexes)")
        for k, v in sizes.items():
            print(f"  {k:<20} {v / 2**20:10,.1f} MiB")

        # an old month is not being vacuumed; a month just written is (a DETACH waiting for an
        # autovacuum worker cancels it after deadlock_timeout, ~1 s): time the drop as retention
        # meets it, after autovacuum is done with the benchmark's tables
        waited = wait_for_autovacuum(conn)
        if waited:
            print(f"\n(waited {waited:.0f} s for autovacuum to finish with the month's tables)")
        t0 = time.perf_counter()
        detach_s = 0.0
        with conn.transaction():  # as retention does it: detach + drop, one transaction
            for g in catalog.groups:
                name = part.table_name(SHIP, g.number)
                for prt in list_partitions(conn, PART, name):
                    if prt.start == MONTH:
                        t1 = time.perf_counter()
                        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                            sql.Identifier(PART, name), sql.Identifier(PART, prt.name)))
                        detach_s += time.perf_counter() - t1
                        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(PART, prt.name)))
        drop_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        deleted = 0
        with conn.transaction():
            for g in catalog.groups:
                deleted += conn.execute(sql.SQL("DELETE FROM {} WHERE {} >= %s AND {} < %s").format(
                    sql.Identifier(PLAIN, plain.table_name(SHIP, g.number)), sql.Identifier(TIME_COLUMN),
                    sql.Identifier(TIME_COLUMN)), (MONTH, MONTH_END)).rowcount
        delete_s = time.perf_counter() - t0
        after_delete = size(conn, PLAIN, wide_names(conn, plain, catalog, PLAIN))
        res["drop_month"] = {"detach_drop_s": drop_s, "detach_s": detach_s, "delete_s": delete_s,
                             "deleted_rows": deleted, "plain_size_after_delete": after_delete}
        print(f"\ndrop the month: detach + drop partitions {drop_s:.3f} s "
              f"(detach {detach_s:.3f} s); "
              f"DELETE {deleted:,} rows {delete_s:.1f} s "
              f"(plain tables still {after_delete / 2**20:,.0f} MiB on disk until VACUUM FULL)")

    print("\ntargets")
    print(f"  backfill partitioned / plain        {ratio:6.3f}x   (target >= 0.95)")
    print(f"  month of hourly averages, rollups   {speedup:6.0f}x faster than the plain table (target >= 50)")
    print(f"  dropping a month                    {drop_s:6.3f} s   (target <= 1 s)")
    out = ROOT / "benchmarks" / "results" / f"storage-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
