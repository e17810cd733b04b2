"""Asset checks of the wide tables, in Dagster: run-time checks and an on-demand job.

* **In every materialisation** (``check_specs`` on the ``narrow_to_wide`` multi-asset):
  four checks per wide asset, evaluated once over all of the run's (ship, hour) windows.
  The specs are not partitioned because that is how the checks are evaluated: every run —
  one partition (realtime, one ship), an hour of several ships (realtime) or a ship-week
  (backfill) — records one result per check, whose metadata names the ships, windows and
  tables it checked. Dagster then shows each check's latest result as current for the
  asset (the asset graph's "Asset checks n / 4 Passed", the Checks tab).

  Partitioned specs (a preview in Dagster 1.13.27) made a range run plan one record per
  partition but store its result without one (``AssetCheckResult`` takes no partition), so
  after every backfill the UI counted the planned records as skipped: "0 / 5 Passed".
  Yielding one ``AssetCheckEvaluation(partition=…)`` per partition instead records them,
  but the event log stores those one event at a time (no batching, unlike
  materialisations): ~30 ms each on the embedded PostgreSQL (a prototype, 2026-12-02, two
  busy cores), over a minute for a ship-week run's 168 × 3 × 4 results.
* **Checks only** (the Checks tab's *Execute*, offered for non-partitioned checks): the
  multi-asset re-evaluates the selected checks over the windows of each asset's latest
  materialisation, counting the narrow table, and writes nothing (``recheck_results``).
* **On demand** for any window: the job ``n2w_check_window`` (Launchpad: ship, start, end)
  evaluates the same four checks with the narrow side counted from the narrow table, and
  records them under the same check names, so they appear in each check's history beside
  the in-run results (``checked`` in the metadata says which). Or ``n2w check`` on the
  command line, which records nothing. The job has no partitions, so its page offers no
  backfill of the wide assets (whose job-page backfills ignore ranges upstream).
"""

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from pydantic import Field

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup
from n2w_pipeline.checks import (
    BLOCKING,
    CHECK_NAMES,
    DESCRIPTIONS,
    ERROR,
    CheckOutcome,
    NarrowHours,
    evaluate,
    open_pair,
)
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.partitions import ship_windows
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.instance import DB_POOL

CHECK_JOB = "n2w_check_window"
IN_RUN = "in the run that wrote these windows (narrow side: the rows it read)"
ON_DEMAND = "on demand, job n2w_check_window (narrow side: counted from the narrow table)"
RECHECK = "re-run without materialising (narrow side: counted from the narrow table)"
_SEVERITY = {"WARN": dg.AssetCheckSeverity.WARN, "ERROR": dg.AssetCheckSeverity.ERROR}


def _asset_key(group: ChannelGroup) -> dg.AssetKey:
    return dg.AssetKey(group.asset_name)


def run_check_specs(catalog: ChannelCatalog) -> list[dg.AssetCheckSpec]:
    """The four checks of every wide asset, evaluated inside each materialisation over the
    run's windows (not partitioned: see the module docstring)."""
    return [
        dg.AssetCheckSpec(name, asset=_asset_key(g), description=DESCRIPTIONS[name], blocking=BLOCKING[name])
        for g in catalog.groups
        for name in CHECK_NAMES
    ]


def _md_value(key: str, value: Any) -> Any:
    if key == "emptiest_channels" and value:
        return dg.MetadataValue.md(
            "| channel | filled cells | filled % |\n|---|---|---|\n"
            + "\n".join(
                f"| `{r['channel']}` | {r['filled_cells']:,} | {r['filled_pct']:.2f} |" for r in value
            )
        )
    if key == "first_differences" and value:
        return dg.MetadataValue.md(
            "| ship | time | channel | difference | expected | actual |\n|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {d['ship']} | {d['time']} | `{d['channel'] or '(whole row)'}` | {d['kind']} | "
                f"{d['expected']} | {d['actual']} |"
                for d in value
            )
        )
    if isinstance(value, (list, dict)):
        return dg.MetadataValue.json(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    return value


def to_metadata(outcome: CheckOutcome) -> dict[str, Any]:
    md = {"summary": outcome.summary}
    md.update({k: _md_value(k, v) for k, v in outcome.metadata.items()})
    return md


def run_check_results(
    context: dg.AssetExecutionContext,
    url: str,
    settings: Settings,
    groups: Sequence[ChannelGroup],
    windows: Sequence[tuple[str, dt.datetime, dt.datetime]],
    narrow_hours: NarrowHours | None = None,
    checked: str = IN_RUN,
    source_url: str | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """Evaluate the run's selected checks over its windows and yield one result per check.
    ``narrow_hours``: what the run read (see ``checks.facts.gather_facts``); None counts the narrow
    table. ``checked`` says how, in the results' metadata. ``source_url``: the narrow table's
    database (default ``url``)."""
    selected = {(k.asset_key, k.name) for k in context.selected_asset_check_keys}
    wanted = [g for g in groups if any((_asset_key(g), n) in selected for n in CHECK_NAMES)]
    if not wanted:
        return
    names = sorted({n for _, n in selected})
    t0 = time.perf_counter()
    with open_pair(url, source_url) as (conn, source):
        outcomes = evaluate(conn, settings, wanted, windows, names=names, narrow_hours=narrow_hours,
                            source=source)
    context.log.info(f"asset checks computed in {time.perf_counter() - t0:.2f} s")
    by_group = {g.number: g for g in wanted}
    for o in outcomes:
        key = _asset_key(by_group[o.group])
        if (key, o.name) not in selected:
            continue
        _log_failure(context.log, key, o)
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=o.name,
            passed=o.passed,
            severity=_SEVERITY[o.severity],
            description=o.summary,
            metadata={**to_metadata(o), "checked": checked},
        )


def recheck_results(
    context: dg.AssetExecutionContext,
    url: str,
    settings: Settings,
    catalog: ChannelCatalog,
    partitions: dg.MultiPartitionsDefinition,
    source_url: str | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """A run that selects checks of the wide assets but none of the assets: the Checks tab's
    *Execute* (offered now that the checks are not partitioned; such a run has no partition).
    Evaluate them over the hours each asset's latest materialisation wrote — the windows
    the UI shows the checks for — counting the narrow table, and write nothing."""
    keys = {k.asset_key for k in context.selected_asset_check_keys}
    plan: dict[tuple[tuple[str, dt.datetime, dt.datetime], ...], list[ChannelGroup]] = {}
    for g in (g for g in catalog.groups if _asset_key(g) in keys):
        windows = latest_windows(context.instance, partitions, _asset_key(g))
        if not windows:
            context.log.info(f"{g.asset_name} was never materialised: nothing to check")
        else:
            plan.setdefault(tuple(windows), []).append(g)
    for windows, gs in plan.items():
        yield from run_check_results(context, url, settings, gs, list(windows), checked=RECHECK,
                                     source_url=source_url)


def latest_windows(
    instance: dg.DagsterInstance, partitions: dg.MultiPartitionsDefinition, key: dg.AssetKey
) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """The (ship, start, end) windows of the run that last materialised ``key``; [] if none."""
    records = instance.fetch_materializations(key, limit=1).records
    if not records:
        return []
    run = instance.get_run_by_id(records[0].run_id)
    tags = run.tags if run else {}
    first = tags.get("dagster/asset_partition_range_start")
    last = tags.get("dagster/asset_partition_range_end")
    if first and last:
        part_keys = partitions.get_partition_keys_in_range(dg.PartitionKeyRange(first, last))
    else:
        part_keys = [records[0].partition_key] if records[0].partition_key else []
    return ship_windows(partitions, part_keys)


def _log_failure(log: dg.DagsterLogManager, key: dg.AssetKey, o: CheckOutcome) -> None:
    if not o.passed:
        (log.error if o.severity == ERROR else log.warning)(f"{key.to_user_string()} {o.name}: {o.summary}")


def _latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The asset's latest materialisation, which an on-demand evaluation checks (it reads the
    table as it is now). Without it the UI compares the check's record time, stored to the
    second, with the materialisation's: a check a second after a run could count as stale."""
    records = instance.fetch_materializations(key, limit=1).records
    if not records:
        return None
    mat = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=mat.storage_id, run_id=mat.run_id, timestamp=mat.timestamp)


class CheckWindowConfig(dg.Config):
    """The ship and window the on-demand checks read."""

    ship: str = Field(description="ship id, one of N2W_SHIPS")
    start: str = Field(default="", description="first hour, e.g. 2025-03-01T00:00; empty: end - 24 h")
    end: str = Field(default="", description="end hour (excluded); empty: the current hour")


def _window(cfg: CheckWindowConfig, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    now = (now or dt.datetime.now(dt.UTC).replace(tzinfo=None)).replace(minute=0, second=0, microsecond=0)
    end = dt.datetime.fromisoformat(cfg.end) if cfg.end else now
    start = dt.datetime.fromisoformat(cfg.start) if cfg.start else end - dt.timedelta(hours=24)
    start, end = (t.replace(minute=0, second=0, microsecond=0) for t in (start, end))
    if end <= start:
        raise dg.Failure(f"end ({end}) must be at least one hour after start ({start})")
    return start, end


def build_check_job(settings: Settings, catalog: ChannelCatalog) -> dg.JobDefinition:
    """The job whose Launchpad runs the four checks of every wide asset for a ship and window
    and records them under the checks' own names (``AssetCheckEvaluation`` events)."""
    groups = list(catalog.groups)

    @dg.op(name="n2w_window_checks", out={}, pool=DB_POOL,
           description="The wide assets' four checks over one ship and window, the narrow side "
           "counted from the narrow table; recorded on each check as an on-demand evaluation.")
    def n2w_window_checks(
        context: dg.OpExecutionContext, config: CheckWindowConfig, n2w_db: N2WDatabase
    ) -> Iterator[dg.AssetCheckEvaluation]:
        if config.ship not in settings.ships:
            raise dg.Failure(f"unknown ship {config.ship!r}; configured: {list(settings.ships)}")
        start, end = _window(config)
        targets = {_asset_key(g): _latest_materialization(context.instance, _asset_key(g)) for g in groups}
        with open_pair(n2w_db.resolve_url(settings), n2w_db.resolve_source_url(settings)) as (conn, source):
            outcomes = evaluate(conn, settings, groups, [(config.ship, start, end)], source=source)
        by_group = {g.number: g for g in groups}
        window = f"{config.ship} {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}"
        for o in outcomes:
            key = _asset_key(by_group[o.group])
            _log_failure(context.log, key, o)
            yield dg.AssetCheckEvaluation(
                asset_key=key,
                check_name=o.name,
                passed=o.passed,
                severity=_SEVERITY[o.severity],
                description=f"on demand, {window}: {o.summary}",
                metadata={**to_metadata(o), "checked": ON_DEMAND},
                target_materialization_data=targets[key],
            )

    @dg.job(
        name=CHECK_JOB,
        description=(
            "Check any window of one ship on demand: set ops.n2w_window_checks.config (ship; "
            "start and end as 2025-03-01T00:00, empty = the last 24 hours) in the Launchpad. "
            "The results appear on each wide asset's Checks tab under the four checks' own "
            "names, with checked = on demand."
        ),
    )
    def n2w_check_window() -> None:
        n2w_window_checks()

    return n2w_check_window
