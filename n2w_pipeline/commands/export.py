"""``n2w export``: the export assets for ships × days, through Dagster, with a progress bar."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time

from n2w_pipeline.commands._common import PROGRESS_LOGGER, BackfillProgress, _TaskProgress
from n2w_pipeline.config import Settings

TARGETS = ("parquet", "clickhouse", "both")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the wide tables of ships x days to Parquet and/or ClickHouse, through Dagster",
        description="Materialise the export assets (parquet_<n>_<name>, clickhouse_<n>_<name>) for every "
        "(day, ship) in [--start, --end): the same code as the nightly schedule, recorded in the n2w "
        "instance. One Parquet file per group x ship x day under N2W_EXPORT_DIR (default "
        "<N2W_STATE_DIR>/export); ClickHouse: the embedded chDB under N2W_CLICKHOUSE_PATH, or the "
        "server of N2W_CLICKHOUSE_URL. Re-exporting a day replaces it. Each ship-day is reconciled "
        "with PostgreSQL (rows, per-column non-NULL counts and sums); exit status 1 if a check fails.",
    )
    p.add_argument("--ship", action="append", dest="ships", metavar="SHIP",
                   help="ship id (repeatable); default: every configured ship")
    p.add_argument("--start", type=parse_day, required=True, help="first day, e.g. 2025-03-01")
    p.add_argument("--end", type=parse_day, required=True,
                   help="first day NOT exported (exclusive, like `n2w backfill`), e.g. 2025-03-08")
    p.add_argument("--to", choices=TARGETS, default="both", help="what to write (default both)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day: {text!r} (use 2025-03-01)") from None


def resolve_days(args: argparse.Namespace, settings: Settings, today: dt.date | None = None
                 ) -> tuple[list[str], dt.date, dt.date]:
    """Validated (ships, start, end); exits with one line naming the problem."""
    ships = args.ships or list(settings.ships)
    unknown = [s for s in ships if s not in settings.ships]
    if unknown:
        raise SystemExit(f"n2w export: unknown ship(s) {unknown}; "
                         f"configured (N2W_SHIPS): {list(settings.ships)}")
    if args.end <= args.start:
        raise SystemExit("n2w export: --end must be at least one day after --start (it is exclusive)")
    first = dt.datetime.strptime(settings.partition_start, "%Y-%m-%d-%H:%M").date()
    if args.start < first:
        raise SystemExit(f"n2w export: {args.start} is before the first partition day {first} "
                         "(N2W_PARTITION_START)")
    today = today or dt.datetime.now(dt.UTC).date()
    if args.end > today:
        raise SystemExit(f"n2w export: {args.end - dt.timedelta(days=1)} has not ended yet (UTC); "
                         f"the last day that can be exported is {today - dt.timedelta(days=1)}")
    return ships, args.start, args.end


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    ships, start, end = resolve_days(args, settings)
    t0 = time.perf_counter()
    summaries = run_export(settings, ships, start, end, args.to, quiet=args.quiet)
    secs = time.perf_counter() - t0
    failed = [f for s in summaries for f in s["check_failures"]]
    rows = sum(s["rows"] for s in summaries)
    print(f"{len(summaries)} run(s), {len(ships)} ship(s), {start} .. {end} (exclusive), to {args.to}: "
          f"{rows:,} wide rows per target in {secs:.1f} s ({rows / secs if secs else 0:,.0f} rows/s, "
          "Dagster run start-up included)")
    for s in summaries:
        for key, md in sorted(s["assets"].items()):
            extra = f", {md['bytes']:,} bytes" if "bytes" in md else f", table {md.get('table', '')}"
            print(f"  {s['ship']} {key}: {md['rows']:,} rows, {md['ship_days']} day(s){extra}")
    for f in failed:
        print(f"CHECK FAILED: {f}")
    print("reconciliation: " + ("FAILED" if failed else "every ship-day equals PostgreSQL"))
    return 1 if failed else 0


def run_export(settings: Settings, ships: list[str], start: dt.date, end: dt.date, to: str,
               quiet: bool = False) -> list[dict]:
    """One Dagster run per ship × up to N2W_RUN_HOURS/24 days; returns per-run summaries.
    A failed run stops the command with its one-line reason (SystemExit)."""
    import dagster as dg

    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.defs.exports import build_export_assets, export_keys
    from n2w_pipeline.defs.partitions import day_key
    from n2w_pipeline.defs.resources import N2WClickHouse, N2WDatabase
    from n2w_pipeline.export.paths import clickhouse_root
    from n2w_pipeline.instance import apply_dagster_env, sync_pool_limit
    from n2w_pipeline.logs import dagster_console

    env = apply_dagster_env(settings)
    catalog = load_catalog(settings.channel_lists_dir)
    assets = build_export_assets(settings, catalog)
    keys = export_keys(catalog, to)
    resources = {"n2w_db": N2WDatabase(url=env["N2W_DATABASE_URL"]),
                 "n2w_clickhouse": N2WClickHouse(url=settings.clickhouse_url,
                                                 path=str(clickhouse_root(settings)))}
    step = max(1, settings.run_hours // 24)
    runs = [(ship, start + dt.timedelta(days=i), min(end, start + dt.timedelta(days=i + step)))
            for ship in ships for i in range(0, (end - start).days, step)]
    progress = BackfillProgress(24 * len(ships) * (end - start).days, quiet)
    plog = logging.getLogger(PROGRESS_LOGGER)
    plog.setLevel(logging.INFO)
    plog.propagate = False
    out = []
    with dg.DagsterInstance.get() as instance:
        sync_pool_limit(instance)
        for ship, a, b in runs:
            task = f"{ship}@{a}"
            handler = _TaskProgress(task, progress.update)
            plog.addHandler(handler)
            try:
                result = dg.materialize(
                    [assets], instance=instance, selection=keys, resources=resources, raise_on_error=False,
                    tags={"dagster/asset_partition_range_start": str(day_key(ship, a)),
                          "dagster/asset_partition_range_end": str(day_key(ship, b - dt.timedelta(days=1))),
                          "n2w/launched_by": "n2w export", "n2w/kind": "export"},
                    run_config=dagster_console(),
                )
            finally:
                plog.removeHandler(handler)
            if not result.success:
                raise SystemExit(f"n2w export: {ship} {a} .. {b}: {_failure(result)}")
            summary = _summary(result, ship)
            progress.finish(task, 24 * (b - a).days, summary["rows"],
                            f"run {result.run_id[:8]} {ship} {a} .. {b}: {summary['rows']:,} wide rows")
            out.append(summary)
    return out


def _failure(result) -> str:  # noqa: ANN001 - dagster.ExecuteInProcessResult
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                return data.user_failure_data.description
            error = data.error
            while error is not None and error.cause is not None:
                error = error.cause
            return " ".join((error.message if error else "failed").split())[:400]
    return "the run failed"


def _summary(result, ship: str) -> dict:  # noqa: ANN001
    assets: dict[str, dict] = {}
    for m in result.asset_materializations_for_node("wide_to_export"):
        assets.setdefault(m.asset_key.to_user_string(), {k: v.value for k, v in m.metadata.items()})
    checks = [e.asset_check_evaluation_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    failures = [c.description or c.asset_check_key.name for c in checks if not c.passed]
    rows = max((md["rows"] for md in assets.values()), default=0)
    return {"ship": ship, "run_id": result.run_id, "assets": assets, "rows": rows, "check_failures": failures}
