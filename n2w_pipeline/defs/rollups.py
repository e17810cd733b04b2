"""Rollups in Dagster: hourly and daily aggregates per ship and channel, day × ship partitions.

Two assets, ``rollup_hourly`` (downstream of every wide asset: a day reads its 24 wide
hours) and ``rollup_daily`` (downstream of ``rollup_hourly``), built by one multi-asset so
a run refreshes both. Each carries a ``rollup_reconciliation`` check that recomputes the
aggregates from the wide rows independently and compares them cell by cell.
"""

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import psycopg

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.automation import WATERMARK, wide_watermark
from n2w_pipeline.defs.partitions import day_partitions, hours_to_days, split_day_key
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.defs.wide_assets import wide_asset_key
from n2w_pipeline.instance import DB_POOL
from n2w_pipeline.storage.rollups import (
    ROLLUP_DAILY,
    ROLLUP_HOURLY,
    RollupCheck,
    ensure_rollup_tables,
    reconcile,
    refresh_day,
)

ROLLUP_GROUP = "rollups"
HOURLY_KEY = dg.AssetKey("rollup_hourly")
DAILY_KEY = dg.AssetKey("rollup_daily")
CHECK_NAME = "rollup_reconciliation"
CORRECTIONS_KEY = dg.AssetKey("csv_corrections")
RUN_DAYS = 31
"""Day partitions per backfill run (one ship × up to a month of days)."""


def rollup_specs(settings: Settings, catalog: ChannelCatalog,
                 automation: dg.AutomationCondition | None = None) -> list[dg.AssetSpec]:
    s = settings.target_schema
    common: dict[str, Any] = {"group_name": ROLLUP_GROUP, "kinds": {"postgres"}, "owners": ["team:n2w"],
                              "automation_condition": automation}
    return [
        dg.AssetSpec(
            key=HOURLY_KEY,
            deps=[dg.AssetDep(wide_asset_key(g), partition_mapping=hours_to_days()) for g in catalog.groups],
            description=(
                f"Hourly aggregates of every channel of every wide table in {s}.{ROLLUP_HOURLY}: one row per "
                "(ship_id, channel_id, bucket) with n (non-NULL values), sum, avg, min, max. Dashboards "
                "read these instead of the wide rows (see docs/storage.md)."
            ),
            metadata={"table": f"{s}.{ROLLUP_HOURLY}"},
            **common,
        ),
        dg.AssetSpec(
            key=DAILY_KEY,
            deps=[HOURLY_KEY],
            description=(
                f"Daily aggregates in {s}.{ROLLUP_DAILY}, computed from the day's hourly rollups "
                "(n and sum add up, min/min, max/max, avg = sum / n)."
            ),
            metadata={"table": f"{s}.{ROLLUP_DAILY}"},
            **common,
        ),
    ]


def _check_result(key: dg.AssetKey, checks: list[RollupCheck], days: list[tuple[str, dt.date]]
                  ) -> dg.AssetCheckResult:
    diffs = sum(c.differences for c in checks)
    compared = sum(c.rows_compared for c in checks)
    first = [d for c in checks for d in c.first][:10]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_NAME,
        passed=diffs == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{compared:,} rollup rows equal an independent aggregate of the wide rows"
                     if not diffs else f"{diffs:,} of {compared:,} rollup rows differ from the wide rows"),
        metadata={
            "rows_compared": compared,
            "differences": diffs,
            "first_differences": dg.MetadataValue.json(first),
            "days": dg.MetadataValue.json([f"{ship} {day}" for ship, day in days]),
        },
    )


def build_rollup_assets(settings: Settings, catalog: ChannelCatalog,
                        automation: dg.AutomationCondition | None = None) -> dg.AssetsDefinition:
    partitions = day_partitions(settings)
    groups = list(catalog.groups)
    sources = [wide_asset_key(g) for g in groups] + [CORRECTIONS_KEY]

    @dg.multi_asset(
        name="rollups",
        specs=rollup_specs(settings, catalog, automation),
        check_specs=[
            dg.AssetCheckSpec(CHECK_NAME, asset=key, blocking=True,
                              description="Every rollup row of the run's days equals a plain "
                              "GROUP BY over the wide rows' cells (n, min, max exactly; sum, avg "
                              "within 1e-9 relative); no row missing or extra.")
            for key in (HOURLY_KEY, DAILY_KEY)
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(RUN_DAYS),
        can_subset=False,
        pool=DB_POOL,
    )
    def rollups(context: dg.AssetExecutionContext, n2w_db: N2WDatabase
                ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Recompute the hourly and daily rollups of the run's (ship, day) partitions from the
        wide tables, then reconcile them against the wide rows."""
        days = sorted(split_day_key(partitions, k) for k in context.partition_keys)
        url = n2w_db.resolve_url(settings)
        # before reading: the newest wide/correction change this run can have seen (the
        # day_products_refresh sensor re-requests the day for any later one)
        mark = wide_watermark(context.instance, [*sources])
        t0 = time.perf_counter()
        totals = {"wide_rows": 0, "hourly_rows": 0, "daily_rows": 0, "rows_changed": 0, "rows_deleted": 0}
        checks: dict[str, list[RollupCheck]] = {ROLLUP_HOURLY: [], ROLLUP_DAILY: []}
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_rollup_tables(conn, settings)
            for i, (ship, day) in enumerate(days, 1):
                st = refresh_day(conn, settings, groups, ship, day)
                totals["wide_rows"] += st.wide_rows
                totals["hourly_rows"] += st.hourly_rows
                totals["daily_rows"] += st.daily_rows
                totals["rows_changed"] += st.changed
                totals["rows_deleted"] += st.deleted
                for table in checks:
                    checks[table].append(reconcile(conn, settings, groups, ship, day, table))
                elapsed = time.perf_counter() - t0
                context.log.info(f"{ship} {day}: {st.wide_rows:,} wide rows → {st.hourly_rows:,} hourly, "
                                 f"{st.daily_rows:,} daily rows ({i}/{len(days)}, "
                                 f"ETA {elapsed / i * (len(days) - i):,.0f} s)")
        wall = time.perf_counter() - t0
        rate = round(totals["wide_rows"] / wall, 1) if wall else 0.0
        md = {**totals, "seconds": dg.MetadataValue.float(round(wall, 3)),
              "wide_rows_per_s": dg.MetadataValue.float(rate), "days": len(days), WATERMARK: mark}
        yield dg.MaterializeResult(asset_key=HOURLY_KEY, metadata=md)
        yield dg.MaterializeResult(asset_key=DAILY_KEY, metadata=md)
        yield _check_result(HOURLY_KEY, checks[ROLLUP_HOURLY], days)
        yield _check_result(DAILY_KEY, checks[ROLLUP_DAILY], days)

    return rollups
