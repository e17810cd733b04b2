"""Shared pieces of the ``n2w`` commands: time arguments, progress bar, backfill runner."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Sequence

from n2w_pipeline.config import Settings

PROGRESS_LOGGER = "n2w.progress"


def parse_time(text: str) -> dt.datetime:
    """``2025-03-01``, ``2025-03-01T06:00`` or ``2025-03-01 06:00`` (naive, created_time clock)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date/time: {text!r} (use 2025-03-01 or 2025-03-01T06:00)"
        ) from None
    if value.tzinfo is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a naive time on the created_time clock")
    return value


def hour_floor(value: dt.datetime) -> dt.datetime:
    return value.replace(minute=0, second=0, microsecond=0)


class ProgressBar(logging.Handler):
    """Draws the wide assets' progress records (logger ``n2w.progress``) as a bar."""

    def __init__(self, stream=sys.stderr) -> None:  # noqa: ANN001
        super().__init__()
        self.stream = stream
        self.tty = stream.isatty()

    def emit(self, record: logging.LogRecord) -> None:
        done = getattr(record, "n2w_done", None)
        total = getattr(record, "n2w_total", None)
        if done is None or not total:
            return
        width = 30
        filled = int(width * done / total)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done:,.0f}/{total:,} ship-hours  "
            f"{record.n2w_rows:,} rows  {record.n2w_rate:,.0f} rows/s  ETA {record.n2w_eta:,.0f} s"
        )
        if self.tty:
            self.stream.write("\r" + line)
            if done >= total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_backfill(
    settings: Settings,
    ships: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    quiet: bool = False,
) -> list[dict]:
    """Materialise the wide assets for ``ships`` × [start, end) through Dagster, in runs
    of at most ``settings.run_hours`` hours per ship, recorded in the n2w instance.

    Returns one summary per run: ship, window, seconds, narrow rows and metadata.
    """
    import dagster as dg

    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.defs.partitions import partition_key
    from n2w_pipeline.defs.resources import N2WDatabase
    from n2w_pipeline.defs.wide_assets import build_wide_assets
    from n2w_pipeline.instance import apply_dagster_env

    env = apply_dagster_env(settings)
    catalog = load_catalog(settings.channel_lists_dir)
    assets = build_wide_assets(settings, catalog)
    bar = ProgressBar()
    plog = logging.getLogger(PROGRESS_LOGGER)
    plog.setLevel(logging.INFO)
    plog.propagate = False
    if not quiet:
        plog.addHandler(bar)
    summaries = []
    step = dt.timedelta(hours=settings.run_hours)
    try:
        with dg.DagsterInstance.get() as instance:
            for ship in ships:
                cursor = start
                while cursor < end:
                    stop = min(cursor + step, end)
                    t0 = time.perf_counter()
                    result = dg.materialize(
                        [assets],
                        instance=instance,
                        resources={"n2w_db": N2WDatabase(url=env["N2W_DATABASE_URL"])},
                        tags={
                            "dagster/asset_partition_range_start": partition_key(ship, cursor),
                            "dagster/asset_partition_range_end": partition_key(
                                ship, stop - dt.timedelta(hours=1)
                            ),
                            "n2w/launched_by": "n2w backfill",
                        },
                        raise_on_error=True,
                        # the bar shows progress; Dagster's console logger only warnings
                        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                    )
                    mats = result.asset_materializations_for_node("narrow_to_wide")
                    md = {}
                    for m in mats:
                        md.setdefault(m.asset_key.to_user_string(),
                                      {k: v.value for k, v in m.metadata.items()})
                    summaries.append({
                        "ship": ship, "start": cursor, "end": stop, "run_id": result.run_id,
                        "seconds": time.perf_counter() - t0, "assets": md,
                    })
                    cursor = stop
    finally:
        plog.removeHandler(bar)
    return summaries
