"""``n2w``: set up, generate, backfill, check and serve n2w from one command.

Each command lives in ``n2w_pipeline/commands/<name>.py`` and registers itself through
``register(subparsers)``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

COMMANDS = ("demo", "generate", "prepare", "backfill", "check", "corrections", "export", "olap", "dev",
            "worker", "db_url", "bench", "storage", "report")

EPILOG = """\
Configuration comes from N2W_* environment variables (see docs/operating.md). With no
N2W_DATABASE_URL, n2w starts an embedded PostgreSQL under .n2w/ in the working directory
and reuses it across commands.

examples:
  n2w demo                                  # everything, on a small generated fleet
  n2w generate --ships 2 --start 2025-03-01 --hours 24
  n2w backfill --ship IMO9976903 --start 2025-03-01 --end 2025-03-02
  n2w dev                                   # Dagster UI + daemon on http://127.0.0.1:3000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="n2w",
        description="n2w turns the narrow time-series table into per-ship wide tables, "
        "through Dagster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every log line on the terminal, Dagster's included (without it they "
                        "go only to the log files under N2W_LOG_DIR)")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"n2w_pipeline.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", module="platformdirs")
    args = build_parser().parse_args(argv)
    from n2w_pipeline.dsn import MaskSecretsFilter
    from n2w_pipeline.logs import setup_cli_logging

    setup_cli_logging(args.command, args.verbose)

    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskSecretsFilter())  # no password in a log line, whatever logs it
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # a command's own one-line refusal (its message names the command)
        if isinstance(exc.code, str) and not args.debug:
            from n2w_pipeline.errors import one_line

            raise SystemExit(one_line(exc.code)) from None
        raise
    except Exception as exc:
        return report_error(args, exc)


def report_error(args: argparse.Namespace, exc: BaseException) -> int:
    """Every command's errors end here: one line on stderr and a non-zero exit code
    (2: a setting to change, 1: anything else); ``--debug`` shows the traceback instead."""
    from n2w_pipeline.errors import describe, exit_code

    if args.debug:
        import traceback

        traceback.print_exception(exc)
    else:
        print(f"n2w {args.command}: {describe(exc)} (--debug shows the traceback)", file=sys.stderr)
    return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
