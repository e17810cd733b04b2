"""Time partitions of the wide tables: periods, the partitions that exist, creating missing ones.

Every wide table (and its ``_corr`` shadow table) is range-partitioned on ``created_time``,
one partition per ``N2W_PARTITION_INTERVAL`` (week: Monday to Monday, month, quarter).
Writers call ``ensure_partitions`` for the hours they are about to write, before their
write transactions, holding the table's DDL advisory lock (the one ``write.ensure_wide_table``
takes), so no hour is ever written into a table without its partition and nobody creates
partitions by hand. A partition is created as a plain table and then attached
(``ATTACH PARTITION`` takes a SHARE UPDATE EXCLUSIVE lock on the parent, which neither readers
nor writers of other partitions wait for; ``CREATE TABLE … PARTITION OF`` would take an ACCESS
EXCLUSIVE one). There is no default partition: a row without a partition is an error, never a
row parked where retention cannot drop it.

Partitions are named ``<table>_p<YYYYMMDD>`` after their first day (``_p<YYYYMMDD>_<HH>``
when they start within a day, which only happens to fill a gap after the interval changed):
the name says where a partition starts whatever the interval.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from n2w_pipeline.channels import MAX_IDENTIFIER_BYTES, TIME_COLUMN

_BOUND = re.compile(r"FROM \((.+?)\) TO \((.+?)\)")


def period_start(t: dt.datetime, interval: str) -> dt.datetime:
    """The start of the partition period holding ``t``."""
    day = dt.datetime(t.year, t.month, t.day)
    if interval == "week":
        return day - dt.timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    if interval == "quarter":
        return day.replace(month=(t.month - 1) // 3 * 3 + 1, day=1)
    raise ValueError(f"unknown partition interval {interval!r} (week, month or quarter)")


def next_period(start: dt.datetime, interval: str) -> dt.datetime:
    """The start of the period after the one starting at ``start``."""
    if interval == "week":
        return start + dt.timedelta(days=7)
    months = {"month": 1, "quarter": 3}[interval]
    m = start.month - 1 + months
    return start.replace(year=start.year + m // 12, month=m % 12 + 1, day=1)


def periods(start: dt.datetime, end: dt.datetime, interval: str) -> list[tuple[dt.datetime, dt.datetime]]:
    """The periods overlapping [start, end), each as [from, to)."""
    out = []
    a = period_start(start, interval)
    while a < end:
        b = next_period(a, interval)
        out.append((a, b))
        a = b
    return out


@dataclass(frozen=True)
class Partition:
    """One attached partition: its name and [start, end) (None = MINVALUE / MAXVALUE)."""

    name: str
    start: dt.datetime | None
    end: dt.datetime | None

    def covers(self, a: dt.datetime, b: dt.datetime) -> bool:
        return (self.start is None or self.start <= a) and (self.end is None or b <= self.end)


def _bound(text: str) -> dt.datetime | None:
    text = text.strip()
    if text.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    return dt.datetime.fromisoformat(text.strip("'"))


def table_kind(conn: psycopg.Connection, schema: str, table: str) -> str | None:
    """'p' (partitioned), 'r' (plain table), None (missing)."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    return str(row[0]) if row else None


def list_partitions(conn: psycopg.Connection, schema: str, table: str) -> list[Partition]:
    """The range partitions attached to ``schema.table``, in time order."""
    rows = conn.execute(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = %s::regclass""",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    out = []
    for name, bound in rows:
        m = _BOUND.search(bound or "")
        if m:  # a DEFAULT partition has no range; n2w never creates one
            out.append(Partition(name, _bound(m.group(1)), _bound(m.group(2))))
    return sorted(out, key=lambda p: (p.start is not None, p.start or dt.datetime.min))


def partition_name(table: str, start: dt.datetime) -> str:
    """``<table>_p<YYYYMMDD>`` (``_<HH>`` added when the partition starts within a day)."""
    suffix = f"_p{start:%Y%m%d}" + (f"_{start:%H}" if start.hour else "")
    name = table + suffix
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"partition name {name!r} is {len(name.encode('utf-8'))} bytes, over PostgreSQL's "
            f"{MAX_IDENTIFIER_BYTES}: shorten N2W_TABLE_PATTERN"
        )
    return name


def gaps(wanted: list[tuple[dt.datetime, dt.datetime]], have: list[Partition]
         ) -> list[tuple[dt.datetime, dt.datetime]]:
    """The parts of the ``wanted`` periods that no existing partition covers."""
    out = []
    for a, b in wanted:
        pieces = [(a, b)]
        for p in have:
            lo = p.start or dt.datetime.min
            hi = p.end or dt.datetime.max
            nxt = []
            for x, y in pieces:
                if hi <= x or y <= lo:
                    nxt.append((x, y))
                    continue
                if x < lo:
                    nxt.append((x, lo))
                if hi < y:
                    nxt.append((hi, y))
            pieces = nxt
        out += pieces
    return out


def create_partition(conn: psycopg.Connection, schema: str, table: str, start: dt.datetime,
                     end: dt.datetime, name: str | None = None) -> str:
    """Create a table shaped like the parent and attach it for [start, end); returns its name."""
    name = name or partition_name(table, start)
    parent, part = sql.Identifier(schema, table), sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(part, parent))
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, part, sql.Literal(start), sql.Literal(end)
        )
    )
    return name


def ensure_partitions(conn: psycopg.Connection, schema: str, table: str, start: dt.datetime,
                      end: dt.datetime, interval: str) -> list[str]:
    """Create the partitions ``schema.table`` needs for rows in [start, end) (call inside a
    transaction that holds the table's DDL lock). A plain (unpartitioned) table needs none
    (see ``n2w storage migrate``). Returns the names created."""
    if end <= start or table_kind(conn, schema, table) != "p":
        return []
    missing = gaps(periods(start, end, interval), list_partitions(conn, schema, table))
    return [create_partition(conn, schema, table, a, b) for a, b in missing]


def partitioned_ddl(columns: sql.Composable) -> sql.Composable:
    """``(<columns>) PARTITION BY RANGE (created_time)`` for a CREATE TABLE."""
    return sql.SQL("({}) PARTITION BY RANGE ({})").format(columns, sql.Identifier(TIME_COLUMN))
