"""``n2w storage migrate``: convert an existing unpartitioned wide (or ``_corr``) table into a
time-partitioned one, month by month (one partition period at a time), without losing a row,
while n2w keeps reading and writing it.

1. **Prepare** (one short transaction): a partitioned twin ``<table>__n2w_mig`` with the same
   columns and comments, and a change log: statement-level triggers on the old table record the
   hour of every row inserted, updated or deleted from now on in ``<table>__n2w_log``.
2. **Copy**, one transaction per partition period, oldest first: create the twin's partition
   and ``INSERT … SELECT`` the period's rows (readers and writers carry on; the period's
   transaction holds the table's DDL lock so no column is added half-way). A period whose
   partition exists was copied by an earlier, interrupted run: migrate resumes after it.
3. **Swap** (one transaction holding an ACCESS EXCLUSIVE lock on the old table, i.e. readers
   wait for it): columns added meanwhile, periods that got their first rows meanwhile, then every
   logged hour is copied again (delete + insert in the twin), row counts must match exactly,
   then the old table is renamed away and dropped (``--keep-old`` keeps it as
   ``<table>__n2w_old``), the twin takes the table's name, and the triggers, log and function go.

The swap's length is proportional to the hours written during the copy, not to the table. A
failure at any step leaves the old table intact and in use; running migrate again resumes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from n2w_pipeline.channels import MAX_IDENTIFIER_BYTES, TIME_COLUMN
from n2w_pipeline.storage.partitioning import (
    create_partition,
    list_partitions,
    next_period,
    partition_name,
    periods,
    table_kind,
)
from n2w_pipeline.write import _key, existing_columns

MIG, LOG, OLD = "__n2w_mig", "__n2w_log", "__n2w_old"
HOUR = dt.timedelta(hours=1)


def _name(table: str, suffix: str) -> str:
    name = table + suffix
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"{name!r} is over PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes: "
                         "shorten N2W_TABLE_PATTERN")
    return name


@dataclass
class MigrationReport:
    table: str
    periods_copied: int = 0
    rows_copied: int = 0
    hours_recopied: int = 0
    rows: int = 0
    seconds: float = 0.0
    swap_seconds: float = 0.0
    skipped: str | None = None
    partitions: list[str] = field(default_factory=list)


def _ddl_lock(conn: psycopg.Connection, schema: str, table: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s, 1)", (_key(f"n2w:ddl:{schema}.{table}"),))


def _sync_columns(conn: psycopg.Connection, schema: str, table: str, twin: str) -> list[str]:
    """Add to the twin the columns the old table gained; returns the common column list."""
    old = existing_columns(conn, schema, table) or []
    have = set(existing_columns(conn, schema, twin) or [])
    for c in old:
        if c not in have:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} double precision").format(
                sql.Identifier(schema, twin), sql.Identifier(c)))
    return old


def _copy(conn: psycopg.Connection, schema: str, table: str, twin: str, cols: Sequence[str],
          start: dt.datetime, end: dt.datetime) -> int:
    c = sql.SQL(", ").join(map(sql.Identifier, cols))
    t = sql.Identifier(TIME_COLUMN)
    return conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE {} >= %s AND {} < %s").format(
        sql.Identifier(schema, twin), c, c, sql.Identifier(schema, table), t, t), (start, end)).rowcount


def _prepare(conn: psycopg.Connection, schema: str, table: str, twin: str, log: str) -> None:
    ident = sql.Identifier
    with conn.transaction():
        _ddl_lock(conn, schema, table)
        if table_kind(conn, schema, twin) is None:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL) PARTITION BY RANGE ({})").format(
                ident(schema, twin), ident(schema, table), ident(TIME_COLUMN)))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (hour timestamp PRIMARY KEY)").format(
            ident(schema, log)))
        logged = ident(schema, log).as_string(conn)
        body = (
            "BEGIN\n"
            "  IF TG_OP IN ('INSERT', 'UPDATE') THEN\n"
            f"    INSERT INTO {logged} SELECT DISTINCT date_trunc('hour', created_time) FROM n2w_new\n"
            "    ON CONFLICT DO NOTHING;\n"
            "  END IF;\n"
            "  IF TG_OP IN ('DELETE', 'UPDATE') THEN\n"
            f"    INSERT INTO {logged} SELECT DISTINCT date_trunc('hour', created_time) FROM n2w_old\n"
            "    ON CONFLICT DO NOTHING;\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END")
        conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
            ident(schema, log), sql.Literal(body)))
        for event, refs in (("INSERT", "NEW TABLE AS n2w_new"),
                            ("UPDATE", "OLD TABLE AS n2w_old NEW TABLE AS n2w_new"),
                            ("DELETE", "OLD TABLE AS n2w_old")):
            trig = ident(f"n2w_migrate_{event.lower()}")
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trig, ident(schema, table)))
            conn.execute(sql.SQL("CREATE TRIGGER {} AFTER {} ON {} REFERENCING {} FOR EACH STATEMENT "
                                 "EXECUTE FUNCTION {}()").format(
                trig, sql.SQL(event), ident(schema, table), sql.SQL(refs), ident(schema, log)))


def _bounds(conn: psycopg.Connection, schema: str, table: str) -> tuple[dt.datetime, dt.datetime] | None:
    t = sql.Identifier(TIME_COLUMN)
    row = conn.execute(sql.SQL("SELECT min({}), max({}) FROM {}").format(t, t, sql.Identifier(schema, table))
                       ).fetchone()
    if not row or row[0] is None:
        return None
    return row[0], row[1] + dt.timedelta(microseconds=1)


def _copy_periods(conn: psycopg.Connection, schema: str, table: str, twin: str, interval: str,
                  report: MigrationReport, log: Callable[[str], None]) -> None:
    """Copy every period of the old table that has no partition in the twin yet, one per transaction."""
    bounds = _bounds(conn, schema, table)
    if bounds is None:
        return
    done = {p.start for p in list_partitions(conn, schema, twin)}
    todo = [p for p in periods(*bounds, interval) if p[0] not in done]
    for i, (a, b) in enumerate(todo, 1):
        t0 = time.perf_counter()
        with conn.transaction():
            _ddl_lock(conn, schema, table)
            cols = _sync_columns(conn, schema, table, twin)
            report.partitions.append(create_partition(conn, schema, twin, a, b, partition_name(table, a)))
            n = _copy(conn, schema, table, twin, cols, a, b)
        report.periods_copied += 1
        report.rows_copied += n
        log(f"{table}: {a:%Y-%m-%d} .. {b:%Y-%m-%d} copied, {n:,} rows in {time.perf_counter() - t0:.1f} s "
            f"({i}/{len(todo)})")


def _swap(conn: psycopg.Connection, schema: str, table: str, twin: str, log_table: str, interval: str,
          keep_old: bool, report: MigrationReport) -> None:
    ident = sql.Identifier
    t = ident(TIME_COLUMN)
    with conn.transaction():
        _ddl_lock(conn, schema, table)
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ident(schema, table)))
        cols = _sync_columns(conn, schema, table, twin)
        bounds = _bounds(conn, schema, table)
        have = {p.start for p in list_partitions(conn, schema, twin)}
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        last = max(bounds[1] if bounds else now, now)
        wanted = periods(bounds[0] if bounds else now, next_period(last, interval), interval)
        for a, b in wanted:  # periods that got their first rows during the copy, and the next one
            if a not in have:
                report.partitions.append(create_partition(conn, schema, twin, a, b, partition_name(table, a)))
                report.rows_copied += _copy(conn, schema, table, twin, cols, a, b)
        hours = [r[0] for r in conn.execute(sql.SQL("SELECT hour FROM {} ORDER BY 1").format(
            ident(schema, log_table))).fetchall()]
        for h in hours:  # written while the periods were being copied: copy those hours again
            conn.execute(sql.SQL("DELETE FROM {} WHERE {} >= %s AND {} < %s").format(
                ident(schema, twin), t, t), (h, h + HOUR))
            _copy(conn, schema, table, twin, cols, h, h + HOUR)
        report.hours_recopied = len(hours)
        counts = [conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(schema, x))).fetchone()
                  for x in (table, twin)]
        if counts[0] != counts[1]:
            raise RuntimeError(f"{table}: {counts[0]} rows in the old table, {counts[1]} in the partitioned "
                               "copy; nothing was changed (run migrate again)")
        report.rows = int(counts[0][0]) if counts[0] else 0
        for event in ("insert", "update", "delete"):
            trig = ident(f"n2w_migrate_{event}")
            conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(trig, ident(schema, table)))
        old = _name(table, OLD)
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(schema, table), ident(old)))
        if keep_old:
            conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                ident(schema, f"{table}_pkey"), ident(_name(old, "_pkey"))))
        else:
            conn.execute(sql.SQL("DROP TABLE {}").format(ident(schema, old)))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(schema, twin), ident(table)))
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            ident(schema, f"{twin}_pkey"), ident(f"{table}_pkey")))
        conn.execute(sql.SQL("DROP TABLE {}").format(ident(schema, log_table)))
        conn.execute(sql.SQL("DROP FUNCTION {}()").format(ident(schema, log_table)))


def migrate_table(conn: psycopg.Connection, schema: str, table: str, interval: str, keep_old: bool = False,
                  log: Callable[[str], None] = print) -> MigrationReport:
    """Convert ``schema.table`` (plain) into a partitioned table (see the module docstring).
    ``conn`` in autocommit mode."""
    t0 = time.perf_counter()
    report = MigrationReport(table)
    kind = table_kind(conn, schema, table)
    if kind != "r":
        report.skipped = "already partitioned" if kind == "p" else "no such table"
        return report
    twin, log_table = _name(table, MIG), _name(table, LOG)
    _prepare(conn, schema, table, twin, log_table)
    _copy_periods(conn, schema, table, twin, interval, report, log)
    t1 = time.perf_counter()
    _swap(conn, schema, table, twin, log_table, interval, keep_old, report)
    report.swap_seconds = time.perf_counter() - t1
    report.seconds = time.perf_counter() - t0
    log(f"{table}: partitioned, {report.rows:,} rows in {len(list_partitions(conn, schema, table))} "
        f"partition(s); {report.hours_recopied} hour(s) written during the copy copied again; "
        f"swap {report.swap_seconds:.2f} s")
    return report
