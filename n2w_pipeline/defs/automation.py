"""Keeping day × ship products (exports, rollups) in step with the wide tables.

A **day product** is an asset partitioned by ``day_partitions(settings)`` that reads the wide
tables of one ship-day (its deps map through ``hours_to_days()``). One sensor,
``day_products_refresh``, keeps every registered product fresh:

* **Refresh.** A wide hour re-materialised after a product's day was made (late rows through
  the realtime sensor, a backfill run again, a CSV correction file of last month) makes that
  (day, ship) stale, and the sensor requests a run of exactly the stale products of that
  partition. A product run that is still queued (not started) for the partition already covers
  it and is not requested again.
* **Finished days** (for products registered with ``request_finished_days=True``): each day
  is requested once for every ship shortly after it ends (00:00 UTC + one tick). On its first
  tick the sensor requests the latest finished day; days missed while the daemon was down are
  requested up to ``CATCH_UP_DAYS`` back (older ones are left to backfills). The exports do not
  use this: their schedule runs at 02:00 UTC (``defs/schedules.py``) so that late rows of the
  day's last minutes are in.

Why a sensor and not an automation condition. "Stale" must mean "a wide change the product's
snapshot did not see". Dagster's ``any_deps_updated().since_last_handled()`` clears when the
product's materialisation is recorded, so a wide hour written *during* a product run (after
its snapshot, before its end) would be forgotten. Here every product records, before it reads
the wide tables, a watermark (``wide_watermark``: the newest storage id of any wide or
correction materialisation) in its metadata under ``WATERMARK``; the sensor compares the
storage id of each new wide/correction materialisation with the watermark of the product's
latest materialisation. An event written after the product read the watermark always has a
larger id, so no change is missed; a change the product did see never triggers a run; and a
refresh run's watermark covers the event that requested it, so refreshes never loop.

**The current day.** A day partition exists only once the day has ended (``day_partitions``
has no ``end_offset``), so wide runs of today's hours (the realtime sensor, every minute) never
request anything; the day's first product run (the schedule, a finished-day request or
``n2w export``) reads every hour as it then is.

**Hours that never get data.** An hour without narrow rows is never materialised, so it
neither triggers nor blocks anything: a product reads the day's rows that exist. A day product
never waits for its 24 hours to be materialised.

**Products never made** are not refreshed (a refresh is for days someone asked for); a wide
backfill of last year does not export last year by itself. ``n2w export`` or a backfill of the
product assets does.

**CSV corrections** materialise ``csv_corrections`` (one partition per file), not wide hours.
Their metadata may name the hours they wrote (``wide_hours``: ``{ship: [ISO hour, …]}``);
without it, the file's ship (``<HULL>/…`` through ``N2W_HULLS``) and month (``…_YYYY-MM…``)
stand for the days from the day before the month to the day after it.

Contract for a day product (see ``defs/exports.py``): partitions ``day_partitions(settings)``;
call ``wide_watermark(instance, sources)`` before reading and put the value in every
materialisation's metadata under ``WATERMARK``; register a ``DayProduct`` with
``build_day_refresh_sensor`` in ``definitions.py``. The sensor runs in the Dagster daemon
(``n2w dev`` starts it; RUNNING by default).
"""


import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.defs.partitions import DAY_FMT, day_key, day_partitions, split_key, wide_partitions

SENSOR_NAME = "day_products_refresh"
WATERMARK = "n2w/wide_event_id"
REFRESH_TAG = "n2w/refresh"  # value: wide_changed | finished_day
CATCH_UP_DAYS = 7
EVENTS_PER_TICK = 5000
_MONTH_RE = re.compile(r"_(\d{4})-(\d{2})")


@dataclass(frozen=True)
class DayProduct:
    """Asset keys refreshed together (one run per stale partition), and whether each finished
    day is requested once for every ship."""

    keys: tuple[dg.AssetKey, ...]
    request_finished_days: bool = False


def wide_watermark(instance: dg.DagsterInstance, sources: Iterable[dg.AssetKey]) -> int:
    """The newest storage id of any materialisation of ``sources`` (the wide assets and the
    corrections asset): call it *before* reading the wide tables and record it under
    ``WATERMARK``. Any change committed after the read has a later event, so a larger id."""
    best = 0
    for key in sources:
        result = instance.fetch_materializations(key, limit=1)
        if result.records:
            best = max(best, result.records[0].storage_id)
    return best


@dataclass
class _Cursor:
    after: dict[str, int]
    day: str | None

    @classmethod
    def load(cls, text: str | None) -> "_Cursor":
        data = json.loads(text) if text else {}
        return cls(dict(data.get("after", {})), data.get("day"))

    def dump(self) -> str:
        return json.dumps({"after": self.after, "day": self.day}, sort_keys=True)


def _correction_days(settings: Settings, record: dg.EventLogRecord) -> set[tuple[str, dt.date]]:
    """(ship, day) pairs a correction file may have written (see the module docstring)."""
    mat = record.asset_materialization
    md = mat.metadata if mat else {}
    hours = md.get("wide_hours")
    if hours is not None and isinstance(hours.value, dict):
        return {(ship, dt.datetime.fromisoformat(h).date()) for ship, hs in hours.value.items() for h in hs}
    key = record.partition_key or ""
    hull = key.split("/", 1)[0]
    ship = settings.hulls.get(hull)
    month = _MONTH_RE.search(key.rsplit("/", 1)[-1])
    if not ship or not month:
        return set()
    first = dt.date(int(month[1]), int(month[2]), 1)
    after = (first + dt.timedelta(days=32)).replace(day=1)
    span = (after - first).days + 2
    return {(ship, first - dt.timedelta(days=1) + dt.timedelta(days=i)) for i in range(span)}


def _changes(
    context: dg.SensorEvaluationContext, settings: Settings, wide_keys: Sequence[dg.AssetKey],
    corrections_key: dg.AssetKey | None, cursor: _Cursor,
) -> dict[tuple[str, dt.date], int]:
    """(ship, day) → newest storage id of a wide/correction materialisation since the cursor."""
    hours = wide_partitions(settings)
    out: dict[tuple[str, dt.date], int] = {}
    sources = [*wide_keys, *([corrections_key] if corrections_key else [])]
    for key in sources:
        name = key.to_user_string()
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=cursor.after.get(name)),
            limit=EVENTS_PER_TICK, ascending=True,
        )
        for rec in result.records:
            if key == corrections_key:
                pairs = _correction_days(settings, rec)
            elif rec.partition_key:
                ship, hour = split_key(hours, rec.partition_key)
                pairs = {(ship, hour.date())}
            else:
                pairs = set()
            for pair in pairs:
                out[pair] = max(out.get(pair, 0), rec.storage_id)
            cursor.after[name] = rec.storage_id
    return out


def _stale(
    instance: dg.DagsterInstance, key: dg.AssetKey, changes: dict[tuple[str, dt.date], int]
) -> set[tuple[str, dt.date]]:
    """The (ship, day) partitions of ``key`` made before the change listed for them."""
    by_key = {str(day_key(ship, day)): (ship, day) for ship, day in changes}
    storage = instance.event_log_storage
    latest = storage.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(by_key)
    )
    stale: set[tuple[str, dt.date]] = set()
    check_metadata: dict[int, tuple[str, dt.date]] = {}
    for part, storage_id in latest.items():
        pair = by_key[part]
        if storage_id < changes[pair]:
            stale.add(pair)  # the product was recorded before the change: its read predates it
        else:
            check_metadata[storage_id] = pair
    if check_metadata:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=list(check_metadata)), limit=len(check_metadata)
        ).records
        for rec in records:
            pair = check_metadata[rec.storage_id]
            mat = rec.asset_materialization
            mark = mat.metadata.get(WATERMARK) if mat else None
            if mark is not None and int(mark.value) < changes[pair]:  # type: ignore[arg-type]
                stale.add(pair)  # changed while that run was reading
    return stale


def _queued(instance: dg.DagsterInstance) -> set[str]:
    """Partition keys of this sensor's runs that have not started yet."""
    runs = instance.get_runs(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED],
        tags={"dagster/sensor_name": SENSOR_NAME},
    ))
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags}


def _finished_days(settings: Settings, cursor: _Cursor, today: dt.date) -> list[dt.date]:
    """Days that ended since the cursor's day (the latest one on the first tick)."""
    latest = today - dt.timedelta(days=1)
    first_day = dt.datetime.strptime(settings.partition_start, "%Y-%m-%d-%H:%M").date()
    last_done = dt.date.fromisoformat(cursor.day) if cursor.day else latest - dt.timedelta(days=1)
    start = max(last_done + dt.timedelta(days=1), latest - dt.timedelta(days=CATCH_UP_DAYS - 1), first_day)
    cursor.day = max(latest, last_done).isoformat()
    return [start + dt.timedelta(days=i) for i in range((latest - start).days + 1)]


def build_day_refresh_sensor(
    settings: Settings,
    wide_keys: Sequence[dg.AssetKey],
    products: Sequence[DayProduct],
    corrections_key: dg.AssetKey | None = None,
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """The ``day_products_refresh`` sensor over ``products`` (see the module docstring)."""
    all_keys = sorted({k for p in products for k in p.keys}, key=lambda k: k.to_user_string())
    partitions = day_partitions(settings)
    ships = set(settings.ships)

    @dg.sensor(
        name=SENSOR_NAME,
        target=dg.AssetSelection.assets(*all_keys),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Refreshes a (day, ship) of the day products (Parquet/ClickHouse exports, …) when one of "
            "its wide hours is materialised again after the product read it (late rows, corrections, "
            "re-runs); products never made are left alone, today (not ended) is never requested. "
            "See n2w_pipeline/defs/automation.py."
        ),
    )
    def day_products_refresh(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = _Cursor.load(context.cursor)
        today = dt.datetime.now(dt.UTC).date()
        changes = {
            pair: sid for pair, sid in _changes(context, settings, wide_keys, corrections_key, cursor).items()
            if pair[0] in ships and pair[1] < today
            and partitions.has_partition_key(str(day_key(*pair)))
        }
        wanted: dict[tuple[str, dt.date], set[dg.AssetKey]] = defaultdict(set)
        marks: dict[tuple[str, dt.date], int] = {}
        if changes:
            for product in products:
                for key in product.keys:
                    for pair in _stale(context.instance, key, changes):
                        wanted[pair].add(key)
                        marks[pair] = changes[pair]
        queued = _queued(context.instance) if wanted else set()
        requests = [
            dg.RunRequest(
                run_key=f"refresh:{day:{DAY_FMT}}|{ship}:{marks[(ship, day)]}",
                partition_key=str(day_key(ship, day)),
                asset_selection=sorted(keys, key=lambda k: k.to_user_string()),
                tags={REFRESH_TAG: "wide_changed"},
            )
            for (ship, day), keys in sorted(wanted.items())
            if str(day_key(ship, day)) not in queued
        ]
        daily = sorted({k for p in products if p.request_finished_days for k in p.keys},
                       key=lambda k: k.to_user_string())
        if daily:
            for day in _finished_days(settings, cursor, today):
                requests += [
                    dg.RunRequest(run_key=f"finished:{day:{DAY_FMT}}|{ship}",
                                  partition_key=str(day_key(ship, day)),
                                  asset_selection=daily, tags={REFRESH_TAG: "finished_day"})
                    for ship in settings.ships if partitions.has_partition_key(str(day_key(ship, day)))
                ]
        if not requests:
            reason = f"{len(changes)} changed (ship, day) partition(s), none made before the change"
            return dg.SensorResult(skip_reason=reason if changes else "no wide change", cursor=cursor.dump())
        shown = ", ".join(r.partition_key or "" for r in requests[:20])
        context.log.info(f"{len(requests)} run(s): {shown}")
        return dg.SensorResult(run_requests=requests, cursor=cursor.dump())

    return day_products_refresh
