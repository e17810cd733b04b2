"""Read one ship-day of the wide tables from PostgreSQL as Arrow, slice by slice, in one snapshot.

Rows never pass through Python tuples: ADBC's PostgreSQL driver streams
``COPY … TO STDOUT (FORMAT binary)`` into Arrow. As in ``extract.py``, ADBC takes that path
only for a query without bound parameters, so the slice's window is bound in a
``SELECT set_config(…, true)`` and the COPY query reads it back with ``current_setting``.

A day is read in one ``REPEATABLE READ`` transaction: its slices, every group and the
reference figures of the reconciliation (``day_stats``, computed by PostgreSQL itself) see the
same snapshot, so the files, the ClickHouse rows and the figures they are checked against
describe one state of the tables, even while realtime or correction runs write.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
import pyarrow as pa
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.write import existing_columns

SHIP_COLUMN = "ship_id"
STATS_CHUNK = 500  # columns per aggregate query: 3 aggregates each, PostgreSQL allows 1,664 targets
_WINDOW_SQL = "SELECT set_config('n2w.start', $1, true), set_config('n2w.end', $2, true)"
_START = "(SELECT current_setting('n2w.start')::timestamp)"
_END = "(SELECT current_setting('n2w.end')::timestamp)"


def arrow_schema(group: ChannelGroup) -> pa.Schema:
    """``created_time``, ``ship_id``, then one float64 column per channel (the PostgreSQL names)."""
    return pa.schema(
        [pa.field(TIME_COLUMN, pa.timestamp("us")), pa.field(SHIP_COLUMN, pa.string())]
        + [pa.field(c, pa.float64()) for c in group.columns]
    )


@dataclass
class ColumnStats:
    """Rows, and per column: non-NULL count, sum and sum of absolute values (the scale a
    relative sum tolerance is measured against)."""

    rows: int = 0
    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)


def window_query(settings: Settings, ship: str, group: ChannelGroup, present: Sequence[str]) -> str:
    """The slice query (no parameters: the window comes from ``current_setting``). Channels of
    the list that the table does not have yet read as NULL."""
    have = set(present)
    cols = [
        sql.Identifier(c) if c in have else sql.SQL("NULL::float8 AS {}").format(sql.Identifier(c))
        for c in group.columns
    ]
    t = sql.Identifier(TIME_COLUMN)
    return sql.SQL(
        "SELECT {t}, {cols} FROM {table} WHERE {t} >= {start} AND {t} < {end} ORDER BY {t}"
    ).format(
        t=t, cols=sql.SQL(", ").join(cols),
        table=sql.Identifier(settings.target_schema, settings.table_name(ship, group.number)),
        start=sql.SQL(_START), end=sql.SQL(_END),
    ).as_string(None)


def stats_queries(settings: Settings, ship: str, group: ChannelGroup, present: Sequence[str]) -> list[str]:
    """count(*), and count/sum/sum(abs) per present column, in chunks; window as above."""
    table = sql.Identifier(settings.target_schema, settings.table_name(ship, group.number))
    cols = [c for c in group.columns if c in set(present)]
    t = sql.Identifier(TIME_COLUMN)
    out = []
    for i in range(0, max(len(cols), 1), STATS_CHUNK):
        aggs = [sql.SQL("count(*)")]
        for c in cols[i:i + STATS_CHUNK]:
            ident = sql.Identifier(c)
            aggs += [sql.SQL("count({})").format(ident), sql.SQL("sum({})").format(ident),
                     sql.SQL("sum(abs({}))").format(ident)]
        out.append(sql.SQL("SELECT {} FROM {} WHERE {t} >= {s} AND {t} < {e}").format(
            sql.SQL(", ").join(aggs), table, t=t, s=sql.SQL(_START), e=sql.SQL(_END)).as_string(None))
    return out


class WideDayReader:
    """An ADBC connection reading ship-days; ``with reader.day(ship, day): …`` holds one snapshot."""

    def __init__(self, url: str, settings: Settings) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import adbc_driver_postgresql.dbapi as adbc

        self.settings = settings
        self._url = url
        self._conn = adbc.connect(url)
        self._present: dict[tuple[str, int], list[str] | None] = {}

    def columns(self, ship: str, group: ChannelGroup) -> list[str] | None:
        """Columns the wide table has now (None: no table); read once per reader."""
        key = (ship, group.number)
        if key not in self._present:
            with psycopg.connect(self._url, autocommit=True) as conn:
                self._present[key] = existing_columns(
                    conn, self.settings.target_schema, self.settings.table_name(ship, group.number))
        return self._present[key]

    def begin(self) -> None:
        """Start the day's snapshot (the first statement of the transaction)."""
        cur = self._conn.cursor()
        try:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        finally:
            cur.close()

    def end(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def _window(self, cur, start: dt.datetime, end: dt.datetime) -> None:  # noqa: ANN001
        cur.execute(_WINDOW_SQL, (start.isoformat(), end.isoformat()))
        cur.fetchall()

    def read(self, ship: str, group: ChannelGroup, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """The rows of [start, end) as ``arrow_schema(group)``, ordered by time."""
        schema = arrow_schema(group)
        present = self.columns(ship, group)
        if present is None:
            return schema.empty_table()
        cur = self._conn.cursor()
        try:
            self._window(cur, start, end)
            cur.execute(window_query(self.settings, ship, group, present))
            table = cur.fetch_arrow_table()
        finally:
            cur.close()
        ship_col = pa.array([ship] * table.num_rows, pa.string())
        columns = [table.column(0).cast(pa.timestamp("us")), ship_col]
        columns += [table.column(i + 1).cast(pa.float64()) for i in range(len(group.columns))]
        return pa.Table.from_arrays(columns, schema=schema)

    def day_stats(self, ship: str, group: ChannelGroup, start: dt.datetime, end: dt.datetime) -> ColumnStats:
        """PostgreSQL's own figures for [start, end): the reconciliation's reference."""
        present = self.columns(ship, group)
        stats = ColumnStats(count={c: 0 for c in group.columns}, total={c: 0.0 for c in group.columns},
                            scale={c: 0.0 for c in group.columns})
        if present is None:
            return stats
        cols = [c for c in group.columns if c in set(present)]
        cur = self._conn.cursor()
        try:
            for i, query in enumerate(stats_queries(self.settings, ship, group, present)):
                self._window(cur, start, end)
                cur.execute(query)
                row = cur.fetchone()
                assert row is not None
                stats.rows = int(row[0])
                for j, c in enumerate(cols[i * STATS_CHUNK:(i + 1) * STATS_CHUNK]):
                    n, s, a = row[1 + 3 * j: 4 + 3 * j]
                    stats.count[c], stats.total[c], stats.scale[c] = int(n), float(s or 0.0), float(a or 0.0)
        finally:
            cur.close()
        return stats

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> WideDayReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
