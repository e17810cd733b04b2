"""Read one (ship, time window) of the narrow table as an Arrow-backed Polars frame.

Extraction is the pipeline's bottleneck, so rows never pass through Python tuples:
ADBC's PostgreSQL driver streams ``COPY … TO STDOUT (FORMAT binary)`` straight into
Arrow. The SQL does the cheap part of the value rule (pick the column by
``value_format``); strings are parsed in Polars (``pivot.resolve_values``), where a
bad string becomes a counted NULL instead of a failed query.

Binding and COPY. ADBC only takes its COPY path for a query *without* parameters; a
query with bound parameters goes through a prepared statement whose whole result is
buffered by libpq and converted afterwards (measured ~25–40 % slower, and it holds the
slice twice in memory). Inlining the values as literals would get COPY back but break
the rule that values are always bound. So the window is bound as parameters of a
``SELECT set_config(…, true)`` in the read's own transaction, and the COPY query reads
it back with ``current_setting(…)`` (stable expressions, so the created_time index is
still used). Same speed as literals, values still bound.

Channel codes. With a catalog, the reader keeps a temporary table channel → code on its
connection (loaded by ADBC bulk ingest, i.e. COPY) and the server joins it: rows carry
an ``int4`` code instead of a ~45-byte id (half the bytes to transfer and parse, no
string join in the client); only rows of channels in no list carry their id.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

import polars as pl
from psycopg import sql

from n2w_pipeline.config import Settings

# value kind codes returned by the extraction query
KIND_UNKNOWN, KIND_DECIMAL, KIND_INTEGER, KIND_BOOLEAN, KIND_STRING = 0, 1, 2, 3, 4

CODED_SCHEMA = {
    "created_time": pl.Datetime("us"),
    "code": pl.Int32,
    "channel": pl.String,  # only for rows whose channel is in no list (code is NULL)
    "num": pl.Float64,
    "text": pl.String,
    "kind": pl.Int16,
}

CODE_TABLE = "n2w_channel_codes"
_WINDOW_SQL = (
    "SELECT set_config('n2w.ship', $1, true), set_config('n2w.start', $2, true), "
    "set_config('n2w.end', $3, true)"
)
_SHIP = "(SELECT current_setting('n2w.ship'))"  # an InitPlan: evaluated once, not per row
_START = "(SELECT current_setting('n2w.start')::timestamp)"
_END = "(SELECT current_setting('n2w.end')::timestamp)"


def _query(settings: Settings, coded: bool, where: tuple[str, str, str]) -> str:
    c = settings.columns
    channel = (
        sql.SQL("m.code, CASE WHEN m.code IS NULL THEN n.{ch} END AS channel")
        if coded else sql.SQL("n.{ch} AS channel")
    )
    join = (
        sql.SQL("LEFT JOIN pg_temp.{codes} m ON m.channel = n.{ch}") if coded else sql.SQL("")
    )
    q = sql.SQL(
        """SELECT n.{ct} AS created_time, {channel},
  CASE n.{vf} WHEN 'Decimal' THEN n.{dv} WHEN 'Integer' THEN n.{lv}::float8
              WHEN 'Boolean' THEN n.{bv}::int::float8 END AS num,
  CASE WHEN n.{vf} = 'String' THEN n.{sv} END AS text,
  (CASE n.{vf} WHEN 'Decimal' THEN 1 WHEN 'Integer' THEN 2 WHEN 'Boolean' THEN 3
               WHEN 'String' THEN 4 ELSE 0 END)::int2 AS kind
FROM {src} n {join}
WHERE n.{ship} = {p_ship} AND n.{ct} >= {p_start} AND n.{ct} < {p_end}"""
    )
    fields = dict(
        ct=sql.Identifier(c.created_time),
        ch=sql.Identifier(c.channel),
        vf=sql.Identifier(c.value_format),
        dv=sql.Identifier(c.double_v),
        lv=sql.Identifier(c.long_v),
        bv=sql.Identifier(c.bool_v),
        sv=sql.Identifier(c.str_v),
        src=sql.Identifier(*settings.source_qualified),
        ship=sql.Identifier(c.ship_id),
        codes=sql.Identifier(CODE_TABLE),
        p_ship=sql.SQL(where[0]),
        p_start=sql.SQL(where[1]),
        p_end=sql.SQL(where[2]),
    )
    return q.format(
        channel=channel.format(**fields), join=join.format(**fields), **fields
    ).as_string(None)


def copy_extract_query(settings: Settings, coded: bool = False) -> str:
    """The slice query without parameters (ADBC's COPY path): the window comes from
    ``current_setting('n2w.ship' | 'n2w.start' | 'n2w.end')``, set by a bound statement."""
    return _query(settings, coded, (_SHIP, _START, _END))


class NarrowReader:
    """An ADBC connection that reads narrow slices; use as a context manager.

    ``channels`` (every listed channel id, in code order) is loaded once into a temporary
    channel → code table on the connection; ``read`` returns rows with those codes.
    """

    def __init__(self, url: str, settings: Settings, channels: Sequence[str]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import adbc_driver_postgresql.dbapi as adbc

        self._conn = adbc.connect(url)
        self._query = copy_extract_query(settings, coded=True)
        self._load_codes(channels)

    def _load_codes(self, channels: Sequence[str]) -> None:
        import pyarrow as pa

        table = pa.table({
            "channel": pa.array(list(channels), pa.string()),
            "code": pa.array(range(len(channels)), pa.int32()),
        })
        cur = self._conn.cursor()
        try:
            cur.adbc_ingest(CODE_TABLE, table, mode="replace", temporary=True)
            cur.execute(f"ANALYZE pg_temp.{CODE_TABLE}")
        finally:
            cur.close()
        self._conn.commit()

    def read(self, ship: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """All narrow rows of ``ship`` with ``start <= created_time < end`` (CODED_SCHEMA)."""
        cur = self._conn.cursor()
        try:
            cur.execute(_WINDOW_SQL, (ship, start.isoformat(), end.isoformat()))
            cur.fetchall()
            cur.execute(self._query)
            table = cur.fetch_arrow_table()
        finally:
            cur.close()
        self._conn.commit()  # end the read transaction: the next slice gets a new snapshot
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        if frame.height == 0:
            return pl.DataFrame(schema=CODED_SCHEMA)
        return frame.cast(CODED_SCHEMA)  # type: ignore[arg-type]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> NarrowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
