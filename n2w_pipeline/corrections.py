"""CSV corrections: monthly files per hull, parsed in Polars and upserted into the wide tables.

Layout: ``<migration_dir>/<HULL>/<HULL>_<YYYY-MM>[_<tag>].csv``; the hull maps to a ship
through ``settings.hulls``. Header ``timestamp,<channel id>,…``; one row per timestamp; a
blank cell means "no change". Timestamps are naive wall-clock times on the created_time
clock, shifted by ``settings.csv_time_offset_hours``.

Three layers, each usable alone:

* files: ``locate_file`` / ``scan_changes`` (which files exist, are they well named, did
  their content change: sha256);
* parsing: ``parse_csv`` (pure: bytes → one Float64 column per channel, good rows only,
  every skipped row and bad cell counted with its line) and ``plan_tables`` (pure: which
  wide table and column each channel lands in, as ``WideBlock``s);
* the database: ``apply_file`` writes a file in hour ranges (one range for a small file,
  up to ``settings.correction_workers`` ranges side by side on their own connections for a
  large one), each ONE transaction: per-(ship, hour) advisory locks on the range's hours,
  then per channel group the cells go into the group's *corrections shadow table*
  (``<wide table>_corr``: same ``created_time`` key and column names as the wide table,
  one column per channel a correction has used, NULL = no correction; the durable overlay
  that every later narrow → wide run re-applies, so backfills and realtime runs never
  undo a correction) and into the wide table, setting only the file's columns to
  ``COALESCE(new, old)`` (a blank cell keeps the old value) and skipping rows that would
  not change. Each timestamp takes the cheapest path its existence allows: new to both
  tables → binary COPY into both; in the wide table only → staged, inserted into the
  shadow, wide row updated; in the shadow → staged, and only cells that add or change a
  correction merged into both (so applying a file twice is a no-op). The file is then
  recorded in ``n2w_correction_files`` (sha256, rows, cells). If one range fails, the
  others stay committed and applying the file again writes the rest.
  ``apply_file(dry_run=True)`` computes the same counts with read-only queries and writes
  nothing.

A file that cannot be used at all raises ``CorrectionFileError`` (message: file, line,
reason); row-level problems skip the row (or, for a bad cell, only that cell) and are
counted. The README's "CSV corrections" section has the table of cases.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN, ChannelCatalog, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.copy_binary import COPY_HEADER, COPY_TRAILER, encode_copy_binary, encode_dense_copy
from n2w_pipeline.hours import HOUR_US, from_hour_number, hour_ranges
from n2w_pipeline.pivot import WideBlock
from n2w_pipeline.write import (
    CORRECTION_FILES,
    copy_block,
    corrections_table_name,
    ensure_support_tables,
    ensure_wide_table,
    existing_columns,
    lock_hours,
)

TIMESTAMP_HEADER = "timestamp"
NAME_RE = re.compile(
    r"^(?P<hull>[A-Za-z0-9]+)_(?P<month>[0-9]{4}-(0[1-9]|1[0-2]))(_(?P<tag>[A-Za-z0-9][A-Za-z0-9_-]*))?"
    r"\.csv$"
)
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")
SAMPLES_PER_REASON = 10
_BOM = b"\xef\xbb\xbf"

# row-level reasons (the row is skipped) and cell-level reasons (only the cell is skipped)
ROW_REASONS = ("unparsable_timestamp", "too_many_fields", "duplicate_timestamp_conflict")
CELL_REASONS = ("non_numeric", "non_finite")


class CorrectionFileError(ValueError):
    """The whole file is rejected; the message names the file, the line and the reason."""


# ---------------------------------------------------------------------------- files


@dataclass(frozen=True)
class CorrectionFile:
    """A well-named correction file: ``key`` is ``HULL/name.csv`` (the partition key)."""

    path: Path
    key: str
    hull: str
    ship: str
    month: str


def locate_file(settings: Settings, path: Path) -> CorrectionFile:
    """Check a file's folder and name; raise ``CorrectionFileError`` saying what is wrong."""
    path = Path(path)
    folder, name = path.parent.name, path.name
    key = f"{folder}/{name}"
    root = Path(settings.migration_dir).resolve()
    inside = path.resolve().parent.parent == root
    if path.resolve().parent == root:
        raise CorrectionFileError(
            f"{name}: not in a hull folder; put it in {settings.migration_dir}/<HULL>/, "
            f"e.g. H2546/H2546_2025-01.csv"
        )
    if folder not in settings.hulls:
        where = "" if inside else f" (in {path.parent})"
        raise CorrectionFileError(
            f"{key}: unknown hull folder {folder!r}{where}; known hulls: "
            f"{', '.join(sorted(settings.hulls))} (N2W_HULLS)"
        )
    m = NAME_RE.match(name)
    if not m:
        raise CorrectionFileError(
            f"{key}: file name must be <HULL>_<YYYY-MM>.csv or <HULL>_<YYYY-MM>_<tag>.csv, "
            f"e.g. {folder}_2025-01.csv"
        )
    if m["hull"] != folder:
        raise CorrectionFileError(f"{key}: file name's hull {m['hull']!r} differs from its folder {folder!r}")
    return CorrectionFile(path, key, folder, settings.hulls[folder], m["month"])


def candidate_paths(folder: Path) -> list[Path]:
    """Every ``*.csv`` under ``folder`` (any depth, case-insensitive), hidden ones excluded."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() == ".csv":
            out.append(p)
    return sorted(out)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileChange:
    file: CorrectionFile
    sha256: str


@dataclass
class ScanResult:
    """What a sensor tick found: files to apply, bad files, the cursor to store."""

    changed: list[FileChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unchanged: int = 0
    deferred: int = 0
    cursor: dict[str, dict[str, object]] = field(default_factory=dict)


def scan_changes(
    settings: Settings, cursor: Mapping[str, Mapping[str, object]], hash_budget_s: float = 30.0
) -> ScanResult:
    """Compare the migration folder with ``cursor`` (key → {sha256, size, mtime_ns}).

    A file is *changed* when its sha256 differs from the cursor's (new files included);
    the hash is recomputed only when size or mtime moved, so an untouched folder costs a
    ``stat`` per file and a copied-but-identical file is not applied again. Badly placed
    or named files are listed in ``problems`` and never enter the cursor (they are
    reported on every tick until fixed). The returned cursor holds the unchanged files
    plus the changed ones: the caller stores it only together with the run requests.
    Hashing stops after ``hash_budget_s``; the rest is ``deferred`` to the next tick.
    """
    result = ScanResult()
    t0 = time.perf_counter()
    for path in candidate_paths(settings.migration_dir):
        try:
            cf = locate_file(settings, path)
        except CorrectionFileError as e:
            result.problems.append(str(e))
            continue
        st = path.stat()
        old = cursor.get(cf.key)
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            result.cursor[cf.key] = dict(old)
            result.unchanged += 1
            continue
        if time.perf_counter() - t0 > hash_budget_s:
            result.deferred += 1
            if old:
                result.cursor[cf.key] = dict(old)
            continue
        sha = file_sha256(path)
        result.cursor[cf.key] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if old and old.get("sha256") == sha:
            result.unchanged += 1
        else:
            result.changed.append(FileChange(cf, sha))
    return result


def dump_cursor(cursor: Mapping[str, object]) -> str:
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"))


def load_cursor(text: str | None) -> dict[str, dict[str, object]]:
    if not text:
        return {}
    data = json.loads(text)
    return {k: v for k, v in data.items() if isinstance(v, dict)}


# ---------------------------------------------------------------------------- parsing


@dataclass
class Problems:
    """Counts per reason, plus a few messages per reason naming file, line and reason."""

    counts: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def add(self, reason: str, n: int, messages: Iterable[str]) -> None:
        if n <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.samples.extend(itertools.islice(messages, SAMPLES_PER_REASON))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class ParsedFile:
    """A file's usable content.

    ``frame``: ``created_time`` (sorted, unique, offset applied) plus one Float64 column
    per channel named by the stripped channel id; NULL = blank or skipped cell.
    """

    name: str
    channels: list[str]
    frame: pl.DataFrame
    lines: int  # data lines after the header (blank lines included)
    blank_lines: int = 0
    duplicate_identical: int = 0
    skipped_rows: Problems = field(default_factory=Problems)
    bad_cells: Problems = field(default_factory=Problems)


def _header(name: str, data: bytes) -> list[str]:
    end = data.find(b"\n")
    first = (data if end < 0 else data[:end]).rstrip(b"\r")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorrectionFileError(f"{name} line 1: not UTF-8 (byte {e.start + 1} of the header)") from None
    return [c.strip() for c in next(csv.reader([text]))]


def _too_many_fields(text: str, width: int) -> list[int]:
    """Line numbers (1-based) of rows with more fields than the header (slow path)."""
    out = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if lineno > 1 and len(row) > width:
            out.append(lineno)
    return out


def parse_csv(data: bytes, name: str, offset_hours: float = 0.0) -> ParsedFile:
    """Parse one correction file (bytes) into a ``ParsedFile``. Pure: no I/O.

    Rejected (``CorrectionFileError``): empty file, not UTF-8, no ``timestamp`` column,
    two columns with the same channel id (after stripping spaces), a column without a
    channel id that has values. Skipped rows (counted, with lines): unparsable or missing
    timestamp, more fields than the header, a timestamp repeated with different values
    (every row of that timestamp). Skipped cells: non-numeric or non-finite values.
    Dropped silently but counted: blank lines, identical repeats of a row.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data or data.isspace():
        raise CorrectionFileError(f"{name} line 1: empty file (no header line)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CorrectionFileError(f"{name} line {line}: not UTF-8 text (byte {e.start + 1})") from None
    names = _header(name, data)
    ts_cols = [i for i, n in enumerate(names) if n.lower() == TIMESTAMP_HEADER]
    if not ts_cols:
        shown = ", ".join(repr(n) for n in names[:3])
        raise CorrectionFileError(
            f"{name} line 1: no 'timestamp' column (header starts with {shown})"
        )
    if len(ts_cols) > 1:
        raise CorrectionFileError(
            f"{name} line 1: 'timestamp' appears in columns {ts_cols[0] + 1} and {ts_cols[1] + 1}"
        )
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n and n in seen:
            raise CorrectionFileError(
                f"{name} line 1: channel {n!r} is in columns {seen[n] + 1} and {i + 1} "
                "(ids are compared after stripping spaces)"
            )
        seen[n] = i
    width = len(names)
    cols = [f"c{i}" for i in range(width)]
    schema = dict.fromkeys(cols, pl.String)
    ragged: list[int] = []
    try:
        raw = pl.read_csv(data, has_header=False, skip_rows=1, schema=schema)
    except pl.exceptions.ComputeError as e:
        if "more fields" not in str(e):
            raise CorrectionFileError(f"{name}: cannot be read as CSV: {e}") from None
        ragged = _too_many_fields(text, width)
        raw = pl.read_csv(data, has_header=False, skip_rows=1, schema=schema, truncate_ragged_lines=True)
    del text
    raw = raw.with_row_index("line", offset=2)
    parsed = ParsedFile(name, [], pl.DataFrame(), raw.height)
    ts = cols[ts_cols[0]]
    chan_cols = [c for i, c in enumerate(cols) if i != ts_cols[0] and names[i]]
    channels = [names[int(c[1:])] for c in chan_cols]

    # blank lines: no timestamp and nothing else (checked only on rows without a timestamp)
    raw = raw.with_columns(pl.col(ts).str.strip_chars().replace("", None))
    no_ts = raw.filter(pl.col(ts).is_null())
    if no_ts.height:
        empty = no_ts.select("line", pl.all_horizontal(
            [pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") for c in cols]).alias("blank"))
        blank_lines = empty.filter("blank").get_column("line")
        parsed.blank_lines = blank_lines.len()
        if blank_lines.len():
            raw = raw.filter(~pl.col("line").is_in(blank_lines.implode()))
    if ragged:
        bad = raw.filter(pl.col("line").is_in(ragged))
        parsed.skipped_rows.add(
            "too_many_fields", bad.height,
            (f"{name} line {ln}: more fields than the {width} header columns" for ln in bad["line"]),
        )
        raw = raw.filter(~pl.col("line").is_in(ragged))

    for i, n in enumerate(names):
        if n:
            continue
        hit = raw.filter(pl.col(cols[i]).str.strip_chars().replace("", None).is_not_null())
        if hit.height:
            raise CorrectionFileError(
                f"{name} line {hit['line'][0]}: column {i + 1} has no channel id in the header "
                "but holds values"
            )

    offset = pl.duration(microseconds=round(offset_hours * HOUR_US))
    when = pl.coalesce([pl.col(ts).str.to_datetime(f, strict=False, time_unit="us") for f in TIME_FORMATS])
    raw = raw.with_columns((when + offset).alias(TIME_COLUMN))
    bad_ts = raw.filter(pl.col(TIME_COLUMN).is_null())
    parsed.skipped_rows.add(
        "unparsable_timestamp", bad_ts.height,
        (f"{name} line {ln}: unparsable timestamp {v!r} (expected naive YYYY-MM-DD HH:MM[:SS])"
         if v is not None else f"{name} line {ln}: missing timestamp"
         for ln, v in bad_ts.select("line", ts).iter_rows()),
    )
    rows = raw.filter(pl.col(TIME_COLUMN).is_not_null())

    # cells: numeric and finite, else NULL. The fast cast needs no strip; only columns
    # where it lost values (spaces, or bad cells) take the slow path.
    nums = rows.select(
        "line", TIME_COLUMN, pl.col(ts).alias("ts_text"),
        *[pl.col(c).cast(pl.Float64, strict=False) for c in chan_cols],
    )
    raw_nulls = rows.select(chan_cols).null_count().row(0) if chan_cols else ()
    num_nulls = nums.select(chan_cols).null_count().row(0) if chan_cols else ()
    lossy = [c for c, a, b in zip(chan_cols, raw_nulls, num_nulls, strict=True) if a != b]
    if lossy:
        nums = nums.with_columns(
            [pl.Series(c, rows.get_column(c)).str.strip_chars().replace("", None)
             .cast(pl.Float64, strict=False) for c in lossy]
        )
    nonfinite = nums.select(
        [(~pl.col(c).is_finite()).sum() for c in chan_cols]).row(0) if chan_cols else ()
    suspect = sorted(set(lossy) | {c for c, n in zip(chan_cols, nonfinite, strict=True) if n})
    if suspect:
        bad_cells = _bad_cells(rows, nums, suspect)
        for reason in CELL_REASONS:
            hits = bad_cells.filter(pl.col("reason") == reason)
            parsed.bad_cells.add(
                reason, hits.height,
                (f"{name} line {ln}: {reason.replace('_', '-')} value {v!r} for {names[int(c[1:])]!r} "
                 "(cell skipped)" for ln, c, v, _ in hits.head(SAMPLES_PER_REASON).iter_rows()),
            )
        nums = nums.with_columns(
            [pl.when(pl.col(c).is_finite()).then(pl.col(c)).alias(c) for c in suspect]
        )

    # duplicate timestamps: identical repeats collapse, conflicting ones skip every row
    dup = nums.get_column(TIME_COLUMN).is_duplicated()
    if dup.any():
        single, multi = nums.filter(~dup), nums.filter(dup)
        distinct = multi.unique(subset=[TIME_COLUMN, *chan_cols], keep="first", maintain_order=True)
        parsed.duplicate_identical = multi.height - distinct.height
        conflict_ts = distinct.filter(pl.col(TIME_COLUMN).is_duplicated()).get_column(TIME_COLUMN)
        if conflict_ts.len():
            hit = multi.filter(pl.col(TIME_COLUMN).is_in(conflict_ts.implode())).sort(TIME_COLUMN, "line")
            first_lines = hit.group_by(TIME_COLUMN, maintain_order=True).agg(
                pl.col("ts_text").first(), pl.col("line")
            )
            parsed.skipped_rows.add(
                "duplicate_timestamp_conflict", hit.height,
                (f"{name} lines {', '.join(map(str, lns))}: timestamp {text!r} repeated with "
                 "different values (all its rows skipped)" for _, text, lns in first_lines.iter_rows()),
            )
            distinct = distinct.filter(~pl.col(TIME_COLUMN).is_in(conflict_ts.implode()))
        nums = pl.concat([single, distinct])
    parsed.frame = nums.sort(TIME_COLUMN).select(
        TIME_COLUMN, *[pl.col(c).alias(ch) for c, ch in zip(chan_cols, channels, strict=True)]
    )
    parsed.channels = channels
    return parsed


def _bad_cells(rows: pl.DataFrame, nums: pl.DataFrame, chan_cols: list[str]) -> pl.DataFrame:
    """(line, column, raw text, reason) of every non-numeric or non-finite cell in ``chan_cols``."""
    both = pl.concat(
        [rows.select("line", *chan_cols),
         nums.select(*[pl.col(c).alias(f"{c}_n") for c in chan_cols])],
        how="horizontal",
    )
    parts = []
    for c in chan_cols:
        raw, num = pl.col(c), pl.col(f"{c}_n")
        blank = raw.is_null() | (raw.str.strip_chars() == "")
        reason = (
            pl.when(~blank & num.is_null()).then(pl.lit("non_numeric"))
            .when(num.is_not_null() & ~num.is_finite()).then(pl.lit("non_finite"))
        )
        parts.append(
            both.select("line", pl.lit(c).alias("col"), raw.alias("raw"), reason.alias("reason"))
            .filter(pl.col("reason").is_not_null())
        )
    return pl.concat(parts).sort("line", "col")


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TablePlan:
    """The cells of one file that land in one channel group's wide table."""

    group: ChannelGroup
    channels: tuple[str, ...]  # file channels of this group, in group order
    columns: tuple[str, ...]  # their wide-table columns
    block: WideBlock  # rows = timestamps with at least one non-blank cell of this group

    @property
    def coverage_pct(self) -> float:
        return round(100.0 * len(self.channels) / len(self.group.channels), 1)


@dataclass(frozen=True)
class FilePlan:
    tables: tuple[TablePlan, ...]
    unknown: dict[str, int]  # channel in no list → non-blank cells (not stored)


def plan_tables(parsed: ParsedFile, catalog: ChannelCatalog) -> FilePlan:
    """Split a parsed file by channel group into dense blocks (pure)."""
    by_group: dict[int, list[tuple[int, str]]] = {}
    unknown: dict[str, int] = {}
    counts = parsed.frame.select(pl.all().exclude(TIME_COLUMN).count()).row(0) if parsed.channels else ()
    for ch, n in zip(parsed.channels, counts, strict=True):
        loc = catalog.locate(ch)
        if loc is None:
            unknown[ch] = int(n)
        else:
            by_group.setdefault(loc[0], []).append((loc[1], ch))
    times = parsed.frame.get_column(TIME_COLUMN).cast(pl.Int64).to_numpy()
    tables = []
    for number in sorted(by_group):
        g = catalog.group(number)
        members = sorted(by_group[number])
        chans = tuple(ch for _, ch in members)
        values = parsed.frame.select(chans).to_numpy().astype(np.float64, copy=False)
        if values.ndim == 1:
            values = values.reshape(-1, 1)
        mask = ~np.isnan(values)
        keep = mask.any(axis=1)
        if not keep.all():  # (the copy is skipped in the common case)
            times_g, values, mask = times[keep], values[keep], mask[keep]
        else:
            times_g = times
        block = WideBlock(
            np.ascontiguousarray(times_g),
            np.where(mask, values, 0.0),
            np.ascontiguousarray(mask),
        )
        tables.append(TablePlan(g, chans, tuple(g.columns[i] for i, _ in members), block))
    return FilePlan(tuple(tables), unknown)


# ---------------------------------------------------------------------------- database


@dataclass
class TableReport:
    table: str
    group: int
    listed_channels: int
    matched_channels: int
    coverage_pct: float
    rows: int  # file rows with at least one non-blank cell for this table
    cells: int  # non-blank cells written (or that would be) into this table
    inserted: int = 0
    updated: int = 0

    @property
    def unchanged(self) -> int:
        return self.rows - self.inserted - self.updated


@dataclass
class FileReport:
    """What applying (or dry-running) one file did; becomes Dagster metadata and CLI text."""

    key: str
    ship: str
    sha256: str
    dry_run: bool
    lines: int
    rows_valid: int
    blank_lines: int
    duplicate_identical: int
    skipped_rows: dict[str, int]
    bad_cells: dict[str, int]
    problems: list[str]
    channels_in_file: int
    unknown_channels: dict[str, int]
    tables: list[TableReport]
    corrections_inserted: int = 0
    corrections_updated: int = 0
    seconds: float = 0.0

    @property
    def rows_inserted(self) -> int:
        return sum(t.inserted for t in self.tables)

    @property
    def rows_updated(self) -> int:
        return sum(t.updated for t in self.tables)

    @property
    def rows_unchanged(self) -> int:
        return sum(t.unchanged for t in self.tables)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["tables"] = [{**asdict(t), "unchanged": t.unchanged} for t in self.tables]
        return d


_NAN = sql.SQL("'NaN'::float8")


def _stage(conn: psycopg.Connection, plan: TablePlan, kind: str = "stage") -> sql.Identifier:
    """A temporary table (dropped at commit) holding the plan's block, loaded by binary COPY;
    blank cells are NaN there (see ``encode_dense_copy``)."""
    stage = sql.Identifier(f"n2w_corr_{kind}_{plan.group.number}")
    cols = [sql.Identifier(c) for c in plan.columns]
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage))
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ({} timestamp, {}) ON COMMIT DROP").format(
            stage, sql.Identifier(TIME_COLUMN),
            sql.SQL(", ").join(sql.SQL("{} double precision").format(c) for c in cols),
        )
    )
    if plan.block.rows:
        rows = encode_dense_copy(plan.block)
        with conn.cursor() as cur, cur.copy(
            sql.SQL("COPY {} ({}, {}) FROM STDIN (FORMAT BINARY)").format(
                stage, sql.Identifier(TIME_COLUMN), sql.SQL(", ").join(cols)
            )
        ) as copy:
            copy.write(COPY_HEADER)
            copy.write(memoryview(rows).cast("B"))
            copy.write(COPY_TRAILER)
    return stage


def _staged(plan: TablePlan, alias: str | None = None) -> list[sql.Composable]:
    """The stage's columns with NaN (blank) read as NULL."""
    return [sql.SQL("NULLIF({}, {})").format(sql.Identifier(*((alias,) if alias else ()), c), _NAN)
            for c in plan.columns]


def _merge(
    conn: psycopg.Connection, target: sql.Identifier, plan: TablePlan, stage: sql.Composable
) -> tuple[int, int]:
    """Upsert the stage into ``target`` (a wide table or its shadow); (inserted, updated) rows.

    Only the file's columns are set; ``COALESCE(new, old)`` keeps the old value where the
    file's cell is blank; timestamps not yet in ``target`` become rows with the other
    columns NULL; rows that would not change are not touched (not counted as updated).
    ``stage`` is the stage table or a subquery of it (the rows that change the shadow table).
    """
    cols = [sql.Identifier(c) for c in plan.columns]
    time_col = sql.Identifier(TIME_COLUMN)
    merged = [sql.SQL("COALESCE(EXCLUDED.{0}, t.{0})").format(c) for c in cols]
    # `pre` (the stage's timestamps already stored) sees the table as it was before the
    # upsert (one snapshot for the whole statement): it tells inserts from updates, which
    # RETURNING xmax cannot on a partitioned table
    q = sql.SQL(
        """WITH pre AS MATERIALIZED (SELECT x.{time} FROM (SELECT {time} FROM {stage}) x
                          JOIN {target} p ON p.{time} = x.{time}),
up AS (
  INSERT INTO {target} AS t ({time}, {cols}) SELECT {time}, {vals} FROM {stage}
  ON CONFLICT ({time}) DO UPDATE SET {assign}
    WHERE ROW({old}) IS DISTINCT FROM ROW({new})
  RETURNING t.{time})
SELECT count(*) FILTER (WHERE pre.{time} IS NULL), count(*) FILTER (WHERE pre.{time} IS NOT NULL)
FROM up LEFT JOIN pre ON pre.{time} = up.{time}"""
    ).format(
        target=target, time=time_col, cols=sql.SQL(", ").join(cols), stage=stage,
        vals=sql.SQL(", ").join(_staged(plan)),
        assign=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, m) for c, m in zip(cols, merged, strict=True)),
        old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in cols),
        new=sql.SQL(", ").join(merged),
    )
    row = conn.execute(q).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _update(conn: psycopg.Connection, target: sql.Identifier, plan: TablePlan, stage: sql.Identifier) -> int:
    """Update the ``target`` rows the stage has (the caller knows they all exist): only the
    file's columns, ``COALESCE(new, old)``, rows that would not change untouched; returns
    the rows updated. Cheaper than ``_merge``'s upsert (no speculative insertion and tuple
    lock per row), which matters for 5 kB rows."""
    cols = [sql.Identifier(c) for c in plan.columns]
    news = _staged(plan, "s")
    olds = [sql.SQL("t.{}").format(c) for c in cols]
    merged, _, _ = _merge_terms(news, olds)
    q = sql.SQL(
        "UPDATE {target} AS t SET {assign} FROM {stage} AS s "
        "WHERE t.{time} = s.{time} AND ROW({old}) IS DISTINCT FROM ROW({new})"
    ).format(
        target=target, stage=stage, time=sql.Identifier(TIME_COLUMN),
        assign=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, m) for c, m in zip(cols, merged, strict=True)),
        old=sql.SQL(", ").join(olds), new=sql.SQL(", ").join(merged),
    )
    # one index probe per stage row: a hash join would deform every wide row of the table.
    # No try/finally: if the UPDATE fails, the rollback undoes the SET LOCAL (a RESET there
    # would only hide the error behind "current transaction is aborted").
    conn.execute("SET LOCAL enable_hashjoin = off")
    conn.execute("SET LOCAL enable_mergejoin = off")
    updated = conn.execute(q).rowcount
    conn.execute("RESET enable_hashjoin")
    conn.execute("RESET enable_mergejoin")
    return updated


def _merge_terms(
    news: list[sql.Composable], olds: list[sql.Composable]
) -> tuple[list[sql.Composable], sql.Composable, sql.Composable]:
    """(merged cell per column, cells newly set, cells changed) for a COALESCE merge of
    staged values ``news`` over stored values ``olds`` (a blank staged cell keeps the old)."""
    pairs = list(zip(news, olds, strict=True))
    merged = [sql.SQL("COALESCE({}, {})").format(n, o) for n, o in pairs]
    added = sql.SQL(" + ").join(
        sql.SQL("({} IS NOT NULL AND {} IS NULL)::int").format(n, o) for n, o in pairs)
    changed = sql.SQL(" + ").join(
        sql.SQL("({} IS NOT NULL AND {} IS NOT NULL AND {} IS DISTINCT FROM {})::int").format(n, o, n, o)
        for n, o in pairs)
    return merged, added, changed


def _compare(
    conn: psycopg.Connection, schema: str, table: str, plan: TablePlan, stage: sql.Identifier
) -> tuple[int, int, int, int]:
    """Read-only: what merging the stage into ``table`` would do.

    Returns (rows inserted, rows updated, cells newly set, cells changed); a table or a
    column that does not exist yet counts as empty / NULL.
    """
    have = existing_columns(conn, schema, table)
    if have is None:
        return plan.block.rows, 0, plan.block.cells, 0
    present = set(have)
    olds = [sql.SQL("t.{}").format(sql.Identifier(c)) if c in present else sql.SQL("NULL::float8")
            for c in plan.columns]
    news = _staged(plan, "s")
    merged, added, changed = _merge_terms(news, olds)
    q = sql.SQL(
        """SELECT count(*) FILTER (WHERE t.{time} IS NULL),
       count(*) FILTER (WHERE t.{time} IS NOT NULL AND ROW({old}) IS DISTINCT FROM ROW({new})),
       coalesce(sum({added}), 0), coalesce(sum({changed}), 0)
FROM {stage} s LEFT JOIN {target} t ON t.{time} = s.{time}"""
    ).format(time=sql.Identifier(TIME_COLUMN), old=sql.SQL(", ").join(olds),
             new=sql.SQL(", ").join(merged), added=added, changed=changed, stage=stage,
             target=sql.Identifier(schema, table))
    row = conn.execute(q).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _shadow_delta(
    conn: psycopg.Connection, shadow: sql.Identifier, plan: TablePlan, stage: sql.Identifier
) -> tuple[sql.Composable | None, int, int]:
    """The stage rows that would change the shadow table, kept in a temporary table.

    Returns (a FROM-able subquery of those stage rows, or None if there are none; cells
    newly set; cells changed). Only these rows can change the wide table: every writer
    keeps the wide cells equal to the non-NULL shadow cells (this module writes both in
    one transaction, the narrow → wide runs overlay the shadow), so a row whose
    corrections are already stored is already in the wide table.
    """
    delta = sql.Identifier(f"n2w_corr_delta_{plan.group.number}")
    time_col = sql.Identifier(TIME_COLUMN)
    olds = [sql.Identifier("t", c) for c in plan.columns]
    news = _staged(plan, "s")
    merged, added, changed = _merge_terms(news, olds)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(delta))
    conn.execute(
        sql.SQL(
            """CREATE TEMP TABLE {delta} ON COMMIT DROP AS
SELECT s.{time} AS {time}, {added} AS n2w_added, {changed} AS n2w_changed
FROM {stage} s LEFT JOIN {shadow} t ON t.{time} = s.{time}
WHERE t.{time} IS NULL OR ROW({old}) IS DISTINCT FROM ROW({new})"""
        ).format(delta=delta, time=time_col, added=added, changed=changed, stage=stage, shadow=shadow,
                 old=sql.SQL(", ").join(olds), new=sql.SQL(", ").join(merged))
    )
    row = conn.execute(
        sql.SQL("SELECT count(*), coalesce(sum(n2w_added), 0), coalesce(sum(n2w_changed), 0) FROM {}")
        .format(delta)
    ).fetchone()
    assert row is not None
    if not row[0]:
        return None, 0, 0
    source = sql.SQL("(SELECT s.* FROM {} s JOIN {} d ON d.{} = s.{}) AS s").format(
        stage, delta, time_col, time_col)
    return source, int(row[1]), int(row[2])


def _record_file(
    conn: psycopg.Connection, settings: Settings, cfile: CorrectionFile, sha256: str, rows: int, cells: int
) -> None:
    conn.execute(
        sql.SQL(
            """INSERT INTO {} (file, sha256, ship_id, rows, cells) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (file, sha256) DO UPDATE SET applied_at = now(), rows = EXCLUDED.rows, cells = EXCLUDED.cells"""
        ).format(sql.Identifier(settings.target_schema, CORRECTION_FILES)),
        (cfile.key, sha256, cfile.ship, rows, cells),
    )


def _existing_times(conn: psycopg.Connection, target: sql.Identifier, times_us: np.ndarray) -> np.ndarray:
    """The timestamps (µs since 1970) ``target`` has between the first and last of ``times_us``
    (one int8 array from the server: no Python object per row)."""
    epoch = dt.datetime(1970, 1, 1)
    with conn.cursor(binary=True) as cur:
        row = cur.execute(
            sql.SQL(
                "SELECT coalesce(array_agg((EXTRACT(EPOCH FROM {t}) * 1000000)::int8), '{{}}') "
                "FROM {target} WHERE {t} >= %s AND {t} <= %s"
            ).format(t=sql.Identifier(TIME_COLUMN), target=target),
            [epoch + dt.timedelta(microseconds=int(times_us[i])) for i in (0, -1)],
        ).fetchone()
    return np.array(row[0] if row else [], dtype=np.int64)


def _take(plan: TablePlan, rows: np.ndarray) -> TablePlan:
    """The plan with the block's ``rows`` (a boolean mask) only; no copy when all are kept."""
    if rows.all():
        return plan
    b = plan.block
    return replace(plan, block=WideBlock(b.times_us[rows], b.values[rows], b.mask[rows]))


@dataclass
class _Counts:
    """What writing one block did: wide rows inserted / updated, correction cells newly
    set / changed."""

    inserted: int = 0
    updated: int = 0
    added: int = 0
    changed: int = 0

    def __iadd__(self, other: _Counts) -> _Counts:
        self.inserted += other.inserted
        self.updated += other.updated
        self.added += other.added
        self.changed += other.changed
        return self


def _apply_table(
    conn: psycopg.Connection, plan: TablePlan,
    shadow: sql.Identifier, wide: sql.Identifier, phase: dict[str, float],
) -> _Counts:
    """Write one table's block into its shadow and wide tables (under the caller's hour
    locks).

    Each timestamp takes the cheapest path its existence allows (under the hour locks
    nobody else adds rows to those hours):

    * in neither table (missing data): binary-COPYed straight into both;
    * in the wide table only (a first correction): COPYed into a stage, inserted from
      there into the shadow table, and the wide rows updated from it;
    * in the shadow table (corrected before): staged, and the rows that add or change a
      correction merged into the shadow and the wide table (none when the file was applied
      before: a no-op).
    """
    t = time.perf_counter()
    times = plan.block.times_us
    # the shadow first: it is narrow (cheap to scan), and once a file was applied it holds
    # every timestamp, so the wide table (~5 kB rows) need not be read at all
    in_shadow = np.isin(times, _existing_times(conn, shadow, times), assume_unique=True)
    in_wide = in_shadow.copy()  # a shadow row always has its wide row (one transaction)
    if not in_shadow.all():
        rest = times[~in_shadow]
        in_wide[~in_shadow] = np.isin(rest, _existing_times(conn, wide, rest), assume_unique=True)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in (TIME_COLUMN, *plan.columns))
    n = _Counts()
    fresh = _take(plan, ~in_wide)
    if fresh.block.rows:
        data = encode_copy_binary(fresh.block)
        for target in (shadow, wide):
            copy_block(conn, target, cols, data)
        n.inserted += fresh.block.rows
        n.added += fresh.block.cells
    phase["copy"] += time.perf_counter() - t
    first = _take(plan, in_wide & ~in_shadow)
    if first.block.rows:
        t = time.perf_counter()
        stage = _stage(conn, first, "first")
        conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {}, {} FROM {}").format(
            shadow, cols, sql.Identifier(TIME_COLUMN), sql.SQL(", ").join(_staged(first)), stage))
        n.added += first.block.cells
        phase["stage"] += time.perf_counter() - t
        t = time.perf_counter()
        n.updated += _update(conn, wide, first, stage)
        phase["wide"] += time.perf_counter() - t
    again = _take(plan, in_shadow)
    if not again.block.rows:
        return n
    t = time.perf_counter()
    stage = _stage(conn, again)
    phase["stage"] += time.perf_counter() - t
    t = time.perf_counter()
    source, added, changed = _shadow_delta(conn, shadow, again, stage)
    n.added += added
    n.changed += changed
    if source is not None:
        _merge(conn, shadow, again, source)
    phase["shadow"] += time.perf_counter() - t
    t = time.perf_counter()
    if source is not None:  # None: every cell is stored already (the file was applied)
        inserted, updated = _merge(conn, wide, again, source)
        n.inserted += inserted
        n.updated += updated
    phase["wide"] += time.perf_counter() - t
    return n


PART_MIN_ROWS = 20_000
"""A file is split into parallel parts only when each part gets at least this many rows."""


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
    return _take(plan, (h >= hours[0]) & (h < hours[1]))


def _write_part(
    conn: psycopg.Connection, ship: str, plans: list[TablePlan],
    targets: list[tuple[sql.Identifier, sql.Identifier]], hours: tuple[int, int],
) -> tuple[list[_Counts], dict[str, float]]:
    """One transaction writing the plans' rows within ``hours``: the (ship, hour) locks of
    those hours, in order, then ``_apply_table`` per table. Returns counts per table and
    seconds per phase."""
    phase = dict.fromkeys(("copy", "stage", "shadow", "wide"), 0.0)
    part = [_in_hours(p, hours) for p in plans]
    counts = [_Counts() for _ in plans]
    with conn.transaction():
        for start, end in hour_ranges(_block_hours(p.block.times_us for p in part)):
            lock_hours(conn, ship, start, end)
        for p, (shadow, wide), n in zip(part, targets, counts, strict=True):
            if p.block.rows:
                n += _apply_table(conn, p, shadow, wide, phase)
    return counts, phase


def _write_parts(
    conn: psycopg.Connection, connect: Callable[[], psycopg.Connection] | None, workers: int,
    ship: str, plans: list[TablePlan], targets: list[tuple[sql.Identifier, sql.Identifier]],
) -> tuple[list[_Counts], dict[str, float], int]:
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
        return [_Counts() for _ in plans], {}, 0

    if len(ranges) == 1:  # one transaction on the caller's connection, no thread
        results = [_write_part(conn, ship, plans, targets, ranges[0])]
    else:
        assert connect is not None

        def run(i: int) -> tuple[list[_Counts], dict[str, float]]:
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
        results = [f.result() for f in futures]
    counts = [_Counts() for _ in plans]
    phase: dict[str, float] = {}
    for part_counts, part_phase in results:
        for total, n in zip(counts, part_counts, strict=True):
            total += n
        for k, v in part_phase.items():
            phase[k] = phase.get(k, 0.0) + v
    return counts, phase, len(ranges)


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
    per table (``_apply_table``) COPY the timestamps new to both tables into both, the
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
    schema = settings.target_schema
    shadows = [corrections_table_name(settings, ship, p.group.number) for p in plan.tables]
    reports = [
        TableReport(settings.table_name(ship, p.group.number), p.group.number, len(p.group.channels),
                    len(p.channels), p.coverage_pct, p.block.rows, p.block.cells)
        for p in plan.tables
    ]
    phase = dict.fromkeys(("plan", "prepare", "copy", "stage", "shadow", "wide"), 0.0)
    phase["plan"] = time.perf_counter() - t0
    corr_ins = corr_upd = 0
    if dry_run:
        with conn.transaction(force_rollback=True):
            for p, rep, shadow in zip(plan.tables, reports, shadows, strict=True):
                if not p.block.rows:
                    continue
                t = time.perf_counter()
                stage = _stage(conn, p)
                phase["stage"] += time.perf_counter() - t
                t = time.perf_counter()
                _, _, ci, cu = _compare(conn, schema, shadow, p, stage)
                phase["shadow"] += time.perf_counter() - t
                t = time.perf_counter()
                rep.inserted, rep.updated, _, _ = _compare(conn, schema, rep.table, p, stage)
                phase["wide"] += time.perf_counter() - t
                corr_ins += ci
                corr_upd += cu
    else:
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
        targets = [(sql.Identifier(schema, shadow), sql.Identifier(schema, rep.table))
                   for shadow, rep in zip(shadows, reports, strict=True)]
        counts, part_phase, phase["parts"] = _write_parts(
            conn, connect, settings.correction_workers, ship, plan.tables, targets)
        phase.update(part_phase)
        for rep, n in zip(reports, counts, strict=True):
            rep.inserted, rep.updated = n.inserted, n.updated
            corr_ins += n.added
            corr_upd += n.changed
        if plan.tables:
            _record_file(conn, settings, cfile, sha256, parsed.frame.height,
                         sum(p.block.cells for p in plan.tables))
    if timings is not None:
        timings.update(phase)
    problems = parsed.skipped_rows.samples + parsed.bad_cells.samples
    if plan.unknown:
        problems.append(
            f"{cfile.key} line 1: {len(plan.unknown)} channel(s) in no channel list, not stored: "
            + ", ".join(repr(c) for c in sorted(plan.unknown)[:SAMPLES_PER_REASON])
        )
    return FileReport(
        key=cfile.key, ship=ship, sha256=sha256, dry_run=dry_run, lines=parsed.lines,
        rows_valid=parsed.frame.height, blank_lines=parsed.blank_lines,
        duplicate_identical=parsed.duplicate_identical,
        skipped_rows=dict(parsed.skipped_rows.counts), bad_cells=dict(parsed.bad_cells.counts),
        problems=problems, channels_in_file=len(parsed.channels), unknown_channels=plan.unknown,
        tables=reports, corrections_inserted=corr_ins, corrections_updated=corr_upd,
        seconds=time.perf_counter() - t0,
    )


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
    cfile = locate_file(settings, path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CorrectionFileError(f"{cfile.key}: file not found (moved or deleted?)") from None
    sha = hashlib.sha256(data).hexdigest()
    t1 = time.perf_counter()
    parsed = parse_csv(data, cfile.key, settings.csv_time_offset_hours)
    t2 = time.perf_counter()
    report = apply_parsed(conn, settings, catalog, cfile, parsed, sha, dry_run=dry_run, timings=timings,
                          connect=connect)
    if timings is not None:
        timings.update(read=t1 - t0, parse=t2 - t1)
    report.seconds = time.perf_counter() - t0
    return report


def format_report(r: FileReport) -> str:
    """Human-readable summary of one file (the CLI prints this)."""
    verb = "would insert/update" if r.dry_run else "inserted/updated"
    lines = [
        f"{r.key} -> {r.ship}{'  (dry run: nothing written)' if r.dry_run else ''}",
        f"  {r.lines:,} data lines, {r.rows_valid:,} timestamps usable, "
        f"{r.channels_in_file} channel column(s), {len(r.unknown_channels)} unknown; "
        f"{r.seconds:.2f} s",
    ]
    if r.skipped_rows:
        lines.append(f"  skipped rows: {r.skipped_rows}")
    if r.bad_cells:
        lines.append(f"  skipped cells: {r.bad_cells}")
    if r.duplicate_identical or r.blank_lines:
        lines.append(f"  identical repeated rows dropped: {r.duplicate_identical}, "
                     f"blank lines: {r.blank_lines}")
    lines.append(f"  {'table':<40} {'matched/listed':>15} {'coverage':>9} {'rows':>8} "
                 f"{'inserted':>9} {'updated':>8} {'unchanged':>9} {'cells':>10}")
    for t in r.tables:
        lines.append(
            f"  {t.table:<40} {f'{t.matched_channels}/{t.listed_channels}':>15} "
            f"{t.coverage_pct:>8.1f}% {t.rows:>8,} {t.inserted:>9,} {t.updated:>8,} "
            f"{t.unchanged:>9,} {t.cells:>10,}"
        )
    lines.append(f"  correction values {verb}: {r.corrections_inserted:,}/{r.corrections_updated:,}")
    for p in r.problems[:20]:
        lines.append(f"  ! {p}")
    if len(r.problems) > 20:
        lines.append(f"  ! … {len(r.problems) - 20} more")
    return "\n".join(lines)
