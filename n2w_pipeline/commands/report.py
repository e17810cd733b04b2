"""``n2w report``: the figures of the latest wide-table runs, read from the Dagster instance."""

from __future__ import annotations

import argparse
import json

from n2w_pipeline.config import Settings

FIGURES = ("narrow_rows_read", "seconds", "narrow_rows_per_s", "peak_rss_mb")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="figures of the latest wide-table runs (rows/s, seconds, rows, peak RSS, filled %%)",
        description="Print, newest first, the runs that last materialised the wide assets, with the "
        "numbers each materialisation recorded: narrow rows, seconds, rows/s, the step process's peak "
        "RSS and the share of filled cells per channel group. The same numbers are plotted per asset "
        "in the Dagster UI (asset page → Plots).",
    )
    p.add_argument("--last", type=int, default=10, metavar="N", help="how many runs (default 10)")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(func=run)


def recent_runs(instance, asset_keys: list, last: int) -> list[dict]:  # noqa: ANN001 - DagsterInstance
    """The ``last`` newest runs that materialised any of ``asset_keys``: per run its time, id,
    kind, tags' window, the figures of its first asset and ``filled_pct`` per asset."""

    from n2w_pipeline.logs import kind_of

    runs: dict[str, dict] = {}
    for key in asset_keys:
        for rec in _latest_per_run(instance, key, last):
            md = {k: v.value for k, v in rec.asset_materialization.metadata.items()}
            row = runs.setdefault(rec.run_id, {"run_id": rec.run_id, "timestamp": rec.timestamp,
                                               "filled_pct": {}})
            row["filled_pct"][key.to_user_string()] = md.get("filled_pct")
            for name in FIGURES:
                row.setdefault(name, md.get(name))
            row.setdefault("windows", md.get("windows") or [])
    newest = sorted(runs.values(), key=lambda r: -r["timestamp"])[:last]
    for row in newest:
        dagster_run = instance.get_run_by_id(row["run_id"])
        tags = dagster_run.tags if dagster_run else {}
        row["kind"] = kind_of(tags, dagster_run.job_name if dagster_run else None, "narrow_to_wide")
        row["status"] = dagster_run.status.value if dagster_run else "DELETED"
    return newest


def _latest_per_run(instance, key, last: int, page: int = 1000, most: int = 50_000) -> list:  # noqa: ANN001
    """The newest materialisation of ``key`` in each of its ``last`` newest runs. A range run
    records one materialisation per partition (all with the same figures), so the event log
    is paged until ``last`` runs are seen (at most ``most`` records)."""
    import dagster as dg

    seen: dict[str, object] = {}
    cursor = None
    scanned = 0
    while len(seen) < last and scanned < most:
        result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=page,
                                                 cursor=cursor)
        for rec in result.records:
            if rec.asset_materialization is not None and rec.run_id not in seen and len(seen) < last:
                seen[rec.run_id] = rec
        scanned += len(result.records)
        if not result.has_more:
            break
        cursor = result.cursor
    return list(seen.values())


def format_table(rows: list[dict], ui_url: str) -> str:
    import datetime as dt

    head = (f"{'finished (UTC)':<19} {'run':<8} {'kind':<9} {'window':<36} {'narrow rows':>12} "
            f"{'s':>7} {'rows/s':>10} {'RSS MB':>7}  filled %")
    lines = [head]
    for r in rows:
        when = dt.datetime.fromtimestamp(r["timestamp"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        w = r["windows"]
        window = f"{w[0][0]} {w[0][1][:16]}..{w[-1][2][11:16]}" if w else "-"
        if len(w) > 1:
            window = f"{len(w)} windows from {w[0][1][:16]}"
        pcts = [v for _, v in sorted(r["filled_pct"].items())]
        fill = "/".join(f"{v:.1f}" if isinstance(v, float) else "-" for v in pcts)
        lines.append(
            f"{when:<19} {r['run_id'][:8]:<8} {r['kind']:<9} {window:<36} {r['narrow_rows_read'] or 0:>12,} "
            f"{r['seconds'] or 0:>7.1f} {r['narrow_rows_per_s'] or 0:>10,.0f} "
            f"{r['peak_rss_mb'] or 0:>7.0f}  {fill}")
    if rows:
        lines.append(f"run pages: {ui_url.rstrip('/')}/runs/<run id>; per-asset plots: asset page → Plots")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import dagster as dg

    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.defs.wide_assets import wide_asset_key
    from n2w_pipeline.instance import apply_dagster_env

    if args.last < 1:
        raise SystemExit("n2w report: --last must be >= 1")
    settings = Settings.from_env()
    catalog = load_catalog(settings.channel_lists_dir)
    apply_dagster_env(settings)
    with dg.DagsterInstance.get() as instance:
        rows = recent_runs(instance, [wide_asset_key(g) for g in catalog.groups], args.last)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print("no wide-table run recorded yet in this instance (n2w backfill or n2w demo makes some)")
    else:
        print(format_table(rows, settings.ui_url))
    return 0
