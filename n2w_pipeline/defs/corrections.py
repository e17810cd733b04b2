"""CSV corrections in Dagster: one dynamic partition per file, a file sensor, one asset.

The sensor watches ``N2W_MIGRATION_DIR``; every new or rewritten file (by sha256) is
registered as a partition ``HULL/name.csv`` and gets a run whose run_key carries the hash and
the file's version (its n-th content), so a rewritten file is applied again — also when it
returns to an earlier content (A → B → A) — and an unchanged one never. A partition key that
does not name a file inside the folder (``..``, an absolute path, a symlink leading out, e.g.
typed into the UI) is refused by the asset and named in every tick's log. Badly placed or named
files are logged on every tick (and in the skip reason) and never block the others; a
file whose content is rejected fails its own run with a message naming file, line and
reason.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.config import Settings
from n2w_pipeline.corrections import (
    CorrectionFileError,
    FileReport,
    apply_file,
    dump_cursor,
    key_path,
    load_cursor,
    scan_changes,
)
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.instance import DB_POOL
from n2w_pipeline.retries import with_retries

CORRECTIONS_GROUP = "corrections"
correction_files = dg.DynamicPartitionsDefinition(name="correction_files")


class CorrectionConfig(dg.Config):
    """Run config of the correction asset."""

    dry_run: bool = Field(
        default=False,
        description="Report per table what the file would insert and update, its channel "
        "coverage, unknown channels and bad rows, and write nothing.",
    )


def report_metadata(r: FileReport) -> dict[str, Any]:
    """The per-file numbers a person checks after a correction run."""
    tables_md = "| table | matched / listed | coverage | rows | inserted | updated | unchanged | cells |\n"
    tables_md += "|---|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {t.table} | {t.matched_channels} / {t.listed_channels} | {t.coverage_pct:.1f} % | "
        f"{t.rows:,} | {t.inserted:,} | {t.updated:,} | {t.unchanged:,} | {t.cells:,} |"
        for t in r.tables
    )
    md: dict[str, Any] = {
        "file": r.key,
        "ship": r.ship,
        "sha256": r.sha256,
        "dry_run": r.dry_run,
        "rows_read": r.lines,
        "rows_usable": r.rows_valid,
        "rows_inserted": r.rows_inserted,
        "rows_updated": r.rows_updated,
        "rows_unchanged": r.rows_unchanged,
        "cells_written_per_table": dg.MetadataValue.json({t.table: t.cells for t in r.tables}),
        "coverage_pct_per_table": dg.MetadataValue.json({t.table: t.coverage_pct for t in r.tables}),
        "tables": dg.MetadataValue.md(tables_md),
        "skipped_rows_by_reason": dg.MetadataValue.json(r.skipped_rows),
        "skipped_rows_total": sum(r.skipped_rows.values()),
        "skipped_cells_by_reason": dg.MetadataValue.json(r.bad_cells),
        "identical_repeated_rows": r.duplicate_identical,
        "blank_lines": r.blank_lines,
        "unknown_channels": dg.MetadataValue.json(r.unknown_channels),
        "correction_values_inserted": r.corrections_inserted,
        "correction_values_updated": r.corrections_updated,
        "seconds": dg.MetadataValue.float(round(r.seconds, 3)),
    }
    if r.problems:
        md["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in r.problems[:50]))
    return md


def build_correction_asset(settings: Settings, catalog: ChannelCatalog) -> dg.AssetsDefinition:
    @dg.asset(
        name="csv_corrections",
        partitions_def=correction_files,
        group_name=CORRECTIONS_GROUP,
        kinds={"postgres", "polars", "csv"},
        owners=["team:n2w"],
        pool=DB_POOL,
        output_required=False,
        description=(
            f"Correction files {settings.migration_dir}/<HULL>/<HULL>_<YYYY-MM>.csv applied to the "
            "wide tables: only the file's channels, blank cells change nothing, missing timestamps "
            "become rows. Values are also kept in a shadow table per wide table (<table>_corr), "
            "which every later narrow → wide run lays over the narrow values, so backfills and "
            "realtime runs keep them."
        ),
    )
    def csv_corrections(context: dg.AssetExecutionContext, config: CorrectionConfig, n2w_db: N2WDatabase):
        """Apply one correction file (the partition), or dry-run it.

        Locks every (ship, hour) the file touches, upserts its non-blank cells into the
        corrections shadow tables and the wide tables, in one transaction per hour range (a
        large file is written in N2W_CORRECTION_WORKERS ranges side by side); applying the
        same file again changes nothing, and completes a run that failed half-way.
        A dry run records an observation with the same numbers and no materialisation.
        """
        url = n2w_db.resolve_url(settings)

        def apply(path: Path) -> FileReport:
            with psycopg.connect(url, autocommit=True) as conn:
                return apply_file(conn, settings, catalog, path, dry_run=config.dry_run,
                                  connect=lambda: psycopg.connect(url, autocommit=True))

        try:
            path = key_path(settings, context.partition_key)  # a key typed in the UI: checked
            # a transient database error: the file again (idempotent), on new connections
            report = with_retries(settings, f"correction file {context.partition_key}",
                                  lambda: apply(path), context.log)
        except CorrectionFileError as e:
            raise dg.Failure(description=f"rejected: {e}", metadata={"file": context.partition_key},
                             allow_retries=False) from None
        for p in report.problems[:20]:
            context.log.warning(p)
        md = report_metadata(report)
        if config.dry_run:
            context.log.info(f"dry run of {report.key}: nothing written")
            context.log_event(dg.AssetObservation(
                asset_key=context.asset_key, partition=context.partition_key, metadata=md))
            return
        yield dg.MaterializeResult(metadata=md)

    return csv_corrections


def unsafe_partitions(instance: dg.DagsterInstance, settings: Settings) -> list[str]:
    """Problems of partition keys (added in the UI, say) that do not name a file inside
    N2W_MIGRATION_DIR: the asset refuses to run them; the sensor names them every tick."""
    problems = []
    for key in instance.get_dynamic_partitions(correction_files.name):
        try:
            key_path(settings, key)
        except CorrectionFileError as e:
            problems.append(f"partition {key!r} refused: {e}")
    return problems


def build_correction_sensor(settings: Settings, asset: dg.AssetsDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name="correction_files_sensor",
        target=asset,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New or changed CSV files (sha256) under {settings.migration_dir}: one "
        "partition and one run of csv_corrections per file version.",
    )
    def correction_files_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        scan = scan_changes(settings, load_cursor(context.cursor))
        scan.problems += unsafe_partitions(context.instance, settings)
        for p in scan.problems:
            context.log.warning(f"not applied: {p}")
        if scan.deferred:
            context.log.info(f"{scan.deferred} file(s) left for the next tick (hashing time budget)")
        if not scan.changed:
            reason = f"no new or changed files ({scan.unchanged} unchanged)"
            if scan.problems:
                reason += f"; {len(scan.problems)} bad file(s): " + "; ".join(scan.problems)
            if context.cursor != dump_cursor(scan.cursor):
                # files removed (or only stat changed): store the cursor without a run
                return dg.SensorResult(skip_reason=reason, cursor=dump_cursor(scan.cursor))
            return dg.SkipReason(reason)
        keys = [c.file.key for c in scan.changed]
        new = [k for k in keys if not context.instance.has_dynamic_partition(correction_files.name, k)]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(partition_key=c.file.key, run_key=f"{c.file.key}@{c.sha256[:16]}#{c.version}",
                              tags={"n2w/sha256": c.sha256, "n2w/ship": c.file.ship})
                for c in scan.changed
            ],
            dynamic_partitions_requests=[correction_files.build_add_request(new)] if new else [],
            cursor=dump_cursor(scan.cursor),
        )

    return correction_files_sensor
