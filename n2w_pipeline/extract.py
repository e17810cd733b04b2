"""Read one (ship, time window) of the narrow table as an Arrow-backed Polars frame.

Extraction is the pipeline's bottleneck, so rows never pass through Python tuples:
ADBC's PostgreSQL driver streams ``COPY … TO STDOUT (FORMAT binary)`` straight into
Arrow. The SQL does the cheap part of the value rule (pick the column by
``value_format``); strings are parsed in Polars (``pivot.resolve_values``), where a
bad string becomes a counted NULL instead of a failed query.
"""

from __future__ import annotations

import datetime as dt
import warnings

import polars as pl
from psycopg import sql

from n2w_pipeline.config import Settings

# value kind codes returned by the extraction query
KIND_UNKNOWN, KIND_DECIMAL, KIND_INTEGER, KIND_BOOLEAN, KIND_STRING = 0, 1, 2, 3, 4

EXTRACT_SCHEMA = {
    "created_time": pl.Datetime("us"),
    "channel": pl.String,
    "num": pl.Float64,
    "text": pl.String,
    "kind": pl.Int16,
}


def extract_query(settings: Settings) -> str:
    """The narrow slice query, identifiers quoted; ``$1`` ship, ``$2``/``$3`` window."""
    c = settings.columns
    q = sql.SQL(
        """SELECT {ct} AS created_time, {ch} AS channel,
  CASE {vf} WHEN 'Decimal' THEN {dv} WHEN 'Integer' THEN {lv}::float8
            WHEN 'Boolean' THEN {bv}::int::float8 END AS num,
  CASE WHEN {vf} = 'String' THEN {sv} END AS text,
  (CASE {vf} WHEN 'Decimal' THEN 1 WHEN 'Integer' THEN 2 WHEN 'Boolean' THEN 3
             WHEN 'String' THEN 4 ELSE 0 END)::int2 AS kind
FROM {src}
WHERE {ship} = $1 AND {ct} >= $2 AND {ct} < $3"""
    ).format(
        ct=sql.Identifier(c.created_time),
        ch=sql.Identifier(c.channel),
        vf=sql.Identifier(c.value_format),
        dv=sql.Identifier(c.double_v),
        lv=sql.Identifier(c.long_v),
        bv=sql.Identifier(c.bool_v),
        sv=sql.Identifier(c.str_v),
        src=sql.Identifier(*settings.source_qualified),
        ship=sql.Identifier(c.ship_id),
    )
    return q.as_string(None)


class NarrowReader:
    """An ADBC connection that reads narrow slices; use as a context manager."""

    def __init__(self, url: str, settings: Settings) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import adbc_driver_postgresql.dbapi as adbc

        self._conn = adbc.connect(url)
        self._query = extract_query(settings)

    def read(self, ship: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """All narrow rows of ``ship`` with ``start <= created_time < end``."""
        cur = self._conn.cursor()
        try:
            cur.execute(self._query, (ship, start, end))
            table = cur.fetch_arrow_table()
        finally:
            cur.close()
        self._conn.commit()  # end the read transaction: the next slice gets a new snapshot
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        if frame.height == 0:
            return pl.DataFrame(schema=EXTRACT_SCHEMA)
        return frame.cast(EXTRACT_SCHEMA)  # type: ignore[arg-type]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> NarrowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
