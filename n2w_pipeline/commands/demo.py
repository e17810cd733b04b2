"""``n2w demo``: embedded PostgreSQL, a small generated fleet window, a backfill, a summary."""

from __future__ import annotations

import argparse
import datetime as dt
import time

import psycopg
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.commands._common import add_allow_external, parse_time, run_backfill, writable_source
from n2w_pipeline.config import Settings
from n2w_pipeline.database import database_url, is_embedded, redact
from n2w_pipeline.generate import generate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a small fleet window, backfill it through Dagster, print a summary",
        description="Start the embedded PostgreSQL (an external N2W_DATABASE_URL / N2W_SOURCE_URL only "
        "with --allow-external), generate "
        "--ships x --hours of narrow rows, backfill them through Dagster and print the wide "
        "tables with their rows, fill rate and throughput. Safe to repeat.",
    )
    p.add_argument("--ships", type=int, default=2, help="ships to generate (default 2)")
    p.add_argument("--hours", type=int, default=6, help="hours to generate (default 6)")
    p.add_argument("--start", type=parse_time, default=dt.datetime(2025, 3, 1),
                   help="first hour (default 2025-03-01)")
    add_allow_external(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    catalog = load_catalog(settings.channel_lists_dir)
    source = writable_source(settings, "demo", args.allow_external)  # refuses before writing anything
    url = database_url(settings)
    print(f"database: {redact(url)}")
    if source != url:
        print(f"narrow table on: {redact(source)} (N2W_SOURCE_URL)")
    ships = list(settings.ships[: args.ships])
    start = args.start.replace(minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(hours=args.hours)
    t0 = time.perf_counter()
    with psycopg.connect(source, autocommit=True) as conn:
        n = generate(conn, settings, catalog, ships, start, end, own_table=is_embedded(settings))
    print(f"generated {n:,} new narrow rows ({len(ships)} ships x {args.hours} h) "
          f"in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    summaries = run_backfill(settings, ships, start, end)
    wall = time.perf_counter() - t0
    narrow = sum(next(iter(s["assets"].values()))["narrow_rows_read"] for s in summaries)
    print(f"backfilled {len(summaries)} Dagster run(s): {narrow:,} narrow rows in {wall:.1f} s "
          f"= {narrow / wall:,.0f} rows/s (run start-up included)")
    print()
    print(f"{'table':<44} {'rows':>7} {'columns':>8} {'filled cells':>13} {'fill %':>7}")
    with psycopg.connect(url, autocommit=True) as conn:
        for ship in ships:
            for g in catalog.groups:
                table = settings.table_name(ship, g.number)
                rows, cells = _fill(conn, settings.target_schema, table, g.columns, start, end)
                pct = 100.0 * cells / (rows * len(g.columns)) if rows else 0.0
                print(f"{settings.target_schema + '.' + table:<44} {rows:>7,} {len(g.columns):>8} "
                      f"{cells:>13,} {pct:>6.1f}%")
    first = next(iter(summaries[0]["assets"].values()))
    print()
    print(f"skipped: {first['unknown_channel_rows_skipped']:,} rows of channels in no list "
          f"(first run); NULL values by reason are in each materialisation's metadata")
    print("next: `n2w dev` opens the Dagster UI on these runs")
    return 0


def _fill(conn: psycopg.Connection, schema: str, table: str, columns: tuple[str, ...],
          start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    filled = sql.SQL(" + ").join(
        sql.SQL("count({})").format(sql.Identifier(c)) for c in columns
    )
    row = conn.execute(
        sql.SQL("SELECT count(*), {} FROM {} WHERE created_time >= %s AND created_time < %s").format(
            filled, sql.Identifier(schema, table)
        ),
        (start, end),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
