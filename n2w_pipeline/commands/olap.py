"""``n2w olap "SQL"``: a query on the exported ClickHouse data, printed as a table."""

from __future__ import annotations

import argparse
import sys

from n2w_pipeline.config import Settings

EXAMPLE = ("SELECT toStartOfHour(created_time) AS hour, avg(`/hs4sd_v1/me01/fuel/oil//in_c/temp`) "
           "FROM wide_2_engine_generator WHERE ship_id = 'IMO9976903' GROUP BY hour ORDER BY hour")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "olap",
        help="run SQL on the exported data in ClickHouse (embedded chDB or N2W_CLICKHOUSE_URL)",
        description="Run one ClickHouse SQL statement on the database `n2w` of the embedded chDB "
        "(N2W_CLICKHOUSE_PATH, default <N2W_STATE_DIR>/clickhouse) or of the server in "
        "N2W_CLICKHOUSE_URL, and print the result. Tables: one per channel group, named like the "
        "wide assets (wide_1_auxiliary_systems, wide_2_engine_generator, ...), columns created_time, "
        "ship_id and the channels (quote them with backticks). The embedded engine is used by one "
        f"process at a time: while an export runs, the query waits for it. Example: n2w olap \"{EXAMPLE}\"",
    )
    p.add_argument("sql", help="the statement (ClickHouse SQL)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default: an aligned table)")
    p.add_argument("--max-rows", type=int, default=50, help="rows shown in table format (default 50)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from n2w_pipeline.export.day import ExportError, clickhouse_backend

    settings = Settings.from_env()
    try:
        with clickhouse_backend(settings, settings.clickhouse_url) as backend:
            table = backend.query_arrow(args.sql)
    except ExportError as e:
        raise SystemExit(f"n2w olap: {e}") from None
    except Exception as e:  # noqa: BLE001 - a bad statement: ClickHouse's message, one line
        raise SystemExit("n2w olap: " + " ".join(str(e).split())[:500]) from None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if args.format == "csv":
        sys.stdout.write(frame.write_csv())
    elif args.format == "json":
        sys.stdout.write(frame.write_json() + "\n")
    else:
        with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
            print(frame)
    return 0
