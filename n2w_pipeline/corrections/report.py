"""What applying (or dry-running) a file did: per-table and per-file counts, and their text."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from n2w_pipeline.corrections.parse import SAMPLES_PER_REASON, ParsedFile
from n2w_pipeline.corrections.plan import FilePlan


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


def file_report(
    key: str, ship: str, sha256: str, parsed: ParsedFile, plan: FilePlan, tables: list[TableReport],
    *, dry_run: bool, corrections: tuple[int, int], seconds: float,
) -> FileReport:
    """The report of a parsed, planned and applied file: its problems are the samples of
    skipped rows and bad cells, then one line naming the channels in no channel list.
    ``corrections`` = (correction cells newly set, cells changed)."""
    problems = parsed.skipped_rows.samples + parsed.bad_cells.samples
    if plan.unknown:
        problems.append(
            f"{key} line 1: {len(plan.unknown)} channel(s) in no channel list, not stored: "
            + ", ".join(repr(c) for c in sorted(plan.unknown)[:SAMPLES_PER_REASON])
        )
    return FileReport(
        key=key, ship=ship, sha256=sha256, dry_run=dry_run, lines=parsed.lines,
        rows_valid=parsed.frame.height, blank_lines=parsed.blank_lines,
        duplicate_identical=parsed.duplicate_identical,
        skipped_rows=dict(parsed.skipped_rows.counts), bad_cells=dict(parsed.bad_cells.counts),
        problems=problems, channels_in_file=len(parsed.channels), unknown_channels=plan.unknown,
        tables=tables, corrections_inserted=corrections[0], corrections_updated=corrections[1],
        seconds=seconds,
    )


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
