"""Exports as Dagster assets: Parquet files and ClickHouse tables of every channel group,
partitioned by day × ship, downstream of the wide assets (a day reads its 24 wide hours).

One multi-asset, ``wide_to_export``, holds both kinds for every group (``parquet_<n>_<name>``,
``clickhouse_<n>_<name>``); it can run any subset, and a run that makes both reads PostgreSQL
once. The work is ``n2w_pipeline.export.day.export_days``, the same code ``n2w export`` runs.
Each asset carries the check ``reconciliation``: rows, and per column the non-NULL count
(exact) and sum (1e-9 relative) of every exported ship-day, against PostgreSQL's figures of the
same snapshot; a failure names the table (or file), the column and the day.
"""

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.automation import WATERMARK, DayProduct, wide_watermark
from n2w_pipeline.defs.partitions import day_partitions, hours_to_days, split_day_key
from n2w_pipeline.defs.resources import N2WClickHouse, N2WDatabase
from n2w_pipeline.defs.wide_assets import wide_asset_key
from n2w_pipeline.export.day import DayResult, ExportError, export_days
from n2w_pipeline.export.paths import export_root
from n2w_pipeline.export.reconcile import describe
from n2w_pipeline.instance import DB_POOL

EXPORT_GROUP = "exports"
CHECK_NAME = "reconciliation"
CORRECTIONS_KEY = dg.AssetKey("csv_corrections")
progress_log = logging.getLogger("n2w.progress")  # drawn as a bar by `n2w export`


def parquet_key(group: ChannelGroup) -> dg.AssetKey:
    return dg.AssetKey(f"parquet_{group.number}_{group.name}")


def clickhouse_key(group: ChannelGroup) -> dg.AssetKey:
    return dg.AssetKey(f"clickhouse_{group.number}_{group.name}")


def export_keys(catalog: ChannelCatalog, to: str = "both") -> list[dg.AssetKey]:
    """The asset keys of ``--to parquet|clickhouse|both``."""
    keys = []
    for g in catalog.groups:
        if to in ("parquet", "both"):
            keys.append(parquet_key(g))
        if to in ("clickhouse", "both"):
            keys.append(clickhouse_key(g))
    return keys


def _specs(settings: Settings, g: ChannelGroup) -> list[dg.AssetSpec]:
    dep = dg.AssetDep(wide_asset_key(g), partition_mapping=hours_to_days())
    common = {"deps": [dep], "group_name": EXPORT_GROUP, "owners": ["team:n2w"]}
    return [
        dg.AssetSpec(
            key=parquet_key(g), kinds={"parquet"}, **common,
            description=(
                f"Group {g.number} ({g.name.replace('_', ' ')}) as Parquet, one file per ship-day: "
                f"{export_root(settings)}/{g.asset_name}/ship_id=<ship>/date=<YYYY-MM-DD>/"
                "<ship>_<YYYY-MM-DD>.parquet, zstd; created_time, ship_id and one float64 column per "
                "channel (PostgreSQL's column names). Written under a temporary name and renamed."
            ),
            metadata={"folder": str(export_root(settings) / g.asset_name), "channel_count": len(g.channels)},
        ),
        dg.AssetSpec(
            key=clickhouse_key(g), kinds={"clickhouse"}, **common,
            description=(
                f"Group {g.number} ({g.name.replace('_', ' ')}) in ClickHouse table n2w.{g.asset_name} "
                "(MergeTree, ORDER BY (ship_id, created_time), monthly partitions): embedded chDB, or "
                "the server of N2W_CLICKHOUSE_URL. Each ship-day load replaces that ship-day."
            ),
            metadata={"table": f"n2w.{g.asset_name}", "channel_count": len(g.channels)},
        ),
    ]


def _check_specs(settings: Settings, catalog: ChannelCatalog) -> list[dg.AssetCheckSpec]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                CHECK_NAME, asset=key, partitions_def=day_partitions(settings),
                description="Rows, and per column the non-NULL count (exact) and sum (1e-9 relative) "
                "of each exported ship-day equal PostgreSQL's, read in the same snapshot.",
            )
            for key in export_keys(catalog)
        ]


def _materialize_md(kind: str, g: ChannelGroup, results: Sequence[DayResult], wall: float,
                    watermark: int) -> dict[str, Any]:
    days = [r.groups[g.number] for r in results if g.number in r.groups]
    rows = sum(d.rows for d in days)
    md: dict[str, Any] = {
        "rows": rows,
        "ship_days": len(days),
        "rows_per_s": dg.MetadataValue.float(round(rows / wall, 1) if wall else 0.0),
        "seconds": dg.MetadataValue.float(round(wall, 3)),
        WATERMARK: watermark,
    }
    if kind == "parquet":
        files = [d.parquet for d in days if d.parquet]
        md["bytes"] = sum(f.bytes for f in files)
        if len(files) == 1:
            md["path"] = dg.MetadataValue.path(str(files[0].path))
            md["sha256"] = files[0].sha256
        md["files"] = dg.MetadataValue.json(
            [{"path": str(f.path), "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256} for f in files[:400]]
        )
    else:
        md["table"] = days[0].clickhouse_table if days else ""
        added = sorted({c for d in days for c in d.clickhouse_added})
        md["columns_added"] = dg.MetadataValue.json(added)
        md["ship_days_unchanged"] = sum(d.clickhouse_unchanged for d in days)  # held row for row already
    return md


def _check_result(
    kind: str, key: dg.AssetKey, g: ChannelGroup, results: Sequence[DayResult]
) -> dg.AssetCheckResult:
    failures, checked = [], 0
    for r in results:
        d = r.groups.get(g.number)
        if d is None:
            continue
        mism = d.parquet_mismatches if kind == "parquet" else d.clickhouse_mismatches
        checked += 1
        if mism:
            where = str(d.parquet.path) if kind == "parquet" and d.parquet else d.clickhouse_table
            failures.append(describe(where, r.ship, r.day, mism))
    return dg.AssetCheckResult(
        asset_key=key, check_name=CHECK_NAME, passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description=failures[0] if failures else None,
        metadata={"ship_days_checked": checked, "ship_days_failed": len(failures),
                  "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in failures[:20]) or "none")},
    )


def _report(log: Any, i: int, n: int, r: DayResult, rows: int, t0: float) -> None:
    elapsed = max(time.perf_counter() - t0, 1e-9)
    eta = elapsed / i * (n - i)
    phases = ", ".join(f"{k} {v:.1f}" for k, v in r.phases.items())
    log.info(f"{r.ship} {r.day:%Y-%m-%d}: {r.rows:,} rows in {r.seconds:.1f} s ({phases}; "
             f"{r.attempts} attempt(s)); {i}/{n} ship-days, {rows / elapsed:,.0f} rows/s, ETA {eta:,.0f} s")
    progress_log.info("progress", extra={"n2w_done": 24 * i, "n2w_total": 24 * n, "n2w_rows": rows,
                                         "n2w_rate": rows / elapsed, "n2w_eta": eta})


def build_export_assets(settings: Settings, catalog: ChannelCatalog) -> dg.AssetsDefinition:
    partitions = day_partitions(settings)
    specs = [s for g in catalog.groups for s in _specs(settings, g)]
    sources = [*(wide_asset_key(g) for g in catalog.groups), CORRECTIONS_KEY]

    @dg.multi_asset(
        name="wide_to_export",
        specs=specs,
        check_specs=_check_specs(settings, catalog),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(max(1, settings.run_hours // 24)),
        can_subset=True,
        pool=DB_POOL,
    )
    def wide_to_export(
        context: dg.AssetExecutionContext, n2w_db: N2WDatabase, n2w_clickhouse: N2WClickHouse
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Export the run's ship-days of the selected groups to Parquet and/or ClickHouse.

        Per ship-day: one REPEATABLE READ snapshot of the wide tables read slice by slice
        (N2W_SLICE_HOURS) through COPY/Arrow; each slice goes to the day's temporary Parquet file
        and ClickHouse stage; then the file is renamed into place and the ship-day replaced in
        ClickHouse. Retries with backoff; the checks compare the result with PostgreSQL.
        """
        selected = context.selected_asset_keys
        pq_groups = [g for g in catalog.groups if parquet_key(g) in selected]
        ch_groups = [g for g in catalog.groups if clickhouse_key(g) in selected]
        days = sorted(split_day_key(partitions, k) for k in context.partition_keys)
        watermark = wide_watermark(context.instance, sources)
        url = n2w_db.resolve_url(settings)
        context.log.info(f"{len(days)} ship-day(s); parquet groups {[g.number for g in pq_groups]}, "
                         f"clickhouse groups {[g.number for g in ch_groups]}")
        meta = {"n2w.run_id": context.run_id}
        results: list[DayResult] = []
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            backend = None
            if ch_groups:
                try:
                    backend = stack.enter_context(n2w_clickhouse.open(settings, context.log))
                except ExportError as e:
                    raise dg.Failure(description=str(e), allow_retries=False) from None
                context.log.info(f"ClickHouse: {backend.label}")
            try:
                for i, r in enumerate(export_days(url, settings, days, pq_groups, ch_groups, backend, meta,
                                                  context.log), start=1):
                    results.append(r)
                    _report(context.log, i, len(days), r, sum(x.rows for x in results), t0)
            except ExportError as e:
                raise dg.Failure(description=str(e), allow_retries=False) from None
        wall = time.perf_counter() - t0
        kinds = (("parquet", pq_groups, parquet_key), ("clickhouse", ch_groups, clickhouse_key))
        for kind, groups, key_of in kinds:
            for g in groups:
                yield dg.MaterializeResult(asset_key=key_of(g),
                                           metadata=_materialize_md(kind, g, results, wall, watermark))
                if dg.AssetCheckKey(key_of(g), CHECK_NAME) in context.selected_asset_check_keys:
                    yield _check_result(kind, key_of(g), g, results)

    return wide_to_export


def export_product(catalog: ChannelCatalog) -> DayProduct:
    """The exports as a day product of the refresh sensor (their first run is the schedule's)."""
    return DayProduct(tuple(export_keys(catalog)), request_finished_days=False)
