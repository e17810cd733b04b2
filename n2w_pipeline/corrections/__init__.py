"""CSV corrections: monthly files per hull, parsed in Polars and upserted into the wide tables.

Layout: ``<migration_dir>/<HULL>/<HULL>_<YYYY-MM>[_<tag>].csv``; the hull maps to a ship
through ``settings.hulls``. Header ``timestamp,<channel id>,…``; one row per timestamp; a
blank cell means "no change". Timestamps are naive wall-clock times on the created_time
clock, shifted by ``settings.csv_time_offset_hours``.

The modules, in the order a file goes through them, each usable alone:

* ``files``: ``locate_file`` / ``scan_changes`` (which files exist, are they well named,
  did their content change: sha256) and the sensor's cursor;
* ``parse``: ``parse_csv`` (pure: bytes → one Float64 column per channel, good rows only,
  every skipped row and bad cell counted with its line);
* ``plan``: ``plan_tables`` (pure: which wide table and column each channel lands in, as
  ``WideBlock``s);
* ``apply``: one table's write paths. Per channel group the cells go into the group's
  *corrections shadow table* (``<wide table>_corr``: same ``created_time`` key and column
  names as the wide table, one column per channel a correction has used, NULL = no
  correction; the durable overlay that every later narrow → wide run re-applies, so
  backfills and realtime runs never undo a correction) and into the wide table, setting
  only the file's columns to ``COALESCE(new, old)`` (a blank cell keeps the old value)
  and skipping rows that would not change. Each timestamp takes the cheapest path its
  existence allows: new to both tables → binary COPY into both; in the wide table only →
  staged, inserted into the shadow, wide row updated; in the shadow → staged, and only
  cells that add or change a correction merged into both (so applying a file twice is a
  no-op);
* ``parts``: ``apply_file`` writes a file in hour ranges (one range for a small file, up
  to ``settings.correction_workers`` ranges side by side on their own connections for a
  large one), each ONE transaction: per-(ship, hour) advisory locks on the range's
  hours, then ``apply_table`` per table. The file is then recorded in ``n2w_correction_files``
  (sha256, rows, cells). If one range fails, the others stay committed and applying the
  file again writes the rest. ``apply_file(dry_run=True)`` computes the same counts with
  read-only queries and writes nothing;
* ``report``: what applying a file did (``FileReport``) and its text (``format_report``).

A file that cannot be used at all raises ``CorrectionFileError`` (message: file, line,
reason); row-level problems skip the row (or, for a bad cell, only that cell) and are
counted. ``docs/corrections.md`` has the table of cases.
"""

from n2w_pipeline.corrections.files import (
    CorrectionFile,
    CorrectionFileError,
    FileChange,
    ScanResult,
    candidate_paths,
    dump_cursor,
    file_sha256,
    inside_migration_dir,
    key_path,
    load_cursor,
    locate_file,
    read_file,
    scan_changes,
)
from n2w_pipeline.corrections.parse import ParsedFile, Problems, parse_csv
from n2w_pipeline.corrections.parts import PART_MIN_ROWS, apply_file, apply_parsed, split_hours
from n2w_pipeline.corrections.plan import FilePlan, TablePlan, plan_tables
from n2w_pipeline.corrections.report import FileReport, TableReport, format_report

__all__ = [
    "PART_MIN_ROWS",
    "CorrectionFile",
    "CorrectionFileError",
    "FileChange",
    "FilePlan",
    "FileReport",
    "ParsedFile",
    "Problems",
    "ScanResult",
    "TablePlan",
    "TableReport",
    "apply_file",
    "apply_parsed",
    "candidate_paths",
    "dump_cursor",
    "file_sha256",
    "format_report",
    "inside_migration_dir",
    "key_path",
    "load_cursor",
    "locate_file",
    "parse_csv",
    "plan_tables",
    "read_file",
    "scan_changes",
    "split_hours",
]
