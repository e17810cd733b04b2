"""Near-realtime: which (ship, hour) partitions received narrow rows since a cursor.

No Dagster here: ``defs/realtime.py`` wraps these functions in a sensor, tests and the
benchmark call them directly.

Arrival is tracked by the monotonic ``id`` column (``N2W_REALTIME_CURSOR_COLUMN=id``, the
default) or, for tables without one, by ``server_created_time``; never by
``created_time``, so rows that arrive late for an old hour re-materialise that old hour.

One tick (``read_tick`` then ``plan_tick``):

1. **Batch**: the oldest ``batch_rows`` rows past the cursor's *frontier*, in arrival
   order, grouped by (ship, hour) — ``SELECT … FROM (SELECT … WHERE id > frontier
   ORDER BY id LIMIT n) GROUP BY ship, hour`` — an index range scan of at most ``n``
   entries, however large the table or the backlog: a long outage is worked off over
   several ticks, oldest rows first. The frontier moves to the batch's last arrival value
   only when the sensor returns the batch's run requests (Dagster saves the cursor after
   submitting them).
2. **Pending ranges**: ids are taken from a sequence when a row is inserted, but become
   visible only when its transaction commits, so a tick can see id 101 while id 100's
   transaction is still open. Moving past 100 would lose its rows for good (the bug
   of the cutoff-time poller this replaces). Every id range that the batch skipped (a
   *gap*) is kept in the cursor with the snapshot's ``xmax`` and re-read each tick until
   every transaction that was running when the gap was seen has ended
   (``pg_snapshot_xmin`` of a later snapshot ≥ that ``xmax``); rows that appear in a gap
   get their partitions re-run. Gaps left by rolled-back inserts or
   ``ON CONFLICT DO NOTHING`` settle on the next tick. With ``server_created_time``
   (not unique, not ordered by commit) the whole batch window is a pending range instead,
   re-read with per-partition row counts until it settles.
3. **Partitions**: a ship not in ``N2W_SHIPS`` has no partition (the ship dimension is
   static, see ``defs/realtime.py``) and an hour before ``N2W_PARTITION_START`` has none
   either: their rows are counted and reported, per tick and cumulatively in the cursor.
   An hour after the last partition (the current UTC hour) is *deferred* in the cursor
   and requested once that hour exists.

4. **Runs**: the partitions of one hour become one run over the range of ships that
   have new rows (``group_runs``): a run's start-up costs seconds, one more ship-hour
   well under one. Run keys hash the partitions' ``rt:{ship}:{hour}:{last}:{rows}``
   keys: the same tick evaluated twice gives the same keys (Dagster launches nothing
   twice), and any new row changes them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.hours import floor_hour

MIN_SETTLE_SECONDS = 1.0
"""A pending range is dropped no sooner than this after it was seen, besides the xid test:
a transaction takes its xid at its first write, a moment after drawing its first id."""
MAX_PENDING_SECONDS = 900.0
"""A pending range still unsettled after this (a writer transaction open for 15 minutes)
is given up with a warning, so one stuck session cannot grow every tick's work forever."""
MAX_PENDING = 100
"""More pending ranges than this are merged, oldest first (the merged range's partitions
are re-run once: never a loss, at worst a spare run)."""
MAX_DEFERRED = 2000
"""Future (ship, hour) partitions kept in the cursor; beyond this the furthest are dropped."""
HOUR = dt.timedelta(hours=1)
EMPTY_TIME = dt.datetime(1, 1, 1)

Key = int | dt.datetime  # an arrival value: an id, or a server_created_time


@dataclass(frozen=True)
class Arrival:
    """How arrival order is read: the column, and whether its values are unique ids."""

    column: str
    unique: bool

    @property
    def empty(self) -> Key:
        """The frontier of a tick that has seen nothing (below every value)."""
        return 0 if self.unique else EMPTY_TIME

    def dump(self, value: Key) -> int | str:
        return value if isinstance(value, int) else value.isoformat()

    def load(self, value: int | str) -> Key:
        return int(value) if self.unique else dt.datetime.fromisoformat(str(value))

    @property
    def sql_type(self) -> sql.SQL:
        return sql.SQL("bigint" if self.unique else "timestamp")


def arrival(settings: Settings) -> Arrival:
    """The arrival column N2W_REALTIME_CURSOR_COLUMN names, through N2W_COL_* mapping."""
    if settings.realtime_cursor == "id":
        return Arrival(settings.columns.id, unique=True)
    if settings.realtime_cursor == "server_created_time":
        return Arrival(settings.columns.server_created_time, unique=False)
    raise ValueError(f"realtime cursor must be id or server_created_time, got {settings.realtime_cursor!r}")


# --------------------------------------------------------------------------- the index


def arrival_index_name(settings: Settings) -> str:
    name = f"{settings.source_table}_{arrival(settings).column}_idx"
    return name.encode()[:63].decode(errors="ignore")


def arrival_index_ddl(settings: Settings) -> sql.Composed:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` on the arrival column (no table lock)."""
    return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING btree ({})").format(
        sql.Identifier(arrival_index_name(settings)),
        sql.Identifier(*settings.source_qualified),
        sql.Identifier(arrival(settings).column),
    )


def arrival_index_problem(conn: psycopg.Connection, settings: Settings) -> str | None:
    """None when a valid b-tree index leads with the arrival column; else what is wrong.

    Without that index a tick's ``ORDER BY … LIMIT`` reads the whole narrow table, which
    on a billion rows runs past Dagster's 60 s sensor limit: the sensor refuses to scan.
    """
    table = sql.Identifier(*settings.source_qualified).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()
    if not row or row[0] is None:
        return f"narrow table {table} does not exist"
    col = arrival(settings).column
    found = conn.execute(
        """SELECT 1 FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_am am ON am.oid = ic.relam
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
           WHERE i.indrelid = %s AND a.attname = %s AND am.amname = 'btree'
             AND i.indisvalid AND i.indpred IS NULL""",
        (row[0], col),
    ).fetchone()
    if found:
        return None
    ddl = arrival_index_ddl(settings).as_string(conn)
    return (f"no valid b-tree index on {table}({col}); create it once (minutes on a "
            f"billion rows, no table lock): {ddl}")


def ensure_arrival_index(conn: psycopg.Connection, settings: Settings) -> bool:
    """Create the arrival index if missing (autocommit connection); True if created.

    An invalid leftover of an interrupted concurrent build is dropped and rebuilt.
    """
    if arrival_index_problem(conn, settings) is None:
        return False
    name = sql.Identifier(settings.source_schema, arrival_index_name(settings))
    invalid = conn.execute(
        "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(%s) AND NOT indisvalid",
        (name.as_string(conn),),
    ).fetchone()
    if invalid:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(name))
    conn.execute(arrival_index_ddl(settings))
    return True


# --------------------------------------------------------------------------- the cursor


@dataclass
class Pending:
    """An arrival range (lo, hi] re-read every tick until it settles.

    ``xmax``: the xmax of the snapshot that first saw it; ``at``: when (epoch seconds);
    ``seen``: row count per partition (``ship|hour``) at the last read, None = unknown.
    """

    lo: Key
    hi: Key
    xmax: int
    at: float
    seen: dict[str, int] | None = field(default_factory=dict)


@dataclass
class Cursor:
    """The sensor's state between ticks, stored by Dagster as JSON."""

    column: str
    frontier: Key | None = None  # None: not initialised yet
    pending: list[Pending] = field(default_factory=list)
    deferred: dict[str, tuple[str, int]] = field(default_factory=dict)  # part → (last, rows)
    skipped: dict[str, int] = field(default_factory=dict)  # cumulative reason → rows

    def to_json(self, arr: Arrival) -> str:
        return json.dumps(
            {
                "column": self.column,
                "frontier": None if self.frontier is None else arr.dump(self.frontier),
                "pending": [
                    [arr.dump(p.lo), arr.dump(p.hi), p.xmax, round(p.at, 3), p.seen]
                    for p in self.pending
                ],
                "deferred": {k: list(v) for k, v in sorted(self.deferred.items())},
                "skipped": dict(sorted(self.skipped.items())),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None, arr: Arrival) -> Cursor:
        """Parse a stored cursor; None, or one for another arrival column, starts afresh."""
        if not text:
            return cls(arr.column)
        data = json.loads(text)
        if data.get("column") != arr.column:
            return cls(arr.column)
        frontier = data.get("frontier")
        return cls(
            column=arr.column,
            frontier=None if frontier is None else arr.load(frontier),
            pending=[Pending(arr.load(lo), arr.load(hi), int(x), float(at), seen)
                     for lo, hi, x, at, seen in data.get("pending", [])],
            deferred={k: (str(v[0]), int(v[1])) for k, v in data.get("deferred", {}).items()},
            skipped={k: int(v) for k, v in data.get("skipped", {}).items()},
        )


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PartitionRows:
    """Rows of one (ship, hour) found in an arrival range, and its last arrival value."""

    ship: str
    hour: dt.datetime
    rows: int
    last: Key

    @property
    def part(self) -> str:
        return f"{self.ship}|{self.hour:%Y-%m-%dT%H:%M}"


@dataclass
class TickRead:
    """What one snapshot of the narrow table says (``read_tick``)."""

    xmin: int  # pg_snapshot_xmin: every older transaction has ended
    xmax: int  # pg_snapshot_xmax: every transaction that could be running is below it
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
    n = settings.realtime_batch_rows
    ids = _idents(settings, arr)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        xmin, xmax = conn.execute(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
            "FROM pg_current_snapshot() s"
        ).fetchone()  # type: ignore[misc]
        read = TickRead(xmin=xmin, xmax=xmax)
        if cursor.frontier is None:  # first tick: start at the newest row, history is backfill's
            row = conn.execute(sql.SQL("SELECT max({col}) FROM {src}").format(**ids)).fetchone()
            read.initial = row[0] if row and row[0] is not None else arr.empty
            return read
        if arr.unique:
            for kind, ship, hour, rows, hi, lo in conn.execute(
                batch_query(settings), {"f": cursor.frontier, "n": n}
            ):
                if kind == "p":
                    read.batch.append(PartitionRows(ship, hour, int(rows), int(hi)))
                else:
                    read.gaps.append((int(lo), int(hi)))
        else:
            bound_q, rows_q = window_queries(settings)
            bound = conn.execute(bound_q, {"f": cursor.frontier, "n1": n - 1}).fetchone()
            last = bound[0] if bound else conn.execute(
                sql.SQL("SELECT max({col}) FROM {src} WHERE {col} > %(f)s::{typ}").format(**ids),
                {"f": cursor.frontier},
            ).fetchone()[0]  # type: ignore[index]
            if last is not None:
                for ship, hour, rows, hi in conn.execute(rows_q, {"f": cursor.frontier, "m": last}):
                    read.batch.append(PartitionRows(ship, hour, int(rows), hi))
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


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedRun:
    """One partition to (re-)materialise."""

    ship: str
    hour: dt.datetime
    run_key: str
    rows: int  # narrow rows that triggered it (new, late or deferred)
    reason: str  # "new" (batch), "late" (a pending range filled in), "deferred" (hour now exists)


@dataclass
class TickPlan:
    runs: list[PlannedRun]
    cursor: Cursor
    rows_read: int = 0
    unknown_ships: dict[str, int] = field(default_factory=dict)  # this tick
    before_start: int = 0  # rows of this tick whose hour precedes the first partition
    deferred: int = 0  # partitions of this tick deferred to a future hour
    warnings: list[str] = field(default_factory=list)
    initialised: bool = False  # first tick: the frontier was set, nothing read

    def summary(self) -> str:
        if self.initialised:
            return (f"first tick: starting after the newest narrow row ({self.cursor.frontier}); "
                    "older rows are for `n2w backfill`")
        parts = [f"{self.rows_read:,} new narrow row(s)", f"{len(self.runs)} partition run(s)"]
        if self.unknown_ships:
            parts.append(
                f"{sum(self.unknown_ships.values()):,} row(s) of ship(s) not in N2W_SHIPS skipped "
                f"{dict(sorted(self.unknown_ships.items()))}"
            )
        if self.before_start:
            parts.append(f"{self.before_start:,} row(s) before N2W_PARTITION_START skipped")
        if self.deferred:
            parts.append(f"{self.deferred} partition(s) of a future hour deferred")
        if self.cursor.pending:
            parts.append(f"{len(self.cursor.pending)} arrival range(s) pending open transactions")
        return "; ".join(parts)


def run_key(ship: str, hour: dt.datetime, last: str, rows: int) -> str:
    return f"rt:{ship}:{hour:%Y-%m-%dT%H:%M}:{last}:{rows}"


def _part_hour(part: str) -> tuple[str, dt.datetime]:
    ship, hour = part.rsplit("|", 1)
    return ship, dt.datetime.fromisoformat(hour)


def plan_tick(
    read: TickRead,
    cursor: Cursor,
    arr: Arrival,
    *,
    ships: Sequence[str],
    first_hour: dt.datetime,
    last_hour: dt.datetime,
    now: float,
) -> TickPlan:
    """Runs to request and the cursor to store after them (pure: no I/O, no clock).

    ``first_hour``/``last_hour``: the first and the last existing hourly partition.
    """
    if read.initial is not None:
        return TickPlan([], replace(cursor, frontier=read.initial), initialised=True)
    known = set(ships)
    found: dict[str, tuple[Key, int, set[str]]] = {}  # part → (last, rows, reasons)
    skipped = dict(cursor.skipped)
    plan = TickPlan([], cursor, rows_read=read.batch_rows)

    def add(p: PartitionRows, reason: str) -> None:
        last, rows, reasons = found.get(p.part, (p.last, 0, set()))
        found[p.part] = (max(last, p.last), rows + p.rows, reasons | {reason})  # type: ignore[type-var]

    for p in read.batch:
        add(p, "new")
    pending: list[Pending] = []
    for i, pend in enumerate(cursor.pending):
        rows = read.pending.get(i, [])
        counts = {p.part: p.rows for p in rows}
        for p in rows:
            if pend.seen is None or pend.seen.get(p.part) != p.rows:
                add(p, "late")
        settled = read.xmin >= pend.xmax and now - pend.at >= MIN_SETTLE_SECONDS
        if settled:
            continue
        if now - pend.at > MAX_PENDING_SECONDS:
            plan.warnings.append(
                f"arrival range ({arr.dump(pend.lo)}, {arr.dump(pend.hi)}] still has open writer "
                f"transactions after {MAX_PENDING_SECONDS:.0f} s; no longer watched (rows committed "
                "into it later need a backfill of their hours)")
            skipped["pending_given_up"] = skipped.get("pending_given_up", 0) + 1
            continue
        pending.append(replace(pend, seen=counts))
    if arr.unique:
        pending += [Pending(lo, hi, read.xmax, now, {}) for lo, hi in read.gaps]
    elif read.batch and cursor.frontier is not None and read.batch_last is not None:
        pending.append(Pending(cursor.frontier, read.batch_last, read.xmax, now,
                               {p.part: p.rows for p in read.batch}))
    pending.sort(key=lambda p: p.lo)  # type: ignore[arg-type, return-value]
    while len(pending) > MAX_PENDING:
        a, b = pending[0], pending[1]
        pending[:2] = [Pending(a.lo, max(a.hi, b.hi), max(a.xmax, b.xmax), min(a.at, b.at), None)]  # type: ignore[type-var]

    deferred = dict(cursor.deferred)
    runs: list[PlannedRun] = []
    for part, (last, rows, reasons) in found.items():
        ship, hour = _part_hour(part)
        if ship not in known:
            plan.unknown_ships[ship] = plan.unknown_ships.get(ship, 0) + rows
            skipped[f"unknown_ship:{ship}"] = skipped.get(f"unknown_ship:{ship}", 0) + rows
        elif hour < first_hour:
            plan.before_start += rows
            skipped["before_partition_start"] = skipped.get("before_partition_start", 0) + rows
        elif hour > last_hour:
            old = deferred.get(part)
            deferred[part] = (str(arr.dump(last)), rows + (old[1] if old else 0))
            plan.deferred += 1
        else:
            reason = "new" if "new" in reasons else "late"
            runs.append(PlannedRun(ship, hour, run_key(ship, hour, str(arr.dump(last)), rows), rows, reason))
    running = {(r.ship, r.hour) for r in runs}
    for part in sorted(deferred):
        ship, hour = _part_hour(part)
        if hour <= last_hour:
            last, rows = deferred.pop(part)
            if (ship, hour) not in running:  # a run re-reads the whole hour: one is enough
                runs.append(PlannedRun(ship, hour, run_key(ship, hour, last, rows) + ":d", rows,
                                       "deferred"))
    if len(deferred) > MAX_DEFERRED:
        for part in sorted(deferred, key=lambda k: _part_hour(k)[1])[MAX_DEFERRED:]:
            skipped["deferred_dropped"] = skipped.get("deferred_dropped", 0) + deferred.pop(part)[1]
    runs.sort(key=lambda r: (r.hour, r.ship))
    # The frontier moves past the batch: its partitions are in ``runs`` (or reported as
    # skipped/deferred), and the sensor returns the runs together with this cursor.
    frontier = read.batch_last if read.batch_last is not None else cursor.frontier
    plan.runs = runs
    plan.cursor = Cursor(arr.column, frontier, pending, deferred, skipped)
    return plan


@dataclass(frozen=True)
class RunGroup:
    """One run: one hour × a contiguous range of ships (in N2W_SHIPS order).

    A Dagster run costs seconds of start-up (~10 s wall on two busy cores) whatever it
    does, while re-reading one more ship-hour costs well under a second, so the sensor
    asks for one run per hour per tick: ships between the first and the last ship with
    new rows are re-materialised too (idempotent, unchanged rows are not rewritten).
    """

    hour: dt.datetime
    ships: tuple[str, ...]  # the whole range, first..last
    triggered: tuple[str, ...]  # ships with new/late/deferred rows
    rows: int
    reason: str  # new | late | deferred (the first that applies)
    run_key: str


def group_runs(runs: Sequence[PlannedRun], ships: Sequence[str]) -> list[RunGroup]:
    """Partition runs → one run per hour covering its ships' range, oldest hour first."""
    order = {s: i for i, s in enumerate(ships)}
    by_hour: dict[dt.datetime, list[PlannedRun]] = {}
    for r in runs:
        by_hour.setdefault(r.hour, []).append(r)
    out = []
    for hour in sorted(by_hour):
        rs = sorted(by_hour[hour], key=lambda r: order[r.ship])
        span = tuple(ships[order[rs[0].ship]: order[rs[-1].ship] + 1])
        reasons = {r.reason for r in rs}
        reason = next(x for x in ("new", "late", "deferred") if x in reasons)
        digest = hashlib.sha1("|".join(r.run_key for r in rs).encode()).hexdigest()[:16]
        key = f"rt:{hour:%Y-%m-%dT%H:%M}:{span[0]}..{span[-1]}:{digest}"
        out.append(RunGroup(hour, span, tuple(r.ship for r in rs), sum(r.rows for r in rs), reason, key))
    return out


def partition_hours(settings: Settings, now_utc: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(first, last) existing hourly partition, naive on the created_time clock (UTC):
    the last is the current, still open hour (the partitions' ``end_offset=1``)."""
    first = dt.datetime.strptime(settings.partition_start, "%Y-%m-%d-%H:%M")
    return first, floor_hour(now_utc.astimezone(dt.UTC).replace(tzinfo=None))


def tick(
    conn: psycopg.Connection, settings: Settings, cursor_json: str | None, now_utc: dt.datetime
) -> TickPlan:
    """``read_tick`` + ``plan_tick`` against the configured ships and partitions."""
    arr = arrival(settings)
    cursor = Cursor.from_json(cursor_json, arr)
    read = read_tick(conn, settings, cursor)
    first, last = partition_hours(settings, now_utc)
    return plan_tick(read, cursor, arr, ships=settings.ships, first_hour=first, last_hour=last,
                     now=now_utc.timestamp())


def describe_runs(runs: Iterable[PlannedRun]) -> str:
    return ", ".join(f"{r.ship} {r.hour:%Y-%m-%d %H:00} ({r.rows:,} {r.reason})" for r in runs)
