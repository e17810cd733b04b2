"""One tick's read: the narrow rows past the frontier and in the pending ranges, per
(ship, hour), in a single REPEATABLE READ snapshot. The queries are index range scans of
at most ``N2W_REALTIME_BATCH_ROWS`` entries on the arrival index (``index.py``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.realtime.cursor import Arrival, Cursor, Key, arrival, part_key
from n2w_pipeline.realtime.writers import Writers, replay_lsn


@dataclass(frozen=True)
class PartitionRows:
    """Rows of one (ship, hour) found in an arrival range, and its last arrival value."""

    ship: str
    hour: dt.datetime
    rows: int
    last: Key

    @property
    def part(self) -> str:
        return part_key(self.ship, self.hour)


@dataclass
class TickRead:
    """What one snapshot of the narrow table says (``read_tick``)."""

    xmin: int  # pg_snapshot_xmin: every older transaction has ended
    xmax: int  # pg_snapshot_xmax: every transaction that could be running is below it
    replay_lsn: int | None = None  # a standby's replayed WAL position before the snapshot; None: primary
    writers: Writers | None = None  # open writer transactions, read after the snapshot (``tick``)
    initial: Key | None = None  # set on the first tick: the frontier to start from
    batch: list[PartitionRows] = field(default_factory=list)
    batch_rows: int = 0
    batch_last: Key | None = None
    gaps: list[tuple[Key, Key]] = field(default_factory=list)  # (lo, hi] ids not visible
    pending: dict[int, list[PartitionRows]] = field(default_factory=dict)  # index → rows


def _idents(settings: Settings, arr: Arrival) -> dict[str, sql.Composable]:
    c = settings.columns
    return {
        "src": sql.Identifier(*settings.source_qualified),
        "col": sql.Identifier(arr.column),
        "ship": sql.Identifier(c.ship_id),
        "ct": sql.Identifier(c.created_time),
        "typ": arr.sql_type,
    }


def batch_query(settings: Settings) -> sql.Composed:
    """Unique ids: the oldest ``%(n)s`` rows past ``%(f)s`` per (ship, hour), plus the id
    gaps among them (kind ``g``: lo exclusive, hi inclusive)."""
    arr = arrival(settings)
    return sql.SQL(
        """WITH b AS MATERIALIZED (
  SELECT {col} AS k, {ship} AS ship, {ct} AS ct FROM {src}
  WHERE {col} > %(f)s::{typ} ORDER BY {col} LIMIT %(n)s)
SELECT 'p' AS kind, ship, date_trunc('hour', ct) AS hour, count(*) AS n, max(k) AS hi,
       NULL::{typ} AS lo
FROM b GROUP BY ship, date_trunc('hour', ct)
UNION ALL
SELECT 'g', NULL, NULL, NULL, k - 1, prev
FROM (SELECT k, lag(k, 1, %(f)s::{typ}) OVER (ORDER BY k) AS prev FROM b) x WHERE k > prev + 1"""
    ).format(**_idents(settings, arr))


def window_queries(settings: Settings) -> tuple[sql.Composed, sql.Composed]:
    """Non-unique arrival (server_created_time): the ``%(n)s``-th value past ``%(f)s``,
    then the rows of (f, that value] — ties included, so no row is cut at the bound."""
    ids = _idents(settings, arrival(settings))
    bound = sql.SQL(
        "SELECT {col} FROM {src} WHERE {col} > %(f)s::{typ} ORDER BY {col} OFFSET %(n1)s LIMIT 1"
    ).format(**ids)
    rows = sql.SQL(
        """SELECT {ship}, date_trunc('hour', {ct}), count(*), max({col}) FROM {src}
WHERE {col} > %(f)s::{typ} AND {col} <= %(m)s::{typ} GROUP BY 1, 2"""
    ).format(**ids)
    return bound, rows


def pending_query(settings: Settings) -> sql.Composed:
    """Rows per (ship, hour) in each pending range (lo, hi] (a nested loop of index scans)."""
    return sql.SQL(
        """SELECT g.i, s.{ship}, date_trunc('hour', s.{ct}), count(*), max(s.{col})
FROM unnest(%(lo)s::{typ}[], %(hi)s::{typ}[]) WITH ORDINALITY AS g(lo, hi, i)
JOIN {src} s ON s.{col} > g.lo AND s.{col} <= g.hi
GROUP BY 1, 2, 3"""
    ).format(**_idents(settings, arrival(settings)))


def read_tick(conn: psycopg.Connection, settings: Settings, cursor: Cursor) -> TickRead:
    """Read one tick's rows in a single REPEATABLE READ snapshot (nothing is written).

    ``conn`` must be in autocommit mode (each tick is its own transaction).
    """
    arr = arrival(settings)
    replayed = replay_lsn(conn)  # before the snapshot: it sees every commit replayed up to here
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        xmin, xmax = conn.execute(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
            "FROM pg_current_snapshot() s"
        ).fetchone()  # type: ignore[misc]
        read = TickRead(xmin=xmin, xmax=xmax, replay_lsn=replayed)
        if cursor.frontier is None:  # first tick: start at the newest row, history is backfill's
            row = conn.execute(sql.SQL("SELECT max({col}) FROM {src}").format(
                **_idents(settings, arr))).fetchone()
            read.initial = row[0] if row and row[0] is not None else arr.empty
            return read
        if arr.unique:
            _read_id_batch(conn, settings, cursor.frontier, read)
        else:
            _read_time_batch(conn, settings, cursor.frontier, read)
        read.batch.sort(key=lambda p: (p.hour, p.ship))
        read.gaps.sort()
        read.batch_rows = sum(p.rows for p in read.batch)
        read.batch_last = max((p.last for p in read.batch), default=None)  # type: ignore[type-var]
        if cursor.pending:
            found = conn.execute(
                pending_query(settings),
                {"lo": [p.lo for p in cursor.pending], "hi": [p.hi for p in cursor.pending]},
            )
            for i, ship, hour, rows, hi in found:
                read.pending.setdefault(int(i) - 1, []).append(PartitionRows(ship, hour, int(rows), hi))
        return read
    finally:
        conn.execute("COMMIT")


def _read_id_batch(conn: psycopg.Connection, settings: Settings, frontier: Key, read: TickRead) -> None:
    """Unique ids: the batch's partitions, and the id gaps among its rows."""
    for kind, ship, hour, rows, hi, lo in conn.execute(
        batch_query(settings), {"f": frontier, "n": settings.realtime_batch_rows}
    ):
        if kind == "p":
            read.batch.append(PartitionRows(ship, hour, int(rows), int(hi)))
        else:
            read.gaps.append((int(lo), int(hi)))


def _read_time_batch(conn: psycopg.Connection, settings: Settings, frontier: Key, read: TickRead) -> None:
    """server_created_time: the batch's partitions, up to the batch's last arrival value
    (all its ties) or, on a shorter backlog, to the newest value past the frontier."""
    ids = _idents(settings, arrival(settings))
    bound_q, rows_q = window_queries(settings)
    bound = conn.execute(bound_q, {"f": frontier, "n1": settings.realtime_batch_rows - 1}).fetchone()
    last = bound[0] if bound else conn.execute(
        sql.SQL("SELECT max({col}) FROM {src} WHERE {col} > %(f)s::{typ}").format(**ids),
        {"f": frontier},
    ).fetchone()[0]  # type: ignore[index]
    if last is not None:
        for ship, hour, rows, hi in conn.execute(rows_q, {"f": frontier, "m": last}):
            read.batch.append(PartitionRows(ship, hour, int(rows), hi))
