"""Narrow → wide for one ship and a window of hours: extract, pivot, write, in slices.

No Dagster here: the assets, the CLI and the benchmarks call ``materialize_window``.
Each slice of ``settings.slice_hours`` hours is one transaction (locks, read, pivot,
write, issue counts), so memory is bounded by the slice, not by the window, and a killed
run leaves whole hours behind it, never a partial one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import polars as pl
import psycopg
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.extract import NarrowReader
from n2w_pipeline.pivot import catalog_frame, locate_channels, pivot_group, resolve_values
from n2w_pipeline.write import (
    CORRECTIONS,
    VALUE_ISSUES,
    WriteResult,
    ensure_support_tables,
    ensure_wide_table,
    lock_hours,
    write_block,
)

HOUR = dt.timedelta(hours=1)
UNKNOWN_GROUP = 0


def hour_slices(
    start: dt.datetime, end: dt.datetime, hours: int
) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """[start, end) cut into consecutive windows of at most ``hours`` hours."""
    step = dt.timedelta(hours=hours)
    cursor = start
    while cursor < end:
        nxt = min(cursor + step, end)
        yield cursor, nxt
        cursor = nxt


@dataclass
class GroupStats:
    rows: int = 0
    cells: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    def add(self, r: WriteResult) -> None:
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

    @property
    def rows_per_s(self) -> float:
        return self.narrow_rows / self.seconds if self.seconds else 0.0

    def issue_totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, reason), n in self.issues.items():
            out[reason] = out.get(reason, 0) + n
        return out

    def merge(self, other: WindowStats) -> None:
        self.narrow_rows += other.narrow_rows
        self.corrections += other.corrections
        self.seconds += other.seconds
        for g, s in other.groups.items():
            mine = self.groups.setdefault(g, GroupStats())
            for name in ("rows", "cells", "inserted", "updated", "deleted"):
                setattr(mine, name, getattr(mine, name) + getattr(s, name))
        for k, n in other.issues.items():
            self.issues[k] = self.issues.get(k, 0) + n
        for k, n in other.unknown.items():
            self.unknown[k] = self.unknown.get(k, 0) + n


Progress = Callable[[int, int, WindowStats], None]


def read_corrections(
    conn: psycopg.Connection, settings: Settings, ship: str, start: dt.datetime, end: dt.datetime
) -> pl.DataFrame:
    """Correction values for the window (they override narrow values cell by cell)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT created_time, channel_id, value FROM {} "
            "WHERE ship_id = %s AND created_time >= %s AND created_time < %s"
        ).format(sql.Identifier(settings.target_schema, CORRECTIONS)),
        (ship, start, end),
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


def process_slice(
    conn: psycopg.Connection,
    reader: NarrowReader,
    settings: Settings,
    catalog: ChannelCatalog,
    lookup: pl.DataFrame,
    groups: Sequence[ChannelGroup],
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
) -> WindowStats:
    """One transaction: lock the hours, read, pivot and write every selected group."""
    t0 = time.perf_counter()
    stats = WindowStats(ship, start, end)
    with conn.transaction():
        lock_hours(conn, ship, start, end)
        narrow = reader.read(ship, start, end)
        corr = read_corrections(conn, settings, ship, start, end)
        values, issues = resolve_values(narrow)
        if corr.height:
            values = pl.concat([values, corr]).unique(
                subset=["created_time", "channel"], keep="last", maintain_order=True
            )
        known, unknown = locate_channels(values, lookup)
        for g in groups:
            block = pivot_group(known, g.number, len(g.columns))
            stats.groups[g.number] = GroupStats()
            stats.groups[g.number].add(write_block(conn, settings, g, ship, start, end, block))
        selected = {g.number for g in groups}
        issue_rows = _issue_rows(issues, unknown, catalog, selected)
        _record_issues(conn, settings, ship, start, end, sorted(selected), issue_rows)
    stats.narrow_rows = narrow.height
    stats.corrections = corr.height
    for _, ch, reason, n in issues.iter_rows():
        if catalog.locate(ch) is not None:
            stats.issues[(ch, reason)] = stats.issues.get((ch, reason), 0) + n
    for _, ch, n in unknown.iter_rows():
        stats.unknown[ch] = stats.unknown.get(ch, 0) + n
    stats.seconds = time.perf_counter() - t0
    return stats


def _issue_rows(
    issues: pl.DataFrame, unknown: pl.DataFrame, catalog: ChannelCatalog, selected: set[int]
) -> list[tuple[dt.datetime, str, int, str, int]]:
    """Rows for the value-issues table: bad values of selected groups, unknown channels."""
    out = [(h, ch, UNKNOWN_GROUP, "unknown_channel", int(n)) for h, ch, n in unknown.iter_rows()]
    for h, ch, reason, n in issues.iter_rows():
        loc = catalog.locate(ch)
        if loc is not None and loc[0] in selected:
            out.append((h, ch, loc[0], reason, int(n)))
    return out


def prepare_tables(
    conn: psycopg.Connection,
    settings: Settings,
    groups: Sequence[ChannelGroup],
    ships: Sequence[str],
) -> list[str]:
    """Support tables plus every (ship, group) wide table; returns what changed, for logs."""
    ensure_support_tables(conn, settings)
    notes = []
    for ship in ships:
        for g in groups:
            change = ensure_wide_table(conn, settings, g, ship)
            if change.created:
                notes.append(f"created {change.table} ({len(g.columns)} channel columns)")
            elif change.added_columns:
                notes.append(f"added {len(change.added_columns)} column(s) to {change.table}")
    return notes


def materialize_window(
    url: str,
    settings: Settings,
    catalog: ChannelCatalog,
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
    groups: Sequence[ChannelGroup] | None = None,
    progress: Progress | None = None,
) -> WindowStats:
    """Make the wide tables of ``ship`` for [start, end) equal the narrow rows (+ corrections).

    Processes ``settings.slice_hours`` hours per transaction and calls
    ``progress(done, total, stats_so_far)`` after each slice.
    """
    groups = list(catalog.groups if groups is None else groups)
    lookup = catalog_frame(catalog)
    slices = list(hour_slices(start, end, settings.slice_hours))
    total = WindowStats(ship, start, end)
    with psycopg.connect(url, autocommit=True) as conn, NarrowReader(url, settings) as reader:
        prepare_tables(conn, settings, groups, [ship])
        for i, (s, e) in enumerate(slices, start=1):
            total.merge(process_slice(conn, reader, settings, catalog, lookup, groups, ship, s, e))
            if progress is not None:
                progress(i, len(slices), total)
    return total
