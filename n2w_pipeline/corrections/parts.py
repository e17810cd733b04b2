"""Applying a file: its hours cut into parts written side by side, one transaction each.

``apply_file`` checks, reads and parses a file, then ``apply_parsed`` writes it in hour
ranges (one range for a small file, up to ``settings.correction_workers`` ranges side by
side on their own connections for a large one), each ONE transaction: per-(ship, hour)
advisory locks on the range's hours, then ``apply_table`` per channel group. The file is
then recorded in ``n2w_correction_files`` (sha256, rows, cells). If one range fails, the
others stay committed and applying the file again writes the rest.
``apply_file(dry_run=True)`` computes the same counts with read-only queries and writes
nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.config import Settings
from n2w_pipeline.corrections.apply import Counts, apply_table, dry_run_table, record_file
from n2w_pipeline.corrections.files import CorrectionFile, read_file
from n2w_pipeline.corrections.parse import ParsedFile, parse_csv
from n2w_pipeline.corrections.plan import FilePlan, TablePlan, plan_tables
from n2w_pipeline.corrections.report import FileReport, TableReport, file_report
from n2w_pipeline.hours import HOUR_US, from_hour_number, hour_ranges
from n2w_pipeline.write import corrections_table_name, ensure_support_tables, ensure_wide_table, lock_hours

PART_MIN_ROWS = 20_000
"""A file is split into parallel parts only when each part gets at least this many rows."""

_Targets = list[tuple[sql.Identifier, sql.Identifier]]  # per table plan: (shadow table, wide table)


def split_hours(times_us: Iterable[np.ndarray], parts: int) -> list[tuple[int, int]]:
    """Cut the hours the timestamps touch into at most ``parts`` contiguous ranges
    ``[first hour, end hour)`` (hours since 1970) holding about as many rows each, each
    with at least ``PART_MIN_ROWS`` rows (a small file is one range). Pure."""
    arrays = [a for a in times_us if a.size]
    if not arrays:
        return []
    hours, counts = np.unique(np.concatenate(arrays) // HOUR_US, return_counts=True)
    total = int(counts.sum())
    parts = max(1, min(parts, total // PART_MIN_ROWS))
    cum = np.cumsum(counts)
    cuts = sorted({int(np.searchsorted(cum, total * k / parts)) + 1 for k in range(1, parts)})
    edges = [0, *[c for c in cuts if 0 < c < len(hours)], len(hours)]
    return [(int(hours[a]), int(hours[b - 1]) + 1) for a, b in itertools.pairwise(edges) if b > a]


def _hour(h: int) -> str:
    return f"{from_hour_number(h):%Y-%m-%d %H:00}"


def _block_hours(times_us: Iterable[np.ndarray]) -> list[dt.datetime]:
    """The distinct hours that blocks' timestamps (µs since 1970) fall in."""
    arrays = [a for a in times_us if a.size]
    if not arrays:
        return []
    return [from_hour_number(h) for h in np.unique(np.concatenate(arrays) // HOUR_US).tolist()]


def _hour_window(times_us: np.ndarray) -> tuple[dt.datetime, dt.datetime] | None:
    """[first hour, last hour + 1) of ``times_us``, or None when empty."""
    if not times_us.size:
        return None
    hours = times_us // HOUR_US
    return from_hour_number(int(hours.min())), from_hour_number(int(hours.max()) + 1)


def _in_hours(plan: TablePlan, hours: tuple[int, int]) -> TablePlan:
    h = plan.block.times_us // HOUR_US
    return plan.take((h >= hours[0]) & (h < hours[1]))


def _write_part(
    conn: psycopg.Connection, ship: str, plans: list[TablePlan], targets: _Targets, hours: tuple[int, int],
) -> tuple[list[Counts], dict[str, float]]:
    """One transaction writing the plans' rows within ``hours``: the (ship, hour) locks of
    those hours, in order, then ``apply_table`` per table. Returns counts per table and
    seconds per phase."""
    phase = dict.fromkeys(("copy", "stage", "shadow", "wide"), 0.0)
    part = [_in_hours(p, hours) for p in plans]
    counts = [Counts() for _ in plans]
    with conn.transaction():
        for start, end in hour_ranges(_block_hours(p.block.times_us for p in part)):
            lock_hours(conn, ship, start, end)
        for p, (shadow, wide), n in zip(part, targets, counts, strict=True):
            if p.block.rows:
                n += apply_table(conn, p, shadow, wide, phase)
    return counts, phase


def _write_parts(
    conn: psycopg.Connection, connect: Callable[[], psycopg.Connection] | None, workers: int,
    ship: str, plans: list[TablePlan], targets: _Targets,
) -> tuple[list[Counts], dict[str, float], int]:
    """Write the plans in hour ranges (``split_hours``), side by side on ``workers``
    connections (``conn`` and new ones from ``connect``), one transaction per range.

    Ranges are disjoint, so the parts never wait for each other's hour locks, and every
    (ship, hour) is written whole by one transaction: the shadow and the wide table of an
    hour always change together. If a part fails, the others still commit; the error
    says which hours did, and applying the file again writes the rest (what is stored
    already is a no-op). Returns counts per table, seconds per phase summed over the
    parts, and the number of parts."""
    ranges = split_hours((p.block.times_us for p in plans), workers if connect else 1)
    if not ranges:
        return [Counts() for _ in plans], {}, 0
    if len(ranges) == 1:  # one transaction on the caller's connection, no thread
        results = [_write_part(conn, ship, plans, targets, ranges[0])]
    else:
        assert connect is not None
        results = _run_parallel(conn, connect, ship, plans, targets, ranges)
    counts = [Counts() for _ in plans]
    phase: dict[str, float] = {}
    for part_counts, part_phase in results:
        for total, n in zip(counts, part_counts, strict=True):
            total += n
        for k, v in part_phase.items():
            phase[k] = phase.get(k, 0.0) + v
    return counts, phase, len(ranges)


def _run_parallel(
    conn: psycopg.Connection, connect: Callable[[], psycopg.Connection], ship: str,
    plans: list[TablePlan], targets: _Targets, ranges: list[tuple[int, int]],
) -> list[tuple[list[Counts], dict[str, float]]]:
    """``_write_part`` per range, each on its own thread and connection (the first on
    ``conn``); if any fails, its error is raised with a note naming the committed ranges."""

    def run(i: int) -> tuple[list[Counts], dict[str, float]]:
        if i == 0:
            return _write_part(conn, ship, plans, targets, ranges[0])
        with connect() as extra:
            return _write_part(extra, ship, plans, targets, ranges[i])

    with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="n2w-corr") as pool:
        futures = [pool.submit(run, i) for i in range(len(ranges))]
        wait(futures)
    errors = {i: e for i, f in enumerate(futures) if (e := f.exception()) is not None}
    if errors:
        done = [f"{_hour(a)} to {_hour(b)}" for i, (a, b) in enumerate(ranges) if i not in errors]
        error = next(iter(errors.values()))
        error.add_note(
            f"{len(errors)} of {len(ranges)} parts failed; committed: {', '.join(done) or 'none'}; "
            "applying the file again writes the rest")
        raise error
    return [f.result() for f in futures]


def apply_parsed(
    conn: psycopg.Connection,
    settings: Settings,
    catalog: ChannelCatalog,
    cfile: CorrectionFile,
    parsed: ParsedFile,
    sha256: str,
    *,
    dry_run: bool = False,
    timings: dict[str, float] | None = None,
    connect: Callable[[], psycopg.Connection] | None = None,
) -> FileReport:
    """Write (or dry-run) a parsed file. ``conn`` must be in autocommit mode; ``connect``
    (optional) opens more such connections for writing parts of the file side by side.

    Real run: the file's hours are cut into up to ``settings.correction_workers`` ranges
    of about equal rows (``_write_parts``), each written in one transaction: advisory locks
    on its (ship, hour)s, in hour order (the same locks the narrow → wide runs take), then
    per table (``apply_table``) COPY the timestamps new to both tables into both, the
    others through a temporary stage, storing the cells that add or change a correction in
    the table's corrections shadow table and the wide table (only the file's columns,
    blank keeps the old value, unchanged rows untouched). Then the file is recorded in
    n2w_correction_files. Dry run: the same stage and read-only counts against both
    tables, rolled back; no table is created. ``timings`` (if given) receives seconds per
    phase (summed over the parts) and ``parts``.
    """
    t0 = time.perf_counter()
    plan = plan_tables(parsed, catalog)
    ship = cfile.ship
    shadows = [corrections_table_name(settings, ship, p.group.number) for p in plan.tables]
    reports = [
        TableReport(settings.table_name(ship, p.group.number), p.group.number, len(p.group.channels),
                    len(p.channels), p.coverage_pct, p.block.rows, p.block.cells)
        for p in plan.tables
    ]
    phase = dict.fromkeys(("plan", "prepare", "copy", "stage", "shadow", "wide"), 0.0)
    phase["plan"] = time.perf_counter() - t0
    if dry_run:
        counts = _dry_run(conn, settings.target_schema, plan, shadows, reports, phase)
    else:
        counts = _write(conn, settings, plan, ship, shadows, reports, phase, connect)
        if plan.tables:
            record_file(conn, settings, cfile, sha256, parsed.frame.height,
                        sum(p.block.cells for p in plan.tables))
    total = Counts()
    for rep, n in zip(reports, counts, strict=True):
        rep.inserted, rep.updated = n.inserted, n.updated
        total += n
    if timings is not None:
        timings.update(phase)
    return file_report(cfile.key, ship, sha256, parsed, plan, reports, dry_run=dry_run,
                       corrections=(total.added, total.changed), seconds=time.perf_counter() - t0)


def _dry_run(
    conn: psycopg.Connection, schema: str, plan: FilePlan, shadows: list[str], reports: list[TableReport],
    phase: dict[str, float],
) -> list[Counts]:
    """What writing the plan would do per table: read-only queries in a transaction that
    is rolled back (its stage tables go with it)."""
    counts = [Counts() for _ in plan.tables]
    with conn.transaction(force_rollback=True):
        for p, rep, shadow, n in zip(plan.tables, reports, shadows, counts, strict=True):
            if p.block.rows:
                n += dry_run_table(conn, schema, p, shadow, rep.table, phase)
    return counts


def _write(
    conn: psycopg.Connection, settings: Settings, plan: FilePlan, ship: str, shadows: list[str],
    reports: list[TableReport], phase: dict[str, float], connect: Callable[[], psycopg.Connection] | None,
) -> list[Counts]:
    """Create what the plan needs (support, wide and shadow tables, their columns and the
    time partitions of the file's hours), then write it in parts (``_write_parts``);
    counts per table."""
    t = time.perf_counter()
    ensure_support_tables(conn, settings)
    for p, shadow in zip(plan.tables, shadows, strict=True):
        hours = _hour_window(p.block.times_us)  # the time partitions the file's rows need
        ensure_wide_table(conn, settings, p.group, ship, hours=hours)
        # the shadow gets only the columns corrections use (added as files need them):
        # inserting into a 655-column table costs twice as much as into a narrow one
        used = replace(p.group, channels=p.channels, columns=p.columns)
        ensure_wide_table(conn, settings, used, ship, table=shadow, hours=hours)
    phase["prepare"] = time.perf_counter() - t
    schema = settings.target_schema
    targets = [(sql.Identifier(schema, shadow), sql.Identifier(schema, rep.table))
               for shadow, rep in zip(shadows, reports, strict=True)]
    counts, part_phase, phase["parts"] = _write_parts(
        conn, connect, settings.correction_workers, ship, list(plan.tables), targets)
    phase.update(part_phase)
    return counts


def apply_file(
    conn: psycopg.Connection,
    settings: Settings,
    catalog: ChannelCatalog,
    path: Path,
    *,
    dry_run: bool = False,
    timings: dict[str, float] | None = None,
    connect: Callable[[], psycopg.Connection] | None = None,
) -> FileReport:
    """Check, parse and apply (or dry-run) one file; ``CorrectionFileError`` if rejected.

    ``connect`` opens the extra connections a large file is written with (see
    ``apply_parsed``); without it the file is written on ``conn`` alone. ``timings`` (if
    given) receives seconds per phase: read, parse, then ``apply_parsed``'s."""
    t0 = time.perf_counter()
    cfile, data, sha = read_file(settings, path)
    t1 = time.perf_counter()
    parsed = parse_csv(data, cfile.key, settings.csv_time_offset_hours)
    t2 = time.perf_counter()
    report = apply_parsed(conn, settings, catalog, cfile, parsed, sha, dry_run=dry_run, timings=timings,
                          connect=connect)
    if timings is not None:
        timings.update(read=t1 - t0, parse=t2 - t1)
    report.seconds = time.perf_counter() - t0
    return report
