"""``n2w db-url``: the database n2w uses."""

from __future__ import annotations

import argparse

from n2w_pipeline.config import Settings
from n2w_pipeline.database import database_url, redact


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "db-url",
        help="print the database URL in use (starts the embedded server if needed)",
        description="Print the PostgreSQL URL n2w reads and writes: N2W_DATABASE_URL, or the "
        "embedded server under N2W_STATE_DIR (started if it is not running). Passwords are "
        "masked unless --show-password is given.",
    )
    p.add_argument("--show-password", action="store_true", help="print the password too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = database_url(Settings.from_env())
    print(url if args.show_password else redact(url))
    return 0
