"""Planning a tick, pure (no I/O, no clock): what one read means for the runs to request
and the cursor to store (``plan_tick``), and how partition runs group into one run per
hour (``group_runs``)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from n2w_pipeline.realtime.cursor import Arrival, Cursor, Key, Pending, split_part
from n2w_pipeline.realtime.read import PartitionRows, TickRead
from n2w_pipeline.realtime.writers import Writers

WARN_PENDING_SECONDS = 900.0
"""A pending range still held by open writer transactions after this is named in a warning
(again every as long): it stays watched — nothing is ever given up — but a transaction
left open for long delays the bookkeeping and should be looked at."""
MAX_PENDING = 200
"""More pending ranges than this are merged, the two closest first (the merged range is
re-read whole, rows already seen included: never a loss, at worst a spare run)."""
MAX_DEFERRED = 2000
"""Future (ship, hour) partitions kept in the cursor; beyond this the furthest are dropped."""


@dataclass(frozen=True)
class PlannedRun:
    """One partition to (re-)materialise."""

    ship: str
    hour: dt.datetime
    run_key: str
    rows: int  # narrow rows that triggered it (new, late or deferred)
    reason: str  # "new" (batch), "late" (a pending range filled in), "deferred" (hour now exists),
    # "retry" (its last run failed or was cancelled: owed.py)


@dataclass
class TickPlan:
    runs: list[PlannedRun]
    cursor: Cursor
    rows_read: int = 0
    unknown_ships: dict[str, int] = field(default_factory=dict)  # this tick
    before_start: int = 0  # rows of this tick whose hour precedes the first partition
    deferred: int = 0  # partitions of this tick deferred to a future hour
    warnings: list[str] = field(default_factory=list)  # logged as warnings
    notes: list[str] = field(default_factory=list)  # added to the tick's message
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
        return "; ".join(parts + self.notes)


def run_key(ship: str, hour: dt.datetime, last: str, rows: int) -> str:
    return f"rt:{ship}:{hour:%Y-%m-%dT%H:%M}:{last}:{rows}"


Found = dict[str, tuple[Key, int, set[str]]]
"""part → (last arrival value, rows, reasons): the partitions a tick found rows for."""


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
    found: Found = {}
    skipped = dict(cursor.skipped)
    plan = TickPlan([], cursor, rows_read=read.batch_rows)
    for p in read.batch:
        _add(found, p, "new")
    pending = _watch_pending(read, cursor, arr, now, found, plan)
    if read.writers is not None and read.writers.warning:
        plan.notes.append(read.writers.warning)
    deferred = dict(cursor.deferred)
    runs = _place(found, arr, set(ships), first_hour, last_hour, plan, skipped, deferred)
    runs += _release_deferred(deferred, last_hour, {(r.ship, r.hour) for r in runs}, skipped)
    runs.sort(key=lambda r: (r.hour, r.ship))
    # The frontier moves past the batch: its partitions are in ``runs`` (or reported as
    # skipped/deferred), and the sensor returns the runs together with this cursor.
    frontier = read.batch_last if read.batch_last is not None else cursor.frontier
    plan.runs = runs
    plan.cursor = replace(cursor, frontier=frontier, pending=pending, deferred=deferred, skipped=skipped)
    return plan


def _add(found: Found, p: PartitionRows, reason: str) -> None:
    last, rows, reasons = found.get(p.part, (p.last, 0, set()))
    found[p.part] = (max(last, p.last), rows + p.rows, reasons | {reason})  # type: ignore[type-var]


def _final_read(read: TickRead, pend: Pending) -> bool:
    """Whether this tick's read of ``pend`` is its last one: its writers had all ended before
    this snapshot, and on a standby the snapshot has replayed past their commits."""
    if pend.cleared is None:
        return False
    return read.replay_lsn is None or read.replay_lsn >= pend.cleared


def _full(arr: Arrival, pend: Pending, counts: dict[str, int]) -> bool:
    """Unique ids: every id of (lo, hi] is visible, so no transaction can add one."""
    return arr.unique and sum(counts.values()) >= int(pend.hi) - int(pend.lo)  # type: ignore[arg-type]


def _still_open(pend: Pending, writers: Writers) -> list[str]:
    """The range's writers that are still open (all open ones when they were not known)."""
    if pend.writers is None:
        return sorted(writers.open)
    return [w for w in pend.writers if w in writers.open]


def _watch_pending(
    read: TickRead, cursor: Cursor, arr: Arrival, now: float, found: Found, plan: TickPlan,
) -> list[Pending]:
    """The pending ranges to watch after this tick (see ``writers.py`` for why this settles
    no range too early). Rows that appeared in a range since the last read are ``late``
    partitions in ``found``. A range is dropped after a read in which it is full (every id
    visible), or after the first read taken once all its writers had ended (on a standby:
    replayed past them); prepared transactions hold every range. This tick's gaps (or,
    without unique ids, its whole batch window) join with the writers open now."""
    pending: list[Pending] = []
    w = read.writers
    for i, pend in enumerate(cursor.pending):
        rows = read.pending.get(i, [])
        counts = {p.part: p.rows for p in rows}
        for p in rows:
            if pend.seen is None or pend.seen.get(p.part) != p.rows:
                _add(found, p, "late")
        if _full(arr, pend, counts) or _final_read(read, pend):
            continue
        if w is None:  # writers not read (no unique information): keep as is
            pending.append(replace(pend, seen=counts))
            continue
        still = _still_open(pend, w)
        cleared = pend.cleared if pend.cleared is not None else (
            w.lsn if not still and not w.prepared else None)
        warned = _warn_if_old(pend, still, w, arr, now, plan)
        pending.append(replace(pend, writers=still, seen=counts, cleared=cleared, warned=warned))
    new_writers = sorted(w.open) if w is not None else None
    cleared_now = w.lsn if w is not None and not w.open and not w.prepared else None
    if arr.unique:
        pending += [Pending(lo, hi, new_writers, now, {}, cleared_now) for lo, hi in read.gaps]
    elif read.batch and cursor.frontier is not None and read.batch_last is not None:
        pending.append(Pending(cursor.frontier, read.batch_last, new_writers, now,
                               {p.part: p.rows for p in read.batch}, cleared_now))
    pending.sort(key=lambda p: p.lo)  # type: ignore[arg-type, return-value]
    while len(pending) > MAX_PENDING:
        _merge_closest(pending, arr)
    return pending


def _merge_closest(pending: list[Pending], arr: Arrival) -> None:
    """Merge the two neighbouring ranges with the fewest arrivals between them (by id, or the
    oldest two for arrival times): the merged range re-reads those too."""
    if arr.unique:
        i = min(range(len(pending) - 1), key=lambda j: int(pending[j + 1].lo) - int(pending[j].hi))  # type: ignore[arg-type]
    else:
        i = 0
    a, b = pending[i], pending[i + 1]
    writers = None if a.writers is None or b.writers is None else sorted(set(a.writers) | set(b.writers))
    cleared = None if a.cleared is None or b.cleared is None else max(a.cleared, b.cleared)
    pending[i: i + 2] = [Pending(a.lo, max(a.hi, b.hi), writers, min(a.at, b.at), None, cleared)]  # type: ignore[type-var]


def _warn_if_old(
    pend: Pending, still: list[str], w: Writers, arr: Arrival, now: float, plan: TickPlan
) -> int:
    """A warning each time a range's age passes a multiple of ``WARN_PENDING_SECONDS``;
    returns the range's count of warnings."""
    age = now - pend.at
    due = int(age // WARN_PENDING_SECONDS)
    if due <= pend.warned:
        return pend.warned
    who = ", ".join(w.details.get(x, x) for x in [*still, *sorted(w.prepared)][:5]) or "none"
    plan.warnings.append(
        f"arrival range ({arr.dump(pend.lo)}, {arr.dump(pend.hi)}] has been waiting {age / 60:.0f} min for "
        f"writer transactions to end ({w.by}): {who}. It stays watched (rows committed into it later "
        "are still picked up); a transaction left open this long is worth a look")
    return due


def _place(
    found: Found, arr: Arrival, known: set[str], first_hour: dt.datetime, last_hour: dt.datetime,
    plan: TickPlan, skipped: dict[str, int], deferred: dict[str, tuple[str, int]],
) -> list[PlannedRun]:
    """Each found partition: a run, or counted as skipped (unknown ship, before the first
    partition), or deferred to the cursor (a future hour)."""
    runs: list[PlannedRun] = []
    for part, (last, rows, reasons) in found.items():
        ship, hour = split_part(part)
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
    return runs


def _release_deferred(
    deferred: dict[str, tuple[str, int]], last_hour: dt.datetime, running: set[tuple[str, dt.datetime]],
    skipped: dict[str, int],
) -> list[PlannedRun]:
    """Runs of the deferred partitions whose hour now exists (taken out of ``deferred``);
    beyond ``MAX_DEFERRED`` the furthest are dropped and counted."""
    runs: list[PlannedRun] = []
    for part in sorted(deferred):
        ship, hour = split_part(part)
        if hour <= last_hour:
            last, rows = deferred.pop(part)
            if (ship, hour) not in running:  # a run re-reads the whole hour: one is enough
                runs.append(PlannedRun(ship, hour, run_key(ship, hour, last, rows) + ":d", rows,
                                       "deferred"))
    if len(deferred) > MAX_DEFERRED:
        for part in sorted(deferred, key=lambda k: split_part(k)[1])[MAX_DEFERRED:]:
            skipped["deferred_dropped"] = skipped.get("deferred_dropped", 0) + deferred.pop(part)[1]
    return runs

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
    reason: str  # new | late | deferred | retry (the first that applies)
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
        reason = next(x for x in ("new", "late", "deferred", "retry") if x in reasons)
        digest = hashlib.sha1("|".join(r.run_key for r in rs).encode()).hexdigest()[:16]
        key = f"rt:{hour:%Y-%m-%dT%H:%M}:{span[0]}..{span[-1]}:{digest}"
        out.append(RunGroup(hour, span, tuple(r.ship for r in rs), sum(r.rows for r in rs), reason, key))
    return out


def describe_runs(runs: Iterable[PlannedRun]) -> str:
    return ", ".join(f"{r.ship} {r.hour:%Y-%m-%d %H:00} ({r.rows:,} {r.reason})" for r in runs)
