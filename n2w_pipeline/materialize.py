"""Narrow → wide for ships × a window of hours: extract, pivot, write, in slices.

No Dagster here: the assets, the CLI and the benchmarks call ``materialize_window``.
Each slice of ``settings.slice_hours`` hours is one transaction (locks, read, pivot,
write, issue counts), so memory is bounded by the slice, not by the window, and a killed
run leaves whole hours behind it, never a partial one.

Several ships (``fleet_slices``). A window of several ships is cut into slices of a few
hours of all of them (about ``slice_hours`` ship-hours), each read in one statement
(``NarrowReader.read_fleet``): on a table holding the whole fleet that reads each page of
those hours once, instead of once per ship. The slice is then split by ship and each
ship's rows go through the same body as a one-ship slice, in the same transaction.

Pipelining. A window is processed by ``PIPELINE_LANES`` lanes (threads), each with its
own writer connection and its own reader (``NarrowReader``). A lane opens its slice's transaction,
takes the slice's hour locks, then extracts; while it pivots and writes, the next lane
extracts the next slice (extraction is the bottleneck, so two extractions may overlap
too: measured 0.89M rows/s with one lane, 1.15-1.18M with two, on a ship-day). psycopg,
Polars and NumPy release the GIL in their heavy parts, so the client overlaps
with the server and both cores work. Data connections per window: 2 x lanes (the readers
on the source database, the writers on the data database); a run's windows can share them
(``LanePool``). The locks are always taken
before the extraction, in the transaction that writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN, ChannelCatalog, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.extract import NarrowReader
from n2w_pipeline.hours import HOUR_US, from_hour_number, window_slices
from n2w_pipeline.lanes import PIPELINE_LANES, Lane, LanePool
from n2w_pipeline.pivot import ChannelCodes, WideBlock, pivot_coded, resolve_values
from n2w_pipeline.retries import with_retries
from n2w_pipeline.write import (
    UNKNOWN_GROUP,
    VALUE_ISSUES,
    WriteResult,
    correction_columns,
    ensure_support_tables,
    ensure_wide_table,
    lock_hours,
    write_block,
)

FLEET_SLICE_SHIPS = 8
"""At most this many ships (or ``slice_hours``, if more) are read in one slice."""


@dataclass
class GroupStats:
    rows: int = 0
    cells: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    def add(self, r: WriteResult | GroupStats) -> None:
        self.rows += r.rows
        self.cells += r.cells
        self.inserted += r.inserted
        self.updated += r.updated
        self.deleted += r.deleted


@dataclass
class WindowStats:
    """What one ship-window did; summed over slices."""

    ship: str
    start: dt.datetime
    end: dt.datetime
    narrow_rows: int = 0
    corrections: int = 0
    seconds: float = 0.0
    groups: dict[int, GroupStats] = field(default_factory=dict)
    issues: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, reason) → n
    unknown: dict[str, int] = field(default_factory=dict)  # channel → n
    # what was read, for the in-run reconciliation check (checks.NarrowHours): two counts
    # per (ship, group, hour), so a year-long run holds a few MB of them
    narrow_hours: dict[tuple[str, int], dict[dt.datetime, tuple[int, int]]] = field(default_factory=dict)

    def merge(self, other: WindowStats) -> None:
        self.narrow_rows += other.narrow_rows
        self.corrections += other.corrections
        self.seconds += other.seconds
        for g, s in other.groups.items():
            self.groups.setdefault(g, GroupStats()).add(s)
        for k, n in other.issues.items():
            self.issues[k] = self.issues.get(k, 0) + n
        for k, n in other.unknown.items():
            self.unknown[k] = self.unknown.get(k, 0) + n
        for key, hours in other.narrow_hours.items():
            mine = self.narrow_hours.setdefault(key, {})
            for h, (n, expected) in hours.items():
                count, rows = mine.get(h, (0, 0))  # slices hold whole hours: no overlap
                mine[h] = (count + n, rows + expected)


Progress = Callable[[int, int, WindowStats], None]


def read_corrections(
    conn: psycopg.Connection,
    settings: Settings,
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
    groups: Sequence[ChannelGroup],
) -> pl.DataFrame:
    """Correction values of ``groups`` for the window (they override narrow values cell by
    cell): the non-NULL cells of each group's corrections shadow table, as
    (created_time, channel, value). A group without a shadow table has no corrections."""
    rows: list[tuple[dt.datetime, str, float]] = []
    for g in groups:
        corr = correction_columns(conn, settings, g, ship)
        if corr is None:
            continue
        rows += conn.execute(
            sql.SQL(
                "SELECT w.{t}, u.ch, u.v FROM {table} w, unnest(%s::text[], {arr}) AS u(ch, v) "
                "WHERE w.{t} >= %s AND w.{t} < %s AND u.v IS NOT NULL"
            ).format(t=sql.Identifier(TIME_COLUMN), table=corr.table, arr=corr.array("w")),
            (list(corr.channels), start, end),
        ).fetchall()
    return pl.DataFrame(
        rows,
        schema={"created_time": pl.Datetime("us"), "channel": pl.String, "value": pl.Float64},
        orient="row",
    )


def _record_issues(
    conn: psycopg.Connection,
    settings: Settings,
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
    groups: Sequence[int],
    rows: list[tuple[dt.datetime, str, int, str, int]],
) -> None:
    table = sql.Identifier(settings.target_schema, VALUE_ISSUES)
    conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE ship_id = %s AND hour >= %s AND hour < %s "
            "AND group_number = ANY(%s)"
        ).format(table),
        (ship, start, end, [UNKNOWN_GROUP, *groups]),
    )
    if rows:
        with conn.cursor() as cur, cur.copy(
            sql.SQL(
                "COPY {} (ship_id, hour, channel_id, group_number, reason, count) FROM STDIN"
            ).format(table)
        ) as copy:
            for r in rows:
                copy.write_row((ship, *r))


def _slice_body(
    conn: psycopg.Connection,
    narrow: pl.DataFrame,
    settings: Settings,
    codes: ChannelCodes,
    groups: Sequence[ChannelGroup],
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
) -> WindowStats:
    """Overlay corrections, pivot, write every group and record issues (in the caller's
    transaction, after ``lock_hours``; ``narrow`` is the coded extraction)."""
    stats = WindowStats(ship, start, end)
    corr = read_corrections(conn, settings, ship, start, end, groups)
    known = narrow.filter(pl.col("code").is_not_null())
    unknown_rows = narrow.filter(pl.col("code").is_null()).select("created_time", "channel")
    values, issues = resolve_values(known.drop("channel"))
    if corr.height:
        located = corr.join(codes.frame(), on="channel", how="left")
        overlay = located.filter(pl.col("code").is_not_null()).select("created_time", "code", "value")
        values = pl.concat([values, overlay]).unique(
            subset=["created_time", "code"], keep="last", maintain_order=True
        )
        stray = located.filter(pl.col("code").is_null()).select("created_time", "channel")
        if stray.height:
            unknown_rows = pl.concat([unknown_rows, stray]).unique()
    unknown = (
        unknown_rows.group_by(pl.col("created_time").dt.truncate("1h").alias("hour"), "channel")
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort("hour", "channel")
    )
    blocks = pivot_coded(values, codes, groups)
    stats.narrow_hours = _narrow_hours(known, blocks, codes, ship)
    del values, known
    for g in groups:
        stats.groups[g.number] = GroupStats()
        stats.groups[g.number].add(write_block(conn, settings, g, ship, start, end, blocks.pop(g.number)))
    selected = {g.number for g in groups}
    issue_rows = _issue_rows(issues, unknown, codes, selected)
    _record_issues(conn, settings, ship, start, end, sorted(selected), issue_rows)
    stats.narrow_rows = narrow.height
    stats.corrections = corr.height
    for _, code, reason, n in issues.iter_rows():
        key = (codes.channels[code], reason)
        stats.issues[key] = stats.issues.get(key, 0) + n
    for _, ch, n in unknown.iter_rows():
        stats.unknown[ch] = stats.unknown.get(ch, 0) + n
    return stats


def _narrow_hours(
    known: pl.DataFrame, blocks: Mapping[int, WideBlock], codes: ChannelCodes, ship: str
) -> dict[tuple[str, int], dict[dt.datetime, tuple[int, int]]]:
    """Per group of ``blocks`` and hour: narrow rows read, and the wide rows the slice calls
    for (its block's timestamps: narrow ∪ correction timestamps). Counted with NumPy from
    arrays the slice has anyway (~10 ms for 1.5M rows)."""
    out: dict[tuple[str, int], dict[dt.datetime, tuple[int, int]]] = {}
    if known.height:
        hours = known.get_column("created_time").cast(pl.Int64).to_numpy() // HOUR_US
        first = int(hours.min())
        groups = codes.group_of[known.get_column("code").to_numpy()]
    for number, block in blocks.items():
        per: dict[dt.datetime, tuple[int, int]] = {}
        if known.height:
            counts = np.bincount(hours[groups == number] - first)
            for i in np.flatnonzero(counts):
                per[from_hour_number(first + int(i))] = (int(counts[i]), 0)
        expected_hours, expected = np.unique(block.times_us // HOUR_US, return_counts=True)
        for h, n in zip(expected_hours.tolist(), expected.tolist(), strict=True):
            key = from_hour_number(h)
            per[key] = (per.get(key, (0, 0))[0], n)
        if per:
            out[(ship, number)] = per
    return out


def _issue_rows(
    issues: pl.DataFrame, unknown: pl.DataFrame, codes: ChannelCodes, selected: set[int]
) -> list[tuple[dt.datetime, str, int, str, int]]:
    """Rows for the value-issues table: bad values of selected groups, unknown channels."""
    out = [(h, ch, UNKNOWN_GROUP, "unknown_channel", int(n)) for h, ch, n in unknown.iter_rows()]
    for h, code, reason, n in issues.iter_rows():
        group = int(codes.group_of[code])
        if group in selected:
            out.append((h, codes.channels[code], group, reason, int(n)))
    return out


Slice = tuple[tuple[str, ...], dt.datetime, dt.datetime]  # ships, start, end


def fleet_slices(ships: Sequence[str], start: dt.datetime, end: dt.datetime, slice_hours: int) -> list[Slice]:
    """``ships`` × [start, end) as slices of about ``slice_hours`` ship-hours: one ship gets
    ``slice_hours`` hours a slice; n ships get ``slice_hours // n`` hours (at least one) of
    up to ``max(slice_hours, FLEET_SLICE_SHIPS)`` ships. In time order, then ship order."""
    per = max(slice_hours, FLEET_SLICE_SHIPS)
    ship_sets = [tuple(ships[i:i + per]) for i in range(0, len(ships), per)]
    hours = max(1, slice_hours // max(len(g) for g in ship_sets))
    return [(g, a, b) for a, b in window_slices(start, end, hours) for g in ship_sets]


def ships_name(ships: Sequence[str]) -> str:
    """How logs and errors name a window's or a slice's ships."""
    return ships[0] if len(ships) == 1 else f"{ships[0]}..{ships[-1]} ({len(ships)} ships)"


def _by_ship(frame: pl.DataFrame, ships: Sequence[str]) -> dict[str, pl.DataFrame]:
    """A fleet read's rows split per ship (``ship`` is the position in ``ships``)."""
    parts = frame.partition_by("ship", as_dict=True, include_key=False)
    empty = frame.drop("ship").clear()
    return {ship: parts.get((i,), empty) for i, ship in enumerate(ships)}


def prepare_tables(
    conn: psycopg.Connection,
    settings: Settings,
    groups: Sequence[ChannelGroup],
    ships: Sequence[str],
    hours: tuple[dt.datetime, dt.datetime] | None = None,
) -> list[str]:
    """Support tables plus every (ship, group) wide table, with the time partitions rows in
    ``hours`` need; returns what changed, for logs."""
    ensure_support_tables(conn, settings)
    notes = []
    for ship in ships:
        for g in groups:
            change = ensure_wide_table(conn, settings, g, ship, hours=hours)
            if change.created:
                notes.append(f"created {change.table} ({len(g.columns)} channel columns)")
            elif change.added_columns:
                notes.append(f"added {len(change.added_columns)} column(s) to {change.table}")
            if change.partitions:
                notes.append(f"created partition(s) {', '.join(change.partitions)}")
    return notes


def _slice(
    conn: psycopg.Connection,
    reader: NarrowReader,
    settings: Settings,
    codes: ChannelCodes,
    groups: Sequence[ChannelGroup],
    ships: tuple[str, ...],
    start: dt.datetime,
    end: dt.datetime,
) -> WindowStats:
    """One slice in the caller's transaction: hour locks of every ship (ships in order, so
    two slices never wait for each other in a cycle), one read, then each ship's body."""
    for ship in sorted(ships):
        lock_hours(conn, ship, start, end)  # the first one opens the slice's transaction
    if len(ships) == 1:
        parts = {ships[0]: reader.read(ships[0], start, end)}
    else:
        parts = _by_ship(reader.read_fleet(ships, start, end), ships)
    stats = WindowStats(",".join(ships), start, end)
    for ship in ships:
        stats.merge(_slice_body(conn, parts.pop(ship), settings, codes, groups, ship, start, end))
    return stats


def materialize_window(
    url: str,
    settings: Settings,
    catalog: ChannelCatalog,
    ship: str | Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    groups: Sequence[ChannelGroup] | None = None,
    progress: Progress | None = None,
    lanes: int | None = None,
    source_url: str | None = None,
    log: logging.Logger | None = None,
    connections: LanePool | None = None,
) -> WindowStats:
    """Make the wide tables of ``ship`` (one id, or several: ``fleet_slices``) for
    [start, end) equal the narrow rows (+ corrections).

    ``url`` is the data database (wide tables, corrections, locks); the narrow rows are
    read from ``source_url`` (default: ``url``), e.g. a replica of the ingest database.

    Processes about ``settings.slice_hours`` ship-hours per transaction (``fleet_slices``),
    ``lanes`` slices in flight (default: ``N2W_PIPELINE_LANES``, else ``PIPELINE_LANES``; see
    the module docstring), and calls ``progress(done, total, stats_so_far)`` after each
    committed slice. A transient database error (``retries.py``: a lost connection, a server
    restart, a deadlock, …) rolls the slice back and runs it again on new connections, up to
    ``N2W_DB_RETRIES`` times with backoff and jitter (each attempt logged on ``log``), then
    fails it with one line (``RetriesExhausted``). ``connections``: a ``LanePool`` the caller
    keeps open across windows (a run of many ship-hours: opening a reader costs ~0.2 s);
    without it the window opens and closes its own. On an error the failing slice rolls back,
    slices already started finish (commit or roll back whole), no new slice starts, and the
    error is raised.
    """
    ships = (ship,) if isinstance(ship, str) else tuple(ship)
    groups = list(catalog.groups if groups is None else groups)
    codes = ChannelCodes.from_catalog(catalog)
    slices = fleet_slices(ships, start, end, settings.slice_hours)
    lanes = max(1, min(lanes or settings.pipeline_lanes or PIPELINE_LANES, len(slices)))
    total = WindowStats(",".join(ships), start, end)
    t0 = time.perf_counter()
    where = f"{ships_name(ships)} {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}"

    def prepare() -> None:
        with psycopg.connect(url, autocommit=True) as ddl:
            prepare_tables(ddl, settings, groups, ships, (start, end))

    with_retries(settings, f"{where}: preparing the tables", prepare, log)
    own = connections is None
    if connections is None:
        connections = LanePool(url, source_url or url, settings, codes.channels, lanes)
    lanes = min(lanes, len(connections.lanes))
    try:
        free = list(connections.lanes[:lanes])
        free_lock = threading.Lock()
        failed = threading.Event()

        def attempt(lane: Lane, sl: Slice) -> WindowStats:
            if failed.is_set():  # another slice failed for good: the window fails anyway
                raise _Skipped()
            conn, reader = lane.open()
            try:
                stats = _slice(conn, reader, settings, codes, groups, *sl)
                conn.commit()
            except BaseException:
                with contextlib.suppress(psycopg.Error):  # broken: the server rolled back
                    conn.rollback()
                raise
            return stats

        def run_slice(sl: Slice) -> WindowStats:
            if failed.is_set():
                raise _Skipped()
            t_slice = time.perf_counter()
            with free_lock:
                lane = free.pop()
            ss, s, e = sl
            try:  # a transient error: the slice again, on new connections (see retries.py)
                stats = with_retries(settings, f"{ships_name(ss)} slice {s:%Y-%m-%d %H:%M}..{e:%H:%M}",
                                     lambda: attempt(lane, sl), log, on_retry=lambda _: lane.drop())
            except BaseException:
                failed.set()
                raise
            finally:
                with free_lock:
                    free.append(lane)
            stats.seconds = time.perf_counter() - t_slice
            return stats

        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="n2w-slice") as pool:
            pending: set[Future[WindowStats]] = set()
            done_count = 0
            for sl in slices:  # keep exactly `lanes` slices submitted, in order
                pending.add(pool.submit(run_slice, sl))
                if len(pending) < lanes:
                    continue
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done_count = _collect(finished, total, done_count, len(slices), progress)
            finished, pending = wait(pending)
            _collect(finished, total, done_count, len(slices), progress)
    finally:
        if own:
            connections.close()
    total.seconds = time.perf_counter() - t0
    return total


class _Skipped(Exception):
    """A slice not started because another slice of the window failed."""


def _collect(
    finished: set[Future[WindowStats]],
    total: WindowStats,
    done: int,
    n: int,
    progress: Progress | None,
) -> int:
    errors = [f.exception() for f in finished if f.exception() is not None]
    real = [e for e in errors if not isinstance(e, _Skipped)]
    if real:
        raise real[0]
    # a skipped slice can finish before the failing one; that error comes with its own future
    ok = [f for f in finished if f.exception() is None]
    for f in sorted(ok, key=lambda f: (f.result().start, f.result().ship)):
        total.merge(f.result())
        done += 1
        if progress is not None:
            progress(done, n, total)
    return done
