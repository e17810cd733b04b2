"""Read one ship-day of the wide tables from PostgreSQL as Arrow, slice by slice, in one snapshot.

Rows never pass through Python tuples. Each slice is one ``COPY (SELECT …) TO STDOUT (FORMAT
binary)`` whose columns are all fixed-width — NULL is sent as NaN (``coalesce(c, 'NaN')``; the
wide tables never hold NaN: the value rule and the corrections turn non-finite values into NULL,
and a NaN that got in anyway would show as a count mismatch in the reconciliation) — so the
client decodes it in one vectorised NumPy pass (``copy_binary.decode_dense_copy``, straight into
one contiguous row per channel) and NaN becomes Arrow's null (``dense_to_arrow``: the validity
bitmaps of all channels packed at once, the value buffers used in place). Measured on a ship-day
of the 655-channel table (busy machine): the server sent its binary COPY in ~0.5 s, ADBC's COPY
reader took 1.4-2.5 s to turn it into Arrow, this reader ~0.4-0.5 s; building the Arrow columns
then took 0.055 CPU-s per ship-day of the three tables (0.106 s with one ``np.isnan`` mask and
``pa.array`` per column after a separate transpose).

A day is read in one ``REPEATABLE READ, READ ONLY`` transaction: its slices, every group and the
reference figures of the reconciliation (``day_stats``, computed by PostgreSQL itself) see the
same snapshot, so the files, the ClickHouse rows and the figures they are checked against
describe one state of the tables, even while realtime or correction runs write. The reference
figures are computed on a second connection that imports the same snapshot
(``pg_export_snapshot``), in a thread, while the slices stream on the first: the server's
aggregation overlaps the client's decoding and writing. PostgreSQL computes rows and, per column,
``count`` and ``sum`` (the figures the reconciliation compares); the scale a relative sum
tolerance is measured against, the sum of absolute values, is taken from the values read
(``WideSlice.abs_sums``), which costs the client one NumPy pass instead of the server one more
aggregate per column (``sum(abs(c))`` was ~40 % of the reference query's time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.copy_binary import decode_dense_copy
from n2w_pipeline.write import existing_columns

SHIP_COLUMN = "ship_id"
STATS_CHUNK = 800  # columns per aggregate query: 2 aggregates each, PostgreSQL allows 1,664 targets


def arrow_schema(group: ChannelGroup) -> pa.Schema:
    """``created_time``, ``ship_id``, then one float64 column per channel (the PostgreSQL names)."""
    return pa.schema(
        [pa.field(TIME_COLUMN, pa.timestamp("us")), pa.field(SHIP_COLUMN, pa.string())]
        + [pa.field(c, pa.float64()) for c in group.columns]
    )


@dataclass
class ColumnStats:
    """Rows, and per column: non-NULL count, sum and, where known, the sum of absolute values
    (the scale a relative sum tolerance is measured against)."""

    rows: int = 0
    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)


def window_query(settings: Settings, ship: str, group: ChannelGroup, present: Sequence[str]) -> sql.Composed:
    """``COPY (slice) TO STDOUT (FORMAT binary)``, window bound as two parameters; every channel
    column as ``coalesce(c, 'NaN')``, channels of the list that the table lacks as NaN."""
    have = set(present)
    nan = sql.SQL("'NaN'::float8")
    cols = [
        sql.SQL("coalesce({}, {})").format(sql.Identifier(c), nan) if c in have else nan
        for c in group.columns
    ]
    t = sql.Identifier(TIME_COLUMN)
    return sql.SQL(
        "COPY (SELECT {t}, {cols} FROM {table} WHERE {t} >= %s AND {t} < %s ORDER BY {t}) "
        "TO STDOUT (FORMAT binary)"
    ).format(
        t=t, cols=sql.SQL(", ").join(cols),
        table=sql.Identifier(settings.target_schema, settings.table_name(ship, group.number)),
    )


@dataclass
class WideSlice:
    """A slice as Arrow, and per channel the sum of absolute values (0 for a slice without rows)."""

    table: pa.Table
    abs_sums: np.ndarray


def dense_to_arrow(group: ChannelGroup, ship: str, times: np.ndarray, columns: np.ndarray) -> WideSlice:
    """``arrow_schema(group)`` from µs times and a (channels, rows) float64 array whose NaN are
    NULL: each value buffer is the channel's NumPy row (no copy), the validity bitmaps of all
    channels are packed in one call, a column without NULL gets none."""
    n = len(times)
    valid = ~np.isnan(columns)
    nulls = n - np.count_nonzero(valid, axis=1)
    bitmaps = np.packbits(valid, axis=1, bitorder="little")
    arrays = [pa.array(times, pa.timestamp("us")), pa.array([ship] * n, pa.string())]
    f64 = pa.float64()
    arrays += [
        pa.Array.from_buffers(f64, n, [pa.py_buffer(bitmaps[j]) if nulls[j] else None,
                                       pa.py_buffer(columns[j])], null_count=int(nulls[j]))
        for j in range(len(columns))
    ]
    magnitudes = np.abs(columns)
    np.fmax(magnitudes, 0.0, out=magnitudes)  # NaN (NULL) → 0
    abs_sums = magnitudes.sum(axis=1)
    return WideSlice(pa.Table.from_arrays(arrays, schema=arrow_schema(group)), abs_sums)


def stats_queries(settings: Settings, ship: str, group: ChannelGroup, present: Sequence[str]
                  ) -> list[sql.Composed]:
    """count(*), and count/sum per present column, in chunks; window as two parameters."""
    table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
    cols = [c for c in group.columns if c in set(present)]
    t = sql.Identifier(TIME_COLUMN)
    out = []
    for i in range(0, max(len(cols), 1), STATS_CHUNK):
        aggs = [sql.SQL("count(*)")]
        for c in cols[i:i + STATS_CHUNK]:
            ident = sql.Identifier(c)
            aggs += [sql.SQL("count({})").format(ident), sql.SQL("sum({})").format(ident)]
        out.append(sql.SQL("SELECT {} FROM {} WHERE {t} >= %s AND {t} < %s").format(
            sql.SQL(", ").join(aggs), table, t=t))
    return out


class WideDayReader:
    """A connection reading ship-days: ``begin``, ``read``/``day_stats`` …, ``end`` is one snapshot."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        self._url = url
        self._conn = psycopg.connect(url)
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True
        self._present: dict[tuple[str, int], list[str] | None] = {}
        self._stats_conn: psycopg.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stats: dict[int, Future[ColumnStats]] = {}

    def columns(self, ship: str, group: ChannelGroup) -> list[str] | None:
        """Columns the wide table has now (None: no table); read once per reader."""
        key = (ship, group.number)
        if key not in self._present:
            with psycopg.connect(self._url, autocommit=True) as conn:
                self._present[key] = existing_columns(
                    conn, self.settings.target_schema, self.settings.table_name(ship, group.number))
        return self._present[key]

    def begin(self, ship: str, groups: Sequence[ChannelGroup], start: dt.datetime, end: dt.datetime) -> None:
        """Take the day's snapshot and start PostgreSQL's reference figures of ``groups`` for
        [start, end) on a second connection in that snapshot, in the background."""
        for g in groups:
            self.columns(ship, g)
        row = self._conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        if self._stats_conn is None:
            self._stats_conn = psycopg.connect(self._url)
            self._stats_conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._stats_conn.read_only = True
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="n2w-export-stats")
        self._stats_conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(row[0])))
        assert self._pool is not None
        self._stats = {g.number: self._pool.submit(self._day_stats, self._stats_conn, ship, g, start, end)
                       for g in groups}

    def end(self) -> None:
        for f in self._stats.values():
            f.result()
        self._stats = {}
        if self._stats_conn is not None:
            self._stats_conn.commit()
        self._conn.commit()

    def rollback(self) -> None:
        for f in self._stats.values():
            f.cancel()
            with contextlib.suppress(Exception):  # the day failed anyway; its error is raised elsewhere
                f.result()
        self._stats = {}
        if self._stats_conn is not None:
            self._stats_conn.rollback()
        self._conn.rollback()

    def read(self, ship: str, group: ChannelGroup, start: dt.datetime, end: dt.datetime) -> WideSlice:
        """The rows of [start, end) as ``arrow_schema(group)``, ordered by time."""
        present = self.columns(ship, group)
        if present is None:
            return WideSlice(arrow_schema(group).empty_table(), np.zeros(len(group.columns)))
        data = bytearray()
        with self._conn.cursor() as cur, cur.copy(window_query(self.settings, ship, group, present),
                                                  (start, end)) as copy:
            for block in copy:
                data += block
        times, columns = decode_dense_copy(data, len(group.columns), by_column=True)
        del data
        return dense_to_arrow(group, ship, times, columns)

    def day_stats(self, ship: str, group: ChannelGroup, start: dt.datetime, end: dt.datetime) -> ColumnStats:
        """PostgreSQL's own figures for [start, end): the reconciliation's reference (started by
        ``begin``, else computed now on the reading connection)."""
        if group.number in self._stats:
            return self._stats[group.number].result()
        return self._day_stats(self._conn, ship, group, start, end)

    def _day_stats(self, conn: psycopg.Connection, ship: str, group: ChannelGroup, start: dt.datetime,
                   end: dt.datetime) -> ColumnStats:
        present = self.columns(ship, group)
        stats = ColumnStats(count={c: 0 for c in group.columns}, total={c: 0.0 for c in group.columns})
        if present is None:
            return stats
        cols = [c for c in group.columns if c in set(present)]
        for i, query in enumerate(stats_queries(self.settings, ship, group, present)):
            row = conn.execute(query, (start, end)).fetchone()
            assert row is not None
            stats.rows = int(row[0])
            for j, c in enumerate(cols[i * STATS_CHUNK:(i + 1) * STATS_CHUNK]):
                n, s = row[1 + 2 * j: 3 + 2 * j]
                stats.count[c], stats.total[c] = int(n), float(s or 0.0)
        return stats

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._stats_conn is not None:
            self._stats_conn.close()
        self._conn.close()

    def __enter__(self) -> WideDayReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
