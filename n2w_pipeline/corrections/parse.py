"""Parsing a correction file (pure: bytes → ``ParsedFile``, no I/O).

Header ``timestamp,<channel id>,…``; one row per timestamp; a blank cell means "no
change". Timestamps are naive wall-clock times on the created_time clock, shifted by
``settings.csv_time_offset_hours``. The result holds one Float64 column per channel and
the good rows only; every skipped row and bad cell is counted with its line.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from n2w_pipeline.channels import TIME_COLUMN
from n2w_pipeline.corrections.files import CorrectionFileError
from n2w_pipeline.hours import HOUR_US

TIMESTAMP_HEADER = "timestamp"
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")
SAMPLES_PER_REASON = 10
_BOM = b"\xef\xbb\xbf"

# row-level reasons (the row is skipped) and cell-level reasons (only the cell is skipped)
ROW_REASONS = ("unparsable_timestamp", "too_many_fields", "duplicate_timestamp_conflict")
CELL_REASONS = ("non_numeric", "non_finite")


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


@dataclass(frozen=True)
class _Layout:
    """The header: ``names`` are its stripped fields; Polars reads field i as column ``c<i>``."""

    names: list[str]
    ts: str  # the timestamp column
    chan_cols: list[str]  # the columns with a channel id, in file order

    @property
    def cols(self) -> list[str]:
        return [f"c{i}" for i in range(len(self.names))]

    def channel(self, col: str) -> str:
        return self.names[int(col[1:])]


def parse_csv(data: bytes, name: str, offset_hours: float = 0.0) -> ParsedFile:
    """Parse one correction file (bytes) into a ``ParsedFile``. Pure: no I/O.

    Rejected (``CorrectionFileError``): empty file, not UTF-8, no ``timestamp`` column,
    two columns with the same channel id (after stripping spaces), a column without a
    channel id that has values. Skipped rows (counted, with lines): unparsable or missing
    timestamp, more fields than the header, a timestamp repeated with different values
    (every row of that timestamp). Skipped cells: non-numeric or non-finite values.
    Dropped silently but counted: blank lines, identical repeats of a row.
    """
    data, text = _decode(data, name)
    layout = _layout(name, _header(name, data))
    raw, ragged = _read(data, text, layout, name)
    del text
    parsed = ParsedFile(name, [], pl.DataFrame(), raw.height)
    raw = _drop_blank_lines(raw, layout, parsed)
    raw = _drop_ragged(raw, ragged, layout, parsed)
    _refuse_unnamed_values(raw, layout, name)
    rows = _timestamps(raw, layout, offset_hours, parsed)
    nums = _dedupe(_numbers(rows, layout, parsed), layout, parsed)
    parsed.frame = nums.sort(TIME_COLUMN).select(
        TIME_COLUMN, *[pl.col(c).alias(layout.channel(c)) for c in layout.chan_cols]
    )
    parsed.channels = [layout.channel(c) for c in layout.chan_cols]
    return parsed


def _decode(data: bytes, name: str) -> tuple[bytes, str]:
    """The file without its BOM, and as text; an empty or non-UTF-8 file is rejected."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data or data.isspace():
        raise CorrectionFileError(f"{name} line 1: empty file (no header line)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CorrectionFileError(f"{name} line {line}: not UTF-8 text (byte {e.start + 1})") from None
    return data, text


def _header(name: str, data: bytes) -> list[str]:
    end = data.find(b"\n")
    first = (data if end < 0 else data[:end]).rstrip(b"\r")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorrectionFileError(f"{name} line 1: not UTF-8 (byte {e.start + 1} of the header)") from None
    return [c.strip() for c in next(csv.reader([text]))]


def _layout(name: str, names: list[str]) -> _Layout:
    """Check the header: one ``timestamp`` column, no channel id twice."""
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
    chan_cols = [f"c{i}" for i, n in enumerate(names) if i != ts_cols[0] and n]
    return _Layout(names, f"c{ts_cols[0]}", chan_cols)


def _read(data: bytes, text: str, layout: _Layout, name: str) -> tuple[pl.DataFrame, list[int]]:
    """Every data line as strings, with its ``line`` number and the timestamp stripped
    (blank → NULL), and the lines with more fields than the header (read truncated)."""
    schema = dict.fromkeys(layout.cols, pl.String)
    ragged: list[int] = []
    try:
        raw = pl.read_csv(data, has_header=False, skip_rows=1, schema=schema)
    except pl.exceptions.ComputeError as e:
        if "more fields" not in str(e):
            raise CorrectionFileError(f"{name}: cannot be read as CSV: {e}") from None
        ragged = _too_many_fields(text, len(layout.names))
        raw = pl.read_csv(data, has_header=False, skip_rows=1, schema=schema, truncate_ragged_lines=True)
    raw = raw.with_row_index("line", offset=2)
    return raw.with_columns(pl.col(layout.ts).str.strip_chars().replace("", None)), ragged


def _too_many_fields(text: str, width: int) -> list[int]:
    """Line numbers (1-based) of rows with more fields than the header (slow path)."""
    out = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if lineno > 1 and len(row) > width:
            out.append(lineno)
    return out


def _drop_blank_lines(raw: pl.DataFrame, layout: _Layout, parsed: ParsedFile) -> pl.DataFrame:
    """Drop (and count) blank lines: no timestamp and nothing else (checked only on rows
    without a timestamp)."""
    no_ts = raw.filter(pl.col(layout.ts).is_null())
    if no_ts.height:
        empty = no_ts.select("line", pl.all_horizontal(
            [pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") for c in layout.cols]).alias("blank"))
        blank_lines = empty.filter("blank").get_column("line")
        parsed.blank_lines = blank_lines.len()
        if blank_lines.len():
            raw = raw.filter(~pl.col("line").is_in(blank_lines.implode()))
    return raw


def _drop_ragged(raw: pl.DataFrame, ragged: list[int], layout: _Layout, parsed: ParsedFile) -> pl.DataFrame:
    """Skip (and count) the rows with more fields than the header."""
    if not ragged:
        return raw
    bad = raw.filter(pl.col("line").is_in(ragged))
    width = len(layout.names)
    parsed.skipped_rows.add(
        "too_many_fields", bad.height,
        (f"{parsed.name} line {ln}: more fields than the {width} header columns" for ln in bad["line"]),
    )
    return raw.filter(~pl.col("line").is_in(ragged))


def _refuse_unnamed_values(raw: pl.DataFrame, layout: _Layout, name: str) -> None:
    """A column without a channel id may exist (a trailing comma) but hold no value."""
    for i, n in enumerate(layout.names):
        if n:
            continue
        hit = raw.filter(pl.col(layout.cols[i]).str.strip_chars().replace("", None).is_not_null())
        if hit.height:
            raise CorrectionFileError(
                f"{name} line {hit['line'][0]}: column {i + 1} has no channel id in the header "
                "but holds values"
            )


def _timestamps(raw: pl.DataFrame, layout: _Layout, offset_hours: float, parsed: ParsedFile) -> pl.DataFrame:
    """The rows whose timestamp parses, with ``created_time`` (offset applied); the others
    are skipped and counted."""
    ts = layout.ts
    offset = pl.duration(microseconds=round(offset_hours * HOUR_US))
    when = pl.coalesce([pl.col(ts).str.to_datetime(f, strict=False, time_unit="us") for f in TIME_FORMATS])
    raw = raw.with_columns((when + offset).alias(TIME_COLUMN))
    bad_ts = raw.filter(pl.col(TIME_COLUMN).is_null())
    parsed.skipped_rows.add(
        "unparsable_timestamp", bad_ts.height,
        (f"{parsed.name} line {ln}: unparsable timestamp {v!r} (expected naive YYYY-MM-DD HH:MM[:SS])"
         if v is not None else f"{parsed.name} line {ln}: missing timestamp"
         for ln, v in bad_ts.select("line", ts).iter_rows()),
    )
    return raw.filter(pl.col(TIME_COLUMN).is_not_null())


def _numbers(rows: pl.DataFrame, layout: _Layout, parsed: ParsedFile) -> pl.DataFrame:
    """``line``, ``created_time``, ``ts_text`` and the channel cells as Float64: numeric and
    finite, else NULL (counted as bad cells).

    The fast cast needs no strip; only columns where it lost values (spaces, or bad cells)
    take the slow path.
    """
    chan_cols = layout.chan_cols
    nums = rows.select(
        "line", TIME_COLUMN, pl.col(layout.ts).alias("ts_text"),
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
    if not suspect:
        return nums
    bad_cells = _bad_cells(rows, nums, suspect)
    for reason in CELL_REASONS:
        hits = bad_cells.filter(pl.col("reason") == reason)
        parsed.bad_cells.add(
            reason, hits.height,
            (f"{parsed.name} line {ln}: {reason.replace('_', '-')} value {v!r} for {layout.channel(c)!r} "
             "(cell skipped)" for ln, c, v, _ in hits.head(SAMPLES_PER_REASON).iter_rows()),
        )
    return nums.with_columns(
        [pl.when(pl.col(c).is_finite()).then(pl.col(c)).alias(c) for c in suspect]
    )


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


def _dedupe(nums: pl.DataFrame, layout: _Layout, parsed: ParsedFile) -> pl.DataFrame:
    """Duplicate timestamps: identical repeats collapse (counted), conflicting ones skip
    every row of that timestamp."""
    chan_cols = layout.chan_cols
    dup = nums.get_column(TIME_COLUMN).is_duplicated()
    if not dup.any():
        return nums
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
            (f"{parsed.name} lines {', '.join(map(str, lns))}: timestamp {text!r} repeated with "
             "different values (all its rows skipped)" for _, text, lns in first_lines.iter_rows()),
        )
        distinct = distinct.filter(~pl.col(TIME_COLUMN).is_in(conflict_ts.implode()))
    return pl.concat([single, distinct])
