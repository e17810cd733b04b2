"""``n2w storage``: time partitions of the wide tables — status, migrate, retention."""

from __future__ import annotations

import argparse
import datetime as dt

from n2w_pipeline.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "storage",
        help="wide-table partitions: status, migrate unpartitioned tables, apply retention",
        description="Every wide table (and its _corr corrections table) is range-partitioned on "
        "created_time, one partition per N2W_PARTITION_INTERVAL (week, month, quarter), created by "
        "the runs that write them. `status` lists each table's partitions, rows and size; "
        "`migrate` converts tables made before partitioning, one period at a time, while n2w keeps "
        "running; `retention` drops whole partitions older than N2W_RETENTION (after their Parquet "
        "export when export is in use). See docs/storage.md.",
    )
    ops = p.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    st = ops.add_parser("status", help="partitions, rows and size of every wide table",
                        description="One line per wide / _corr table of the configured ships: kind "
                        "(partitioned or plain), partitions with their range, estimated rows, size on disk.")
    st.set_defaults(func=run_status)
    mg = ops.add_parser(
        "migrate", help="partition the wide tables made before partitioning, month by month",
        description="Convert every plain (unpartitioned) wide and _corr table of the configured ships "
        "into a partitioned one: a partitioned copy is filled one partition period per transaction "
        "while triggers log the hours written meanwhile; then one short transaction (readers wait "
        "for it) copies those hours again, checks the row counts and swaps the tables. Interrupted, "
        "it resumes where it stopped; the old table stays in use until the swap.",
    )
    mg.add_argument("--table", action="append", dest="tables", metavar="NAME",
                    help="only this table (repeatable); default: every wide and _corr table")
    mg.add_argument("--keep-old", action="store_true",
                    help="keep the old table as <table>__n2w_old instead of dropping it")
    mg.set_defaults(func=run_migrate)
    rt = ops.add_parser(
        "retention", help="drop whole partitions older than N2W_RETENTION",
        description="Detach and drop the wide-table partitions (and their _corr partitions) whose "
        "whole range ended more than N2W_RETENTION ago; never a DELETE. Rollups are kept. With the "
        "Parquet export in use, a partition whose days are not all exported is kept and reported.",
    )
    rt.add_argument("--dry-run", action="store_true", help="list what would be dropped, drop nothing")
    rt.set_defaults(func=run_retention)


def _tables(settings: Settings) -> list[str]:
    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.write import corrections_table_name

    catalog = load_catalog(settings.channel_lists_dir)
    out = []
    for ship in settings.ships:
        for g in catalog.groups:
            out += [settings.table_name(ship, g.number), corrections_table_name(settings, ship, g.number)]
    return out


def run_status(args: argparse.Namespace) -> int:
    import psycopg
    from psycopg import sql

    from n2w_pipeline.database import database_url
    from n2w_pipeline.storage.partitioning import list_partitions, table_kind

    settings = Settings.from_env()
    s = settings.target_schema
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        for table in _tables(settings):
            kind = table_kind(conn, s, table)
            if kind is None:
                continue
            parts = list_partitions(conn, s, table) if kind == "p" else []
            names = [p.name for p in parts] if kind == "p" else [table]  # a parent holds no rows itself
            size = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0), "
                "coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (s, names)).fetchone()
            assert size is not None
            what = (f"partitioned, {len(parts)} partition(s) "
                    f"{parts[0].start:%Y-%m-%d} .. {parts[-1].end:%Y-%m-%d}" if parts and parts[0].start
                    and parts[-1].end else "partitioned, no partition" if kind == "p"
                    else "plain (not partitioned: n2w storage migrate)")
            print(f"{sql.Identifier(s, table).as_string(conn)}: {what}, ~{int(size[1]):,} rows, "
                  f"{int(size[0]) / 2**20:,.1f} MiB")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    import psycopg

    from n2w_pipeline.database import database_url
    from n2w_pipeline.storage.migrate import migrate_table

    settings = Settings.from_env()
    tables = args.tables or _tables(settings)
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        for table in tables:
            r = migrate_table(conn, settings.target_schema, table, settings.partition_interval,
                              keep_old=args.keep_old, log=lambda m: print(m, flush=True))
            if r.skipped and args.tables:
                print(f"{table}: {r.skipped}")
    return 0


def run_retention(args: argparse.Namespace) -> int:
    import psycopg

    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.database import database_url
    from n2w_pipeline.storage import retention

    settings = Settings.from_env()
    catalog = load_catalog(settings.channel_lists_dir)
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        found = retention.apply(conn, settings, catalog.groups, dt.datetime.now(dt.UTC).replace(tzinfo=None),
                                dry_run=args.dry_run)
    print(retention.format_report(found, settings, args.dry_run))
    return 0
