"""Asset checks of the wide tables, in Dagster: run-time checks and an on-demand job.

* **In every materialisation** (``check_specs`` on the ``narrow_to_wide`` multi-asset):
  four checks per wide asset over exactly the run's (ship, hour) windows. A
  single-partition run (the realtime sensor's) records them for that partition; a range
  run (backfills) is recorded without a partition by Dagster 1.13, so every result names
  the ships and windows it checked in its metadata.
* **On demand** for any window: the job ``n2w_check_window`` (Launchpad: ship, start,
  end) runs the non-partitioned check ``on_demand_window`` of every wide asset; or
  ``n2w check`` on the command line. A job of checks only has no partitions, so its page
  offers no backfill of the wide assets (whose job-page backfills ignore ranges upstream).
"""

import datetime as dt
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from n2w_pipeline.channels import ChannelCatalog, ChannelGroup
from n2w_pipeline.checks import (
    BLOCKING,
    CHECK_NAMES,
    DESCRIPTIONS,
    ERROR,
    RECONCILIATION,
    CheckOutcome,
    NarrowHours,
    evaluate,
    open_pair,
)
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.partitions import wide_partitions
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.instance import DB_POOL

ON_DEMAND = "on_demand_window"
CHECK_JOB = "n2w_check_window"
_SEVERITY = {"WARN": dg.AssetCheckSeverity.WARN, "ERROR": dg.AssetCheckSeverity.ERROR}


def _asset_key(group: ChannelGroup) -> dg.AssetKey:
    return dg.AssetKey(group.asset_name)


def run_check_specs(settings: Settings, catalog: ChannelCatalog) -> list[dg.AssetCheckSpec]:
    """The four checks of every wide asset, evaluated inside each materialisation."""
    partitions = wide_partitions(settings)
    with warnings.catch_warnings():
        # partitioned check specs are "preview" in 1.13; they give single-partition runs
        # (realtime) per-partition results, and range runs a run-level result (planned
        # per-partition records of a finished range run resolve to SKIPPED in the UI)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=_asset_key(g),
                description=DESCRIPTIONS[name],
                blocking=BLOCKING[name],
                partitions_def=partitions,
            )
            for g in catalog.groups
            for name in CHECK_NAMES
        ]


def _md_value(key: str, value: Any) -> Any:
    if key == "emptiest_channels" and value:
        return dg.MetadataValue.md(
            "| channel | filled cells | fill % |\n|---|---|---|\n"
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
    source_url: str | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """Evaluate the run's selected checks over its windows and yield one result per check.
    ``narrow_hours``: what the run read (see ``checks.gather_facts``); ``source_url``: the
    narrow table's database (default ``url``)."""
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
        if not o.passed:
            log = context.log.error if o.severity == ERROR else context.log.warning
            log(f"{key.to_user_string()} {o.name}: {o.summary}")
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=o.name,
            passed=o.passed,
            severity=_SEVERITY[o.severity],
            description=o.summary,
            metadata=to_metadata(o),
        )


class CheckWindowConfig(dg.Config):
    """The window the on-demand checks read; empty start/end = the last 24 whole hours.

    ``ship`` is empty by default so that materialising a wide asset from the UI (which
    includes every check of the asset in the run) needs no config: without a ship the
    on-demand check does nothing and records no result.
    """

    ship: str = ""
    start: str = ""
    end: str = ""


def _window(cfg: CheckWindowConfig, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    now = (now or dt.datetime.now(dt.UTC).replace(tzinfo=None)).replace(minute=0, second=0, microsecond=0)
    end = dt.datetime.fromisoformat(cfg.end) if cfg.end else now
    start = dt.datetime.fromisoformat(cfg.start) if cfg.start else end - dt.timedelta(hours=24)
    start, end = (t.replace(minute=0, second=0, microsecond=0) for t in (start, end))
    if end <= start:
        raise dg.Failure(f"end ({end}) must be at least one hour after start ({start})")
    return start, end


def build_window_checks(settings: Settings, catalog: ChannelCatalog) -> dg.AssetChecksDefinition:
    """One non-partitioned check per wide asset that runs all four checks on a chosen window."""
    groups = {_asset_key(g): g for g in catalog.groups}

    @dg.multi_asset_check(
        name="n2w_window_checks",
        specs=[
            dg.AssetCheckSpec(
                ON_DEMAND,
                asset=key,
                description=(
                    "On demand, for a ship and window you choose (job n2w_check_window, or "
                    "`n2w check`): null-fill rate, channel coverage, narrow↔wide reconciliation "
                    "and unknown channels together. Fails with ERROR when reconciliation fails, "
                    "WARN when only a warning check does; the metadata holds every figure."
                ),
            )
            for key in groups
        ],
        can_subset=True,
        pool=DB_POOL,
    )
    def n2w_window_checks(
        context: dg.AssetCheckExecutionContext, config: CheckWindowConfig, n2w_db: N2WDatabase
    ) -> Iterator[dg.AssetCheckResult]:
        if not config.ship:
            context.log.info(
                "on-demand window checks: no ship in the run config, nothing to check "
                "(the materialisation's own checks cover its partitions)"
            )
            return
        if config.ship not in settings.ships:
            raise dg.Failure(f"unknown ship {config.ship!r}; configured: {list(settings.ships)}")
        start, end = _window(config)
        keys = {k.asset_key for k in context.selected_asset_check_keys}
        wanted = [groups[k] for k in groups if k in keys]
        with open_pair(n2w_db.resolve_url(settings), n2w_db.resolve_source_url(settings)) as (conn, source):
            outcomes = evaluate(conn, settings, wanted, [(config.ship, start, end)], source=source)
        for g in wanted:
            mine = [o for o in outcomes if o.group == g.number]
            failed = [o for o in mine if not o.passed]
            severe = any(o.name == RECONCILIATION for o in failed)
            md: dict[str, Any] = {
                "ship": config.ship, "start": start.isoformat(), "end": end.isoformat(),
                "failed_checks": dg.MetadataValue.json([o.name for o in failed]),
            }
            for o in mine:
                md[f"{o.name}: summary"] = ("PASS: " if o.passed else f"{o.severity}: ") + o.summary
                for k, v in to_metadata(o).items():
                    if k not in ("summary", "ships", "windows", "tables", "hours_checked"):
                        md[f"{o.name}: {k}"] = v
            yield dg.AssetCheckResult(
                asset_key=_asset_key(g),
                check_name=ON_DEMAND,
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR if severe else dg.AssetCheckSeverity.WARN,
                description=f"{config.ship} {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}: "
                + ("all checks pass" if not failed else ", ".join(o.name for o in failed) + " failed"),
                metadata=md,
            )

    return n2w_window_checks


def build_check_job(window_checks: dg.AssetChecksDefinition):  # noqa: ANN201 - Dagster-internal type
    """The job whose Launchpad runs the on-demand checks for a ship and window."""
    return dg.define_asset_job(
        CHECK_JOB,
        selection=dg.AssetSelection.checks(window_checks),
        description=(
            "Check any window of one ship on demand: set ops.n2w_window_checks.config "
            "(ship, start, end as 2025-03-01T00:00; empty start/end = the last 24 hours) in the "
            "Launchpad. Results appear on each wide asset's Checks tab as on_demand_window."
        ),
    )
