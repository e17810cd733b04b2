"""Retention: drop whole time partitions of the wide tables older than ``N2W_RETENTION``.

A partition goes when its whole range ended before ``now - N2W_RETENTION`` (a partition
that is only partly older stays). It is detached and dropped — never a ``DELETE`` of rows:
no bloat, no vacuum, its disk space is returned at once. The corrections shadow table's
partition of the same range goes with it. Rollups (``n2w_rollup_hourly`` / ``_daily``) are
kept: dashboards keep their history after the raw rows are gone.

When the Parquet export is in use (``N2W_EXPORT_DIR`` set, or the default export folder
exists), a partition is dropped only if every day on which it holds rows has its Parquet
file for that table's group and ship (``export.paths.parquet_path``); otherwise it stays and
the report says which file is missing. Each drop is one short transaction under the table's
DDL advisory lock with a lock timeout, so a long-running reader delays it, never the reverse
for long.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.export.paths import export_root, parquet_path
from n2w_pipeline.storage.partitioning import Partition, list_partitions, table_kind
from n2w_pipeline.write import _key, corrections_table_name

LOCK_TIMEOUT = "10s"


def months_before(t: dt.datetime, months: int) -> dt.datetime:
    m = t.year * 12 + t.month - 1 - months
    year, month = divmod(m, 12)
    month += 1
    days = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30, 31, 31,
            30, 31, 30, 31][month - 1]
    return t.replace(year=year, month=month, day=min(t.day, days))


def cutoff(now: dt.datetime, retention: tuple[int, str]) -> dt.datetime:
    """``now`` minus the retention: partitions that ended at or before it are dropped."""
    n, unit = retention
    if unit == "day":
        return now - dt.timedelta(days=n)
    if unit == "week":
        return now - dt.timedelta(weeks=n)
    return months_before(now, n * (12 if unit == "year" else 1))


def export_in_use(settings: Settings) -> bool:
    return settings.export_dir is not None or export_root(settings).exists()


@dataclass
class Expired:
    """One partition past the cutoff: dropped, or kept with the reason."""

    ship: str
    group: int
    table: str
    partition: Partition
    shadow_partitions: tuple[str, ...] = ()
    rows: int = 0
    blocked: str | None = None
    dropped: bool = False
    seconds: float = 0.0


def _days_with_rows(conn: psycopg.Connection, schema: str, name: str) -> list[dt.date]:
    t = sql.Identifier(TIME_COLUMN)
    rows = conn.execute(sql.SQL("SELECT DISTINCT {}::date FROM {} ORDER BY 1").format(
        t, sql.Identifier(schema, name))).fetchall()
    return [r[0] for r in rows]


def _missing_export(conn: psycopg.Connection, settings: Settings, group: ChannelGroup, ship: str,
                    part: Partition) -> str | None:
    for day in _days_with_rows(conn, settings.target_schema, part.name):
        path = parquet_path(settings, group, ship, day)
        if not path.exists():
            return f"not exported yet: {path}"
    return None


def plan(conn: psycopg.Connection, settings: Settings, groups: Sequence[ChannelGroup],
         now: dt.datetime) -> list[Expired]:
    """The partitions of every configured ship's wide tables that ended before the cutoff."""
    if settings.retention is None:
        return []
    limit = cutoff(now, settings.retention)
    gate = export_in_use(settings)
    s = settings.target_schema
    out = []
    for ship in settings.ships:
        for g in groups:
            table = settings.table_name(ship, g.number)
            if table_kind(conn, s, table) != "p":
                continue
            shadow = corrections_table_name(settings, ship, g.number)
            shadows = list_partitions(conn, s, shadow) if table_kind(conn, s, shadow) == "p" else []
            for p in list_partitions(conn, s, table):
                if p.end is None or p.end > limit:
                    continue
                inside = tuple(x.name for x in shadows if x.end is not None and x.end <= p.end
                               and x.start is not None and (p.start is None or x.start >= p.start))
                e = Expired(ship, g.number, table, p, inside)
                count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s, p.name))
                row = conn.execute(count).fetchone()
                e.rows = int(row[0]) if row else 0
                if gate:
                    e.blocked = _missing_export(conn, settings, g, ship, p)
                out.append(e)
    return out


def _drop(conn: psycopg.Connection, schema: str, parent: str, name: str) -> None:
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
        sql.Identifier(schema, parent), sql.Identifier(schema, name)))
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, name)))


def apply(conn: psycopg.Connection, settings: Settings, groups: Sequence[ChannelGroup],
          now: dt.datetime | None = None, dry_run: bool = False) -> list[Expired]:
    """Detach and drop every expired, unblocked partition (and its shadow partitions).
    ``conn`` in autocommit mode. Returns what was found, each marked dropped or blocked."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    s = settings.target_schema
    found = plan(conn, settings, groups, now)
    for e in found:
        if e.blocked or dry_run:
            continue
        t0 = time.perf_counter()
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
                conn.execute("SELECT pg_advisory_xact_lock(%s, 1)", (_key(f"n2w:ddl:{s}.{e.table}"),))
                _drop(conn, s, e.table, e.partition.name)
                shadow = corrections_table_name(settings, e.ship, e.group)
                if e.shadow_partitions:
                    conn.execute("SELECT pg_advisory_xact_lock(%s, 1)", (_key(f"n2w:ddl:{s}.{shadow}"),))
                for name in e.shadow_partitions:
                    _drop(conn, s, shadow, name)
        except psycopg.errors.LockNotAvailable:
            e.blocked = f"table busy for {LOCK_TIMEOUT} (lock timeout): kept until the next run"
            continue
        e.dropped = True
        e.seconds = time.perf_counter() - t0
    return found


def format_report(found: Sequence[Expired], settings: Settings, dry_run: bool) -> str:
    if settings.retention is None:
        return "retention is off (N2W_RETENTION unset): nothing to drop"
    n, unit = settings.retention
    lines = [f"retention {n} {unit}(s): {len(found)} partition(s) past the cutoff"]
    for e in found:
        state = ("would drop" if dry_run else "dropped") if not e.blocked else "kept"
        extra = f" ({e.blocked})" if e.blocked else (f" in {e.seconds:.2f} s" if e.dropped else "")
        shadows = f" + {len(e.shadow_partitions)} corrections partition(s)" if e.shadow_partitions else ""
        lines.append(f"  {state} {e.partition.name}: {e.partition.start} .. {e.partition.end}, "
                     f"{e.rows:,} rows{shadows}{extra}")
    return "\n".join(lines)
