"""``n2w backfill``: materialise the wide tables for ships × a time window."""

from __future__ import annotations

import argparse
import sys
import time

from n2w_pipeline.commands._common import (
    BackfillFailed,
    add_window_args,
    require_narrow_table,
    resolve_window,
    run_backfill,
)
from n2w_pipeline.config import Settings
from n2w_pipeline.priority import lower_priority


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill",
        help="materialise wide tables for ships x a window, through Dagster",
        description="Run the wide assets for every (ship, hour) partition in [--start, --end) "
        "through Dagster, recorded in the n2w instance (visible in `n2w dev`). A run covers "
        "up to N2W_RUN_HOURS partitions: neighbouring ships (in N2W_SHIPS order) x hours, "
        "read together (one read per slice for all its ships: on a table holding the "
        "whole fleet each page is read once); each slice of about N2W_SLICE_HOURS "
        "ship-hours is one transaction. "
        "Partitions already materialised are skipped, so an interrupted backfill is resumed "
        "by running the same command again (--all redoes them).",
    )
    add_window_args(p)
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="runs in N worker processes at once (default 1; with N2W_EXECUTOR=celery "
                   "the pool limit, and each run's step executes on a Celery worker started with "
                   "`n2w worker`; always capped by the pool limit of `n2w_database` in "
                   "dagster.yaml). The default 1 follows from `n2w bench sweep` "
                   "(docs/operations.md#throughput-sweep).")
    p.add_argument("--all", action="store_true", dest="redo",
                   help="run every partition of the window, also those already materialised "
                   "(default: skip them, so re-running an interrupted backfill resumes it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    ships, start, end = resolve_window(args, settings, "backfill")
    if args.parallel is not None and args.parallel < 1:
        raise SystemExit("n2w backfill: --parallel must be >= 1")
    require_narrow_table(settings, "backfill")
    if settings.executor != "celery":  # under Celery the work runs in `n2w worker` processes
        lower_priority(settings.backfill_nice)  # realtime runs on this machine go first
    t0 = time.perf_counter()
    try:
        summaries = run_backfill(settings, ships, start, end, quiet=args.quiet,
                                 parallel=args.parallel, resume=not args.redo)
    except BackfillFailed as exc:
        print(f"n2w backfill: {exc}", file=sys.stderr)
        print("n2w backfill: committed slices stay; run the same command again to resume",
              file=sys.stderr)
        return 1
    if not summaries:
        print("nothing to do: every partition of the window is already materialised "
              "(use --all to run them again)")
        return 0
    rows = sum(next(iter(s["assets"].values()))["narrow_rows_read"] for s in summaries)
    secs = time.perf_counter() - t0  # wall time: runs may overlap (--parallel)
    print(f"{len(summaries)} run(s), {len(ships)} ship(s), {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}: "
          f"{rows:,} narrow rows in {secs:.1f} s ({rows / secs if secs else 0:,.0f} rows/s, "
          "Dagster run start-up included)")
    return 0
