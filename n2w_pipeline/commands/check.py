"""``n2w check``: the wide tables' asset checks for ships × a window, printed as a table."""

from __future__ import annotations

import argparse
import json

from n2w_pipeline.commands._common import add_window_args, require_narrow_table, resolve_window
from n2w_pipeline.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="run the asset checks (fill, coverage, reconciliation, unknown channels) for a window",
        description="Compare the wide tables with the narrow table for every (ship, channel group) "
        "over [--start, --end): null-fill rate with the emptiest channels, channel coverage with "
        "the silent channels, narrow/wide reconciliation (naming the first differing cells) and "
        "channels in no list. The same checks run inside every materialisation; this command "
        "checks any window on demand, without Dagster. Exit status 1 when an ERROR check fails "
        "(reconciliation), 0 otherwise (warnings are printed).",
    )
    add_window_args(p)
    p.add_argument("--group", type=int, action="append", dest="groups", metavar="N",
                   help="channel group number (repeatable); default: every group")
    p.add_argument("--json", action="store_true", help="print every figure as JSON instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.checks import ERROR, check_window
    from n2w_pipeline.database import database_url, source_url

    settings = Settings.from_env()
    ships, start, end = resolve_window(args, settings, "check")
    catalog = load_catalog(settings.channel_lists_dir)
    known = {g.number: g for g in catalog.groups}
    unknown = sorted(set(args.groups or ()) - set(known))
    if unknown:
        raise SystemExit(f"n2w check: unknown channel group(s) {unknown}; the groups are "
                         f"{sorted(known)} (channel lists in {settings.channel_lists_dir})")
    groups = [known[n] for n in args.groups] if args.groups else list(catalog.groups)
    require_narrow_table(settings, "check")
    url, source = database_url(settings), source_url(settings)
    rows = []
    for ship in ships:
        for o in check_window(url, settings, catalog, [ship], start, end, groups, source_url=source):
            rows.append((ship, o))
    if args.json:
        print(json.dumps(
            [{"ship": s, "group": o.group, "check": o.name, "passed": o.passed, "severity": o.severity,
              "summary": o.summary, "metadata": o.metadata} for s, o in rows],
            indent=2, default=str,
        ))
    else:
        print(f"checks for {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}")
        print(format_table(rows))
    return 1 if any(not o.passed and o.severity == ERROR for _, o in rows) else 0


def format_table(rows: list) -> str:
    """ship | group | check | result | summary, one line per check."""
    head = ("ship", "group", "check", "result", "summary")
    body = [
        (s, str(o.group), o.name, "PASS" if o.passed else o.severity, o.summary) for s, o in rows
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(4)]
    lines = []
    for r in [head, *body]:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 7)
    return "\n".join(lines)
