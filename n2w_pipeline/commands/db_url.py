"""``n2w db-url``: the database n2w uses."""

from __future__ import annotations

import argparse

from n2w_pipeline.config import Settings
from n2w_pipeline.database import database_url, redact, source_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "db-url",
        help="print the database URL in use (starts the embedded server if needed)",
        description="Print the PostgreSQL URL n2w reads and writes: N2W_DATABASE_URL, or the "
        "embedded server under N2W_STATE_DIR (started if it is not running). Passwords are "
        "masked unless --show-password is given.",
    )
    p.add_argument("--show-password", action="store_true", help="print the password too")
    p.add_argument("--source", action="store_true",
                   help="print the URL the narrow table is read from instead (N2W_SOURCE_URL, "
                   "else the same database)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    url = source_url(settings) if args.source else database_url(settings)
    print(url if args.show_password else redact(url))
    return 0
