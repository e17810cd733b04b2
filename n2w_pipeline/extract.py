"""Read one (ship, time window) of the narrow table as a Polars frame.

Extraction is the pipeline's bottleneck, so rows never pass through Python tuples. The
server evaluates the whole value rule (``value_rule``), so a row is three fixed-width
values (time, code, value) plus a channel id that only rows of channels in no list carry.

Arrays, not rows. A slice's rows come back as one result row of four arrays
(``arrays_query``: ``array_agg`` of times, codes, values, and the ids of channels in no
list) in binary, which NumPy reads in one pass each (``copy_binary.decode_array``). Until
2026-12-03 the rows came one by one through ``COPY … TO STDOUT (FORMAT binary)`` into
Arrow (ADBC): the client's CPU went into libpq's one message per row and the Arrow
builders, ~0.4-0.6 s for a 6-hour slice (1.44M rows), competing with the server for the
same two cores; the arrays cost the client 0.03 s for the same slice and the server about
the same CPU (its ``array_agg`` instead of a COPY message per row: 0.92 against 0.90 CPU-s).
An array holds at most 1 GB: ~89M rows per slice, far above any sensible
``N2W_SLICE_HOURS`` (a ship-week is ~41M rows).

Binding. The window is bound as parameters of a ``SELECT set_config(…, true)`` in the
read's own transaction, and the query reads it back with ``current_setting(…)`` (an
InitPlan: evaluated once, and the created_time index is still used); this came with the
COPY path, which takes no parameters, and keeps the plan below. Values are always bound.

The plan. The planner cannot see the window (its values come from ``current_setting``),
guesses a few thousand rows and walks the ``created_time`` index in index order: on a
table holding the whole fleet a one-ship read then visits every ship's rows of those hours
to keep one ship's (measured 1.4–1.9 server CPU-µs per kept row against 0.5 on a one-ship
table, even with a ``(ship_id, created_time)`` index present), and pages that are not in
memory are read one by one, out of order. So every read's transaction turns plain index
scans off (``SET LOCAL enable_indexscan = off``) and the server takes a bitmap heap scan:
each page once, in physical order, read ahead. A one-ship read goes through the best index
for (ship, time range): ``(ship_id, created_time)`` when it exists (``n2w prepare``), the
primary key's skip scan on PostgreSQL 18, else ``created_time``; measured 0.56 µs per row
on an eight-ship table (either index), 0.49 on a one-ship table (0.47 by index scan).
A fleet read (below) goes through ``created_time``: 8 ships × 6 hours through the whole
pipeline took 23–29 s with the table out of the page cache against 27–51 s in index
order, and the same in memory (12.6 against 12.2 s).

Serial reads. The server plans a slice's read in parallel (a Gather of two workers and
the leader; COPY of a query may use parallel workers): one read alone finishes ~13 % sooner,
but the tuple queues between workers and leader cost ~30 % more server CPU per row
(measured on a 6-hour slice, 2026-12-03: 0.92 against 0.69 CPU-s). A run already keeps two
slices in flight (``lanes``) on a machine whose cores the client shares, so a pipeline's
read turns parallel workers off for its own transaction (``SET LOCAL``). ``discard``, the
benchmarks' extraction ceiling, keeps the server's default plan.

Channel codes. The reader sets the listed channel ids once per connection, as a JSON
array in the session setting ``n2w.channels`` (bound, like the window); the server
expands it into a channel → code relation (the array position) and joins it. Nothing is
created in the source database, so it may be a read-only replica (``N2W_SOURCE_URL``;
before PostgreSQL 16 the value rule needs a session function, which a read-only server
refuses: ``value_rule.install``). A row's ``code`` column packs the channel's code and the
rule's status: ``code * 4 + status`` (NULL for a channel in no list, whose id comes in
``channel``).

Several ships at once (``read_fleet``). On a table holding the whole fleet, one read of
a time slice for every ship a run covers visits each page of those hours once, where a
read per ship finds its rows among every ship's (see ``source_indexes``). The ship comes
packed into the same ``code`` field, as its position in the run's ship list:
``(ship * 2**16 + code) * 4 + status``, with code 0xFFFF for a channel in no list, so a
row still arrives as three fixed-width fields. In the arrays every code is doubled, plus
one where the value is NULL (the values array has no NULL elements, NaN stands for them),
and -1 stands for a NULL code (a channel in no list, one-ship read).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from n2w_pipeline import value_rule
from n2w_pipeline.config import Settings
from n2w_pipeline.copy_binary import decode_array, decode_text_array

CODED_SCHEMA = {
    "created_time": pl.Datetime("us"),
    "code": pl.Int32,  # channel code, NULL for a channel in no list
    "status": pl.Int8,  # value_rule status
    "channel": pl.String,  # only for rows whose channel is in no list (code is NULL)
    "num": pl.Float64,  # value_rule.raw_value
}

STATUS_BITS = 2
CODE_BITS = 16
"""Bits of the channel code in a fleet read's packed field (0xFFFF: channel in no list)."""
MAX_FLEET_SHIPS = (1 << (31 - CODE_BITS - STATUS_BITS - 1)) - 1  # the arrays' NULL flag takes a bit
_CHANNELS_SQL = "SELECT set_config('n2w.channels', %s, false)"
_CODES = (
    "(SELECT u.c AS channel, (u.o - 1)::int AS code FROM jsonb_array_elements_text("
    "(SELECT current_setting('n2w.channels'))::jsonb) WITH ORDINALITY AS u(c, o))"
)
_WINDOW_SQL = (  # is_local = true: for the read's transaction only (SET LOCAL)
    "SELECT set_config('n2w.ship', %s, true), set_config('n2w.start', %s, true), "
    "set_config('n2w.end', %s, true), set_config('enable_indexscan', 'off', true)"
)
_FLEET_WINDOW_SQL = (
    "SELECT set_config('n2w.ships', %s, true), set_config('n2w.start', %s, true), "
    "set_config('n2w.end', %s, true), set_config('enable_indexscan', 'off', true)"
)
_SERIAL_SQL = "SELECT set_config('max_parallel_workers_per_gather', '0', true)"  # see NarrowReader._run
_SHIP = "(SELECT current_setting('n2w.ship'))"  # an InitPlan: evaluated once, not per row
_SHIPS = "(SELECT current_setting('n2w.ships')::text[])"  # the run's ships, parsed once
_START = "(SELECT current_setting('n2w.start')::timestamp)"
_END = "(SELECT current_setting('n2w.end')::timestamp)"


def copy_extract_query(settings: Settings, native: bool = True, ship_indexed: bool = True) -> str:
    """The slice query without parameters (``arrays_query`` wraps it): the window comes from
    ``current_setting('n2w.ship' | 'n2w.start' | 'n2w.end')`` and the channel codes from
    ``n2w.channels``, set by bound statements (``NarrowReader``); ``native``: see
    ``value_rule``. ``ship_indexed`` false (a server before PostgreSQL 18 without a
    ``(ship_id, created_time)`` index): the ship is compared as an expression no index
    serves, so the plan walks ``created_time`` and never the primary key by ship alone,
    which would read the ship's whole history (PostgreSQL 15 picked it for a 3-hour table)."""
    c = settings.columns
    rule = value_rule.ValueRule(c, "n", native)
    q = sql.SQL(
        """SELECT n.{ct} AS created_time, m.code * {scale} + {status} AS code,
  CASE WHEN m.code IS NULL THEN n.{ch} END AS channel, {raw} AS num
FROM {src} n LEFT JOIN {codes} m ON m.channel = n.{ch}
WHERE {ship_col} = {p_ship} AND n.{ct} >= {p_start} AND n.{ct} < {p_end}"""
    )
    ship_col = sql.SQL("n.{}" if ship_indexed else "(n.{} || '')").format(sql.Identifier(c.ship_id))
    return q.format(
        ct=sql.Identifier(c.created_time),
        ch=sql.Identifier(c.channel),
        ship_col=ship_col,
        scale=sql.Literal(1 << STATUS_BITS),
        status=rule.status(),
        raw=rule.raw_value(),
        src=sql.Identifier(*settings.source_qualified),
        ship=sql.Identifier(c.ship_id),
        codes=sql.SQL(_CODES),
        p_ship=sql.SQL(_SHIP),
        p_start=sql.SQL(_START),
        p_end=sql.SQL(_END),
    ).as_string(None)


def copy_fleet_query(settings: Settings, native: bool = True) -> str:
    """``copy_extract_query`` for the ships listed in ``current_setting('n2w.ships')``
    (a text array): rows of all of them, the ship's position packed into ``code``.

    The ships are joined as ``unnest(…) WITH ORDINALITY`` (a hash join on a handful of
    rows), which gives the position and drops other ships' rows in one step: measured as
    cheap per row as the one-ship query, where ``ship = ANY(…)`` and ``array_position``
    per row cost 10–50 % more server CPU."""
    c = settings.columns
    rule = value_rule.ValueRule(c, "n", native)
    q = sql.SQL(
        """SELECT n.{ct} AS created_time,
  ((s.pos::int - 1) * {ship_scale} + coalesce(m.code, {unknown})) * {scale} + {status} AS code,
  CASE WHEN m.code IS NULL THEN n.{ch} END AS channel, {raw} AS num
FROM {src} n
JOIN unnest({ships}) WITH ORDINALITY AS s(ship, pos) ON s.ship = n.{ship}
LEFT JOIN {codes} m ON m.channel = n.{ch}
WHERE n.{ct} >= {p_start} AND n.{ct} < {p_end}"""
    )
    return q.format(
        ct=sql.Identifier(c.created_time),
        ch=sql.Identifier(c.channel),
        ship=sql.Identifier(c.ship_id),
        ships=sql.SQL(_SHIPS),
        ship_scale=sql.Literal(1 << CODE_BITS),
        unknown=sql.Literal((1 << CODE_BITS) - 1),
        scale=sql.Literal(1 << STATUS_BITS),
        status=rule.status(),
        raw=rule.raw_value(),
        src=sql.Identifier(*settings.source_qualified),
        codes=sql.SQL(_CODES),
        p_start=sql.SQL(_START),
        p_end=sql.SQL(_END),
    ).as_string(None)


def arrays_query(query: str) -> str:
    """``query``'s rows (``copy_extract_query`` or ``copy_fleet_query``) as one row of four
    arrays without NULL elements: times, codes (doubled, plus one for a NULL value; -1 for a
    NULL code), values (NaN for NULL) and the channel ids rows carry (``frame_of_arrays``)."""
    return (
        "SELECT array_agg(created_time), array_agg(coalesce(code * 2 + (num IS NULL)::int, -1)), "
        "array_agg(coalesce(num, 'NaN')), array_agg(channel) FILTER (WHERE channel IS NOT NULL) "
        f"FROM ({query}) x"
    )


def frame_of_arrays(values: Sequence[bytes | None], fleet: bool = False) -> pl.DataFrame:
    """The binary result row of ``arrays_query`` as the rows' frame: created_time, code
    (packed as in the row query, NULL for a channel in no list), channel, num. The channel
    ids belong, in order, to the rows of channels in no list (code -1; in a ``fleet`` read,
    code 0xFFFF)."""
    times, packed, nums = (decode_array(v) for v in values[:3])
    channels = decode_text_array(values[3])
    if not times.size == packed.size == nums.size:
        raise ValueError("the read's arrays differ in length")
    null_code = packed == -1
    codes = packed >> 1
    mask = (1 << CODE_BITS) - 1
    unknown = ((codes >> STATUS_BITS) & mask) == mask if fleet else null_code
    at = np.flatnonzero(unknown)
    if at.size != len(channels):
        raise ValueError(f"{len(channels)} channel ids for {at.size} rows of channels in no list")
    channel = pl.repeat(None, times.size, dtype=pl.String, eager=True)
    if at.size:
        channel = channel.scatter(at, pl.Series(channels, dtype=pl.String))
    code = pl.Series(codes.astype(np.int32), dtype=pl.Int32)
    num = pl.Series(nums, dtype=pl.Float64)
    if null_code.any():
        code = code.scatter(np.flatnonzero(null_code), None)
    null_num = (packed & 1).astype(bool) & ~null_code
    if null_num.any():
        num = num.scatter(np.flatnonzero(null_num), None)
    return pl.DataFrame({"created_time": pl.Series(times, dtype=pl.Int64).cast(pl.Datetime("us")),
                         "code": code, "channel": channel.alias("channel"), "num": num})


def decode(frame: pl.DataFrame) -> pl.DataFrame:
    """A one-ship read's frame (``frame_of_arrays``) as CODED_SCHEMA: ``code`` split into
    code, status."""
    if frame.height == 0:
        return pl.DataFrame(schema=CODED_SCHEMA)
    packed = pl.col("code").cast(pl.Int32)
    return frame.select(
        pl.col("created_time").cast(pl.Datetime("us")),
        (packed // (1 << STATUS_BITS)).alias("code"),
        (packed % (1 << STATUS_BITS)).cast(pl.Int8).alias("status"),
        pl.col("channel").cast(pl.String),
        pl.col("num").cast(pl.Float64),
    )


def decode_fleet(frame: pl.DataFrame) -> pl.DataFrame:
    """A fleet read's frame (``frame_of_arrays(…, fleet=True)``) as CODED_SCHEMA plus
    ``ship``, the ship's position in the read's ship list."""
    if frame.height == 0:
        return pl.DataFrame(schema={"ship": pl.Int16, **CODED_SCHEMA})
    packed = pl.col("code").cast(pl.Int32)  # never negative
    code = (packed // (1 << STATUS_BITS)) % (1 << CODE_BITS)
    return frame.select(
        (packed // (1 << (STATUS_BITS + CODE_BITS))).cast(pl.Int16).alias("ship"),
        pl.col("created_time").cast(pl.Datetime("us")),
        pl.when(code != (1 << CODE_BITS) - 1).then(code).alias("code"),
        (packed % (1 << STATUS_BITS)).cast(pl.Int8).alias("status"),
        pl.col("channel").cast(pl.String),
        pl.col("num").cast(pl.Float64),
    )


def _text_array(items: Sequence[str]) -> str:
    """``items`` as a PostgreSQL text-array literal (every element quoted and escaped)."""
    quoted = ('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items)
    return "{" + ",".join(quoted) + "}"


class NarrowReader:
    """A connection that reads narrow slices; use as a context manager.

    ``channels`` (every listed channel id, in code order) is set once on the connection
    (``n2w.channels``); ``read`` returns rows with their positions as codes.
    """

    def __init__(self, url: str, settings: Settings, channels: Sequence[str]) -> None:
        if len(channels) >= (1 << CODE_BITS) - 1:
            raise ValueError(f"{len(channels)} listed channels: a read packs at most {(1 << CODE_BITS) - 2}")
        self._conn = psycopg.connect(url)
        self.backend_pid = self._conn.info.backend_pid  # lanes.py renices a backfill's server process
        try:
            native, self.ship_indexed = self._probe(settings)
            self._query = copy_extract_query(settings, native, self.ship_indexed)
            self._fleet_query = copy_fleet_query(settings, native)
            self._conn.execute(_CHANNELS_SQL, (json.dumps(list(channels)),))
            self._conn.commit()
        except BaseException:
            self._conn.close()
            raise

    def _probe(self, settings: Settings) -> tuple[bool, bool]:
        """The value rule installed (is ``pg_input_is_valid`` native?), and whether a
        one-ship read has an index of its own (``source_indexes.one_ship_read_problem``)."""
        from n2w_pipeline.source_indexes import SKIP_SCAN_VERSION, ship_time_index_query, ship_time_params

        row = self._conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert row is not None
        version = int(row[0])
        native = value_rule.install(self._conn.execute, version)
        if version >= SKIP_SCAN_VERSION:
            return native, True
        found = self._conn.execute(ship_time_index_query(), ship_time_params(settings)).fetchone()
        return native, bool(found and found[0])

    def read(self, ship: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """All narrow rows of ``ship`` with ``start <= created_time < end`` (CODED_SCHEMA)."""
        return decode(frame_of_arrays(self._run(ship, start, end, arrays_query(self._query))))

    def read_fleet(self, ships: Sequence[str], start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """All narrow rows of ``ships`` in the window, in one read; ``ship`` is the row's
        ship as its position in ``ships`` (CODED_SCHEMA plus ``ship``)."""
        arrays = self._run(ships, start, end, arrays_query(self._fleet_query))
        return decode_fleet(frame_of_arrays(arrays, fleet=True))

    def discard(self, ship: str | Sequence[str], start: dt.datetime, end: dt.datetime) -> None:
        """The server's half of ``read`` (one ship) or ``read_fleet`` (a list) alone: its rows
        ``COPY … TO '/dev/null'`` (superuser only), one message per row, in the server's
        default plan (parallel workers allowed). For measuring the extraction ceiling."""
        query = self._query if isinstance(ship, str) else self._fleet_query
        self._run(ship, start, end, f"COPY ({query}) TO '/dev/null' (FORMAT binary)", fetch=False)

    def _run(self, ship: str | Sequence[str], start: dt.datetime, end: dt.datetime, statement: str,
             fetch: bool = True) -> list[bytes | None]:
        """``statement`` in a read transaction of its own for the window; with ``fetch`` its
        first result row's values in binary (the arrays), in a serial plan."""
        if not isinstance(ship, str) and not 0 < len(ship) <= MAX_FLEET_SHIPS:
            raise ValueError(f"a fleet read takes 1 to {MAX_FLEET_SHIPS} ships, got {len(ship)}")
        conn = self._conn
        try:
            if isinstance(ship, str):
                conn.execute(_WINDOW_SQL, (ship, start.isoformat(), end.isoformat()))
            else:  # the ships as a text array literal, bound as a value
                conn.execute(_FLEET_WINDOW_SQL, (_text_array(ship), start.isoformat(), end.isoformat()))
            values: list[bytes | None] = []
            if fetch:  # a read of a pipeline: no parallel workers (the module docstring)
                conn.execute(_SERIAL_SQL)
                with conn.cursor(binary=True) as cur:
                    cur.execute(statement)
                    result = cur.pgresult
                    assert result is not None and result.ntuples == 1
                    values = [result.get_value(0, i) for i in range(result.nfields)]
            else:
                conn.execute(statement)
            conn.commit()  # end the read transaction: the next slice gets a new snapshot
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        return values

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> NarrowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
