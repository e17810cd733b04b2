"""``n2w backfill``: materialise the wide tables for ships × a time window."""

from __future__ import annotations

import argparse

from n2w_pipeline.commands._common import hour_floor, parse_time, run_backfill
from n2w_pipeline.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill",
        help="materialise wide tables for ships x a window, through Dagster",
        description="Run the wide assets for every (ship, hour) partition in [--start, --end) "
        "through Dagster, recorded in the n2w instance (visible in `n2w dev`). Runs cover "
        "N2W_RUN_HOURS hours of one ship; each slice of N2W_SLICE_HOURS is one transaction, so "
        "an interrupted backfill is resumed by running it again.",
    )
    p.add_argument("--ship", action="append", dest="ships", metavar="SHIP",
                   help="ship id (repeatable); default: every configured ship")
    p.add_argument("--start", type=parse_time, required=True, help="first hour, e.g. 2025-03-01")
    p.add_argument("--end", type=parse_time, required=True,
                   help="end of the window (exclusive), e.g. 2025-03-02")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    ships = args.ships or list(settings.ships)
    unknown = [s for s in ships if s not in settings.ships]
    if unknown:
        raise SystemExit(f"n2w backfill: unknown ship(s) {unknown}; configured: {list(settings.ships)}")
    start, end = hour_floor(args.start), hour_floor(args.end)
    if end <= start:
        raise SystemExit("n2w backfill: --end must be at least one hour after --start")
    summaries = run_backfill(settings, ships, start, end, quiet=args.quiet)
    rows = sum(next(iter(s["assets"].values()))["narrow_rows_read"] for s in summaries)
    secs = sum(s["seconds"] for s in summaries)
    print(f"{len(summaries)} run(s), {len(ships)} ship(s), {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}: "
          f"{rows:,} narrow rows in {secs:.1f} s ({rows / secs if secs else 0:,.0f} rows/s, "
          "Dagster run start-up included)")
    return 0
