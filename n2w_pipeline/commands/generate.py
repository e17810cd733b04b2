"""``n2w generate``: synthetic narrow rows in the real schema."""

from __future__ import annotations

import argparse
import datetime as dt
import time

import psycopg

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.commands._common import add_allow_external, parse_time, writable_source
from n2w_pipeline.commands._progress import Bar
from n2w_pipeline.config import Settings
from n2w_pipeline.database import is_embedded
from n2w_pipeline.generate import generate
from n2w_pipeline.hours import floor_hour


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="insert synthetic narrow rows (all value formats, gaps, unknown channels)",
        description="Insert synthetic rows into the narrow table (on N2W_SOURCE_URL when set) for "
        "N ships x a window at 15 s "
        "cadence: every listed channel, ~5%% missing samples, Decimal/Integer/Boolean/String "
        "values (some strings unparsable) and three channels in no list. Deterministic for a "
        "seed; rows that already exist are skipped. Writes only into n2w's embedded PostgreSQL unless "
        "--allow-external is given (then into N2W_SOURCE_URL / N2W_DATABASE_URL, whose existing "
        "constraints and indexes are left as they are).",
    )
    p.add_argument("--ships", type=int, default=2, help="how many configured ships (default 2)")
    p.add_argument("--start", type=parse_time, default=dt.datetime(2025, 3, 1),
                   help="first hour (default 2025-03-01)")
    p.add_argument("--hours", type=int, default=6, help="window length in hours (default 6)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--missing-pct", type=int, default=5, help="missing samples, %% (default 5)")
    add_allow_external(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    catalog = load_catalog(settings.channel_lists_dir)
    ships = list(settings.ships[: args.ships])
    start = floor_hour(args.start)
    end = start + dt.timedelta(hours=args.hours)
    t0 = time.perf_counter()
    url = writable_source(settings, "generate", args.allow_external)
    bar = Bar()
    step = None if args.quiet else (lambda done, total, rows: bar.draw(
        done, total, "ship-days", f"{rows:,} rows  {rows / (time.perf_counter() - t0):,.0f} rows/s"))
    with psycopg.connect(url, autocommit=True) as conn:
        n = generate(conn, settings, catalog, ships, start, end, seed=args.seed,
                     missing_pct=args.missing_pct, own_table=is_embedded(settings), progress=step)
    secs = time.perf_counter() - t0
    print(f"generated {n:,} narrow rows for {len(ships)} ship(s), {start:%Y-%m-%d %H:%M} .. "
          f"{end:%Y-%m-%d %H:%M}, in {secs:.1f} s")
    return 0
