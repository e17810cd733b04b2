"""Synthetic narrow rows in the fleet's real schema, generated inside PostgreSQL.

Every listed channel reports every 15 s, minus ~5 % missing samples; formats are spread
over Decimal, Integer, Boolean and String (a few strings do not parse, e.g. ``n/a``); a few
channels that are in no list report too. The same seed gives the same rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.config import Settings

UNKNOWN_CHANNELS = ("/n2w_synthetic/unknown/a", "/n2w_synthetic/unknown/b", "/n2w_synthetic/unknown/c")
CADENCE = dt.timedelta(seconds=15)


def create_source_table(conn: psycopg.Connection, settings: Settings) -> None:
    """The narrow table with the fleet's own schema (primary key (ship, channel, time) and a
    created_time DESC index, as in production), if it does not exist yet.

    Call ``create_source_indexes`` after it: a fresh table is loaded first and indexed
    after, which is several times faster than maintaining the indexes row by row.
    """
    c = settings.columns
    schema, table = settings.source_qualified
    ident = sql.Identifier
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident(schema)))
    conn.execute(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {src} (
    {id} bigserial NOT NULL, {ship} text NOT NULL, {ch} text NOT NULL,
    {ct} timestamp NOT NULL, {sct} timestamp NULL,
    {bv} bool NULL, {sv} text NULL, {lv} int8 NULL, {dv} float8 NULL, {vf} varchar(50) NULL)"""
        ).format(
            src=ident(schema, table), id=ident(c.id), ship=ident(c.ship_id), ch=ident(c.channel),
            ct=ident(c.created_time), sct=ident(c.server_created_time), bv=ident(c.bool_v),
            sv=ident(c.str_v), lv=ident(c.long_v), dv=ident(c.double_v), vf=ident(c.value_format),
        )
    )


def create_source_indexes(conn: psycopg.Connection, settings: Settings) -> None:
    """The fleet's primary key and created_time index (no-ops if they exist)."""
    c = settings.columns
    schema, table = settings.source_qualified
    ident = sql.Identifier
    has_pk = conn.execute(
        "SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
        (ident(schema, table).as_string(conn),),
    ).fetchone()
    if not has_pk:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({}, {}, {})").format(
                ident(schema, table), ident(f"{table}_pk"), ident(c.ship_id), ident(c.channel),
                ident(c.created_time),
            )
        )
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING btree ({} DESC)").format(
            ident(f"{table}_created_time_idx"), ident(schema, table), ident(c.created_time)
        )
    )


def _salt(seed: int, ship: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{ship}".encode()).digest()[:6], "big")


def channel_formats(channels: Sequence[str]) -> list[tuple[str, str]]:
    """A stable value format per channel: 70 % Decimal, 15 % Integer, 10 % Boolean, 5 % String."""
    out = []
    for i, ch in enumerate(channels):
        r = i % 20
        fmt = "String" if r == 0 else "Boolean" if r in (1, 2) else "Integer" if r in (3, 4, 5) else "Decimal"
        out.append((ch, fmt))
    return out


def generate(
    conn: psycopg.Connection,
    settings: Settings,
    catalog: ChannelCatalog,
    ships: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    seed: int = 1,
    missing_pct: int = 5,
    channels: Sequence[str] | None = None,
    own_table: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
    interleave: bool = False,
) -> int:
    """Insert synthetic narrow rows for ``ships`` over [start, end); returns rows inserted.
    ``progress(done, total, rows)`` after each statement, a ship-day (a ship-hour with
    ``interleave``); rows: inserted so far.

    Re-running with the same arguments inserts nothing new (primary key conflicts are
    skipped), so ``generate`` is safe to repeat. ``interleave``: every ship's hour in turn,
    hour by hour, so the ships' rows share the table's pages the way a fleet's ingestion
    lays them out; otherwise ship after ship, a day per statement.

    The table's structure is changed only when it is n2w's own: created by this call, or
    ``own_table`` (the embedded database's). Then an empty table is loaded without its
    primary key and created_time index, which are built after (several times faster), and
    missing ones are added. A table that already existed elsewhere keeps its constraints
    and indexes as they are (rows go in through them).
    """
    c = settings.columns
    ident = sql.Identifier
    src = sql.Identifier(*settings.source_qualified)
    existed = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (src.as_string(conn),)).fetchone()
    own_table = own_table or not (existed and existed[0])
    create_source_table(conn, settings)
    empty = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(src)).fetchone()
    fresh = (empty[0] if empty else False) and own_table
    if fresh:  # n2w's own empty table: load without indexes, build them after
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
            src, sql.Identifier(f"{settings.source_table}_pk")))
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
            sql.Identifier(settings.source_schema, f"{settings.source_table}_created_time_idx")))
    chans = list(catalog.all_channels if channels is None else channels) + list(UNKNOWN_CHANNELS)
    formats = channel_formats(chans)
    total = 0
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE n2w_gen_channels (channel text, fmt text, n int8) ON COMMIT DROP"
        )
        with conn.cursor() as cur, cur.copy("COPY n2w_gen_channels FROM STDIN") as copy:
            for i, row in enumerate(formats):
                copy.write_row((*row, i))
        stmt = sql.SQL(
            """INSERT INTO {src} ({ship}, {ch}, {ct}, {sct}, {bv}, {sv}, {lv}, {dv}, {vf})
SELECT %(ship)s, g.channel, t, t + interval '20 seconds',
  CASE WHEN g.fmt = 'Boolean' THEN (h & 1) = 1 END,
  CASE WHEN g.fmt = 'String' THEN
       CASE WHEN (h & 63) = 7 THEN 'n/a' ELSE ((h & 65535) / 100.0)::text END END,
  CASE WHEN g.fmt = 'Integer' THEN (h & 4095) - 2048 END,
  CASE WHEN g.fmt = 'Decimal' THEN ((h & 1048575) - 524288) / 1000.0 END,
  g.fmt
FROM generate_series(%(start)s::timestamp, %(last)s::timestamp, interval '15 seconds') AS t
CROSS JOIN LATERAL (
  SELECT c.channel, c.fmt, hashint8(%(salt)s + c.n * 1000003 + extract(epoch FROM t)::int8 * 4099)
         & 2147483647 AS h
  FROM n2w_gen_channels c WHERE t IS NOT NULL) g
WHERE (h >> 12) %% 100 >= %(missing)s
{conflict}"""
        ).format(
            src=ident(*settings.source_qualified), ship=ident(c.ship_id), ch=ident(c.channel),
            ct=ident(c.created_time), sct=ident(c.server_created_time), bv=ident(c.bool_v),
            sv=ident(c.str_v), lv=ident(c.long_v), dv=ident(c.double_v), vf=ident(c.value_format),
            conflict=sql.SQL("" if fresh else "ON CONFLICT DO NOTHING"),
        )
        step = dt.timedelta(hours=1 if interleave else 24)  # a day at most keeps the sort in memory
        bounds = [(start + i * step, min(start + (i + 1) * step, end))
                  for i in range(-(-(end - start) // step))]
        if interleave:
            chunks = [(ship, a, b) for a, b in bounds for ship in ships]
        else:
            chunks = [(ship, a, b) for ship in ships for a, b in bounds]
        for done, (ship, a, b) in enumerate(chunks, 1):
            cur = conn.execute(
                stmt,
                {"ship": ship, "start": a, "last": b - CADENCE, "salt": _salt(seed, ship),
                 "missing": missing_pct},
            )
            total += cur.rowcount
            if progress is not None:
                progress(done, len(chunks), total)
    if own_table:
        create_source_indexes(conn, settings)
    conn.execute(sql.SQL("ANALYZE {}").format(ident(*settings.source_qualified)))
    return total
