"""``n2w corrections``: apply (or dry-run) the CSV correction files under N2W_MIGRATION_DIR."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import psycopg

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.commands._progress import Counter
from n2w_pipeline.config import Settings
from n2w_pipeline.corrections import (
    CorrectionFileError,
    apply_file,
    candidate_paths,
    format_report,
    locate_file,
)
from n2w_pipeline.database import database_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corrections",
        help="apply (or --dry-run) the CSV correction files in N2W_MIGRATION_DIR",
        description="Apply every correction file <HULL>/<HULL>_<YYYY-MM>.csv under N2W_MIGRATION_DIR "
        "(default migration_data/) directly, one transaction per file, and print per file and per "
        "table: channels matched/listed (coverage), rows inserted/updated/unchanged, unknown "
        "channels, skipped rows and cells with their lines. A rejected file is reported and the "
        "others still run; the exit status is 1 if any file was rejected. Re-applying a file "
        "changes nothing. (In `n2w dev` the correction_files_sensor does the same per new or "
        "changed file.)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    p.add_argument("--hull", action="append", dest="hulls", metavar="HULL",
                   help="only this hull's folder (repeatable), e.g. H2546")
    p.add_argument("--file", action="append", dest="files", type=Path, metavar="PATH",
                   help="only this file (repeatable); its folder name is its hull")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.hulls:
        unknown = sorted(set(args.hulls) - set(settings.hulls))
        if unknown:
            raise SystemExit(f"n2w corrections: unknown hull(s) {unknown}; configured: "
                             f"{sorted(settings.hulls)} (N2W_HULLS)")
    paths = list(args.files) if args.files else candidate_paths(settings.migration_dir)
    if args.hulls:
        paths = [p for p in paths if p.parent.name in args.hulls]
    if not paths:
        print(f"no correction files found under {settings.migration_dir}")
        return 0
    catalog = load_catalog(settings.channel_lists_dir)
    rejected = 0
    reports = []
    url = database_url(settings)
    bar = Counter(len(paths), "file(s)") if len(paths) > 1 and not args.json else None
    with psycopg.connect(url, autocommit=True) as conn:
        for path in paths:
            try:
                locate_file(settings, path)
                report = apply_file(conn, settings, catalog, path, dry_run=args.dry_run,
                                    connect=lambda: psycopg.connect(url, autocommit=True))
            except CorrectionFileError as e:
                rejected += 1
                if args.json:
                    reports.append({"file": str(path), "rejected": str(e)})
                else:
                    print(f"REJECTED {e}\n", flush=True)
                if bar is not None:
                    bar.step(extra=path.name)
                continue
            if args.json:
                reports.append(report.as_dict())
            else:
                print(format_report(report) + "\n", flush=True)
            if bar is not None:
                bar.step(extra=path.name)
    if args.json:
        print(json.dumps(reports, indent=2, default=str))
    else:
        verb = "checked (dry run)" if args.dry_run else "applied"
        print(f"{len(paths) - rejected} file(s) {verb}, {rejected} rejected")
    return 1 if rejected else 0
