"""The wide tables as Dagster assets: one multi-asset, one asset per channel group."""


import datetime as dt
import logging
import re
import resource
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.checks import recheck_results, run_check_results, run_check_specs
from n2w_pipeline.defs.partitions import fleet_windows, ship_windows, wide_partitions
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.instance import DB_POOL
from n2w_pipeline.lanes import PIPELINE_LANES, LanePool
from n2w_pipeline.materialize import WindowStats, materialize_window
from n2w_pipeline.pivot import ChannelCodes
from n2w_pipeline.priority import lower_priority
from n2w_pipeline.retries import with_retries

WIDE_GROUP = "wide_tables"
progress_log = logging.getLogger("n2w.progress")  # drawn as a bar by `n2w backfill`


def wide_asset_key(group: ChannelGroup) -> dg.AssetKey:
    return dg.AssetKey(group.asset_name)


NARROW_KEY = dg.AssetKey("narrow_timeseries")


def narrow_source_spec(settings: Settings) -> dg.AssetSpec:
    """The narrow table, shown upstream of the wide assets (written by the ships, not n2w)."""
    return dg.AssetSpec(
        key=NARROW_KEY,
        group_name="sources",
        kinds={"postgres"},
        owners=["team:n2w"],
        description=(
            f"The narrow time-series table {settings.source_schema}.{settings.source_table}: one "
            "row per ship, channel and 15-second sample, written by the fleet's ingestion, "
            "not by n2w. The realtime sensor watches it for new rows."
        ),
        metadata={"table": f"{settings.source_schema}.{settings.source_table}"},
    )


def _spec(settings: Settings, group: ChannelGroup) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=wide_asset_key(group),
        deps=[NARROW_KEY],
        group_name=WIDE_GROUP,
        kinds={"postgres", "polars"},
        owners=["team:n2w"],
        description=(
            f"Channel group {group.number} ({group.name.replace('_', ' ')}): one row per "
            f"15-second timestamp, one double-precision column per channel of "
            f"{group.path.name} ({len(group.channels)} channels), per ship in "
            f"{settings.target_schema}.{settings.table_name('{ship}', group.number)}. "
            "Built from the narrow table (value rule: Decimal, Integer, Boolean as 1/0, "
            "numeric String; anything else stays NULL and is counted) plus CSV corrections."
        ),
        metadata={
            "table_pattern": f"{settings.target_schema}.{settings.table_pattern}",
            "channel_list": str(group.path),
            "column_count": len(group.columns) + 1,
            "channel_count": len(group.channels),
            "long_channel_ids": len(group.long_ids),
        },
    )


def _metadata(group: ChannelGroup, settings: Settings, total: WindowStats, wall: float,
              windows: list[tuple[str, str, str]]) -> dict[str, Any]:
    g = total.groups.get(group.number)
    rows = g.rows if g else 0
    cells = g.cells if g else 0
    mine = set(group.channels)
    issues: dict[str, int] = {}
    per_channel: dict[str, int] = {}
    for (ch, reason), n in total.issues.items():
        if ch in mine:
            issues[reason] = issues.get(reason, 0) + n
            per_channel[ch] = per_channel.get(ch, 0) + n
    worst = sorted(per_channel.items(), key=lambda kv: -kv[1])[:10]
    unknown_rows = sum(total.unknown.values())
    md: dict[str, Any] = {
        "narrow_rows_read": dg.MetadataValue.int(total.narrow_rows),
        "wide_rows_written": rows,
        "rows_inserted": g.inserted if g else 0,
        "rows_updated": g.updated if g else 0,
        "rows_deleted": g.deleted if g else 0,
        "cells_filled": cells,
        "filled_pct": dg.MetadataValue.float(
            round(100.0 * cells / (rows * len(group.columns)), 3) if rows else 0.0
        ),
        "null_values_by_reason": dg.MetadataValue.json(issues),
        "null_values_total": sum(issues.values()),
        "unknown_channel_rows_skipped": unknown_rows,
        "unknown_channels_sample": dg.MetadataValue.json(sorted(total.unknown)[:10]),
        "correction_values_applied": total.corrections,
        "narrow_rows_per_s": dg.MetadataValue.float(round(total.narrow_rows / wall, 1) if wall else 0.0),
        "seconds": dg.MetadataValue.float(round(wall, 3)),
        "peak_rss_mb": dg.MetadataValue.float(peak_rss_mb()),
        "windows": dg.MetadataValue.json([list(w) for w in windows]),
        "tables": dg.MetadataValue.json(
            sorted({settings.table_name(ship, group.number) for ship, _, _ in windows})
        ),
    }
    if worst:
        md["channels_with_null_values"] = dg.MetadataValue.md(
            "| channel | NULL values |\n|---|---|\n"
            + "\n".join(f"| `{ch}` | {n} |" for ch, n in worst)
        )
    return md


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (the step's process: a run worker, a
    Celery worker or the `n2w backfill` process; Linux reports ru_maxrss in kB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


_PROGRESS = re.compile(r": slice \d+/\d+, ([\d,.]+)/[\d,]+ ship-hours, ([\d,]+) narrow rows, ")


def parse_progress(message: str) -> tuple[float, int] | None:
    """(ship-hours done, narrow rows) from a run-log line of ``ProgressReporter``, else None:
    how `n2w backfill` follows runs whose steps execute on Celery workers."""
    m = _PROGRESS.search(message or "")
    if m is None:
        return None
    return float(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


class ProgressReporter:
    """Logs rows done, rows/s and ETA after every slice (and feeds `n2w backfill`'s bar,
    through the ``n2w.progress`` logger in-process or ``parse_progress`` from the run log)."""

    def __init__(self, log: logging.Logger | dg.DagsterLogManager, total_hours: int) -> None:
        self.log = log
        self.total_hours = total_hours
        self.t0 = time.perf_counter()
        self.hours_before = 0.0
        self.rows_before = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def for_window(self, ships: tuple[str, ...], start: dt.datetime, end: dt.datetime):  # noqa: ANN201
        window_hours = len(ships) * (end - start).total_seconds() / 3600  # ship-hours
        ship = ships[0] if len(ships) == 1 else f"{len(ships)} ships"

        def progress(i: int, n: int, st: WindowStats) -> None:
            done = self.hours_before + window_hours * i / n
            rows = self.rows_before + st.narrow_rows
            elapsed = max(self.elapsed, 1e-9)
            eta = elapsed / done * (self.total_hours - done) if done else 0.0
            self.log.info(
                f"{ship} {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}: slice {i}/{n}, "
                f"{done:,.0f}/{self.total_hours:,} ship-hours, {rows:,} narrow rows, "
                f"{rows / elapsed:,.0f} rows/s, ETA {eta:,.0f} s"
            )
            progress_log.info(
                "progress",
                extra={"n2w_done": done, "n2w_total": self.total_hours, "n2w_rows": rows,
                       "n2w_rate": rows / elapsed, "n2w_eta": eta},
            )

        return progress

    def window_done(self, stats: WindowStats, ships: tuple[str, ...], start: dt.datetime,
                    end: dt.datetime) -> None:
        self.hours_before += len(ships) * (end - start).total_seconds() / 3600
        self.rows_before += stats.narrow_rows


def _warn_one_ship_reads(context: dg.AssetExecutionContext, source: str, settings: Settings) -> None:
    """A run of one ship on a server that cannot find a ship's rows by index: say so, once.
    Advisory only: a database that cannot be asked now is left to the slices' retries."""
    import psycopg

    from n2w_pipeline.source_indexes import one_ship_read_problem

    try:
        with psycopg.connect(source, autocommit=True, connect_timeout=10) as conn:
            problem = one_ship_read_problem(conn, settings)
    except psycopg.Error:
        return
    if problem:
        context.log.warning(problem)


def celery_queue_tag(settings: Settings) -> dict[str, str] | None:
    """dagster-celery's queue tag for the step, when N2W_CELERY_QUEUE is not its default."""
    if settings.celery_queue == "dagster":
        return None
    return {"dagster-celery/queue": settings.celery_queue}


def build_wide_assets(settings: Settings, catalog: ChannelCatalog) -> dg.AssetsDefinition:
    groups_by_key = {wide_asset_key(g): g for g in catalog.groups}
    partitions = wide_partitions(settings)

    @dg.multi_asset(
        name="narrow_to_wide",
        specs=[_spec(settings, g) for g in catalog.groups],
        check_specs=run_check_specs(catalog) if settings.checks_in_runs else None,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(settings.run_hours),
        can_subset=True,
        pool=DB_POOL,
        op_tags=celery_queue_tag(settings),
    )
    def narrow_to_wide(
        context: dg.AssetExecutionContext, n2w_db: N2WDatabase
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Pivot the narrow rows of the run's (ship, hour) partitions into the wide tables.

        Reads the run's hours in slices of N2W_SLICE_HOURS ship-hours through COPY/Arrow
        (ships that share the run's hours in one read), pivots with NumPy and upserts each
        slice in one transaction under per-(ship, hour) locks, so any re-run, range run or
        concurrent run of the same hours leaves the same tables. A slice that meets a
        transient database error (lost connection, server restart, deadlock, …) is rolled
        back and done again on new connections, with backoff and jitter, up to
        N2W_DB_RETRIES times.
        Then the asset checks (n2w_pipeline.checks) compare exactly these windows of the wide tables
        with the narrow rows the run read (the on-demand check job counts the narrow table).
        """
        groups = [groups_by_key[k] for k in sorted(context.selected_asset_keys) if k in groups_by_key]
        url = n2w_db.resolve_url(settings)
        source = n2w_db.resolve_source_url(settings)
        if not groups:  # checks only (the Checks tab's Execute): evaluate them, write nothing
            yield from recheck_results(context, url, settings, catalog, partitions, source_url=source)
            return
        if context.run.tags.get("dagster/backfill") and settings.executor != "celery":
            # this process ends with the run (a Celery worker would keep it for later tasks)
            nice = lower_priority(settings.backfill_nice)
            if nice is not None:
                context.log.info(f"backfill run: CPU niceness {nice} (N2W_BACKFILL_NICE): realtime first")
        windows = ship_windows(partitions, context.partition_keys)
        hours = sum(int((e - s).total_seconds() // 3600) for _, s, e in windows)
        context.log.info(
            f"{len(windows)} window(s), {hours} ship-hour(s), groups "
            f"{[g.number for g in groups]}, slices of {settings.slice_hours} h"
        )
        reporter = ProgressReporter(context.log, hours)
        blocks = fleet_windows(windows)
        if any(len(ships) == 1 for ships, _, _ in blocks):
            _warn_one_ship_reads(context, source, settings)
        total: WindowStats | None = None
        # one set of connections for every window of the run (a reader costs ~0.2 s to open)
        with LanePool(url, source, settings, ChannelCodes.from_catalog(catalog).channels,
                      settings.pipeline_lanes or PIPELINE_LANES) as lanes:
            for ships, start, end in blocks:
                stats = materialize_window(
                    url, settings, catalog, ships, start, end, groups,
                    reporter.for_window(ships, start, end), source_url=source, log=context.log,
                    connections=lanes,
                )
                reporter.window_done(stats, ships, start, end)
                if total is None:
                    total = stats
                else:
                    total.merge(stats)
        wall = reporter.elapsed
        assert total is not None
        window_list = [(s, a.isoformat(), b.isoformat()) for s, a, b in windows]
        if total.unknown:
            context.log.warning(
                f"skipped {sum(total.unknown.values()):,} narrow rows of {len(total.unknown)} "
                f"channel(s) in no channel list, e.g. {sorted(total.unknown)[:5]}"
            )
        for g in groups:
            yield dg.MaterializeResult(
                asset_key=wide_asset_key(g),
                metadata=_metadata(g, settings, total, wall, window_list),
            )
        checks = with_retries(settings, "asset checks", lambda: list(run_check_results(  # read-only
            context, url, settings, groups, windows, total.narrow_hours, source_url=source)), context.log)
        yield from checks

    return narrow_to_wide
