"""The day-products refresh sensor on a real Dagster instance: real materialisation events of
the wide assets' keys and a real day-partitioned product that records its watermark."""


import datetime as dt
import json

import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.defs.automation import (
    CATCH_UP_DAYS,
    WATERMARK,
    DayProduct,
    build_day_refresh_sensor,
    wide_watermark,
)
from n2w_pipeline.defs.partitions import day_key, day_partitions, partition_key

SHIPS = ("IMO1", "IMO2")
WIDE = [dg.AssetKey("wide_1_a"), dg.AssetKey("wide_2_b")]
CORR = dg.AssetKey("csv_corrections")
DAY = dt.date(2025, 3, 1)


def _settings() -> Settings:
    return Settings(ships=SHIPS, partition_start="2025-01-01-00:00", hulls={"H1": "IMO1"})


def _product(settings: Settings, name: str = "daily_thing") -> dg.AssetsDefinition:
    @dg.asset(name=name, partitions_def=day_partitions(settings))
    def product(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        mark = wide_watermark(context.instance, [*WIDE, CORR])
        return dg.MaterializeResult(metadata={WATERMARK: mark})

    return product


def _wide_event(instance: dg.DagsterInstance, key: dg.AssetKey, ship: str, hour: dt.datetime) -> None:
    event = dg.AssetMaterialization(key, partition=str(partition_key(ship, hour)))
    instance.report_runless_asset_event(event)


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None):
    with dg.build_sensor_context(instance=instance, cursor=cursor) as ctx:
        result = sensor(ctx)
    return result, result.cursor


def _keys(result) -> list[tuple[str, list[str]]]:  # noqa: ANN001
    return sorted((r.partition_key, sorted(k.to_user_string() for k in r.asset_selection))
                  for r in result.run_requests or [])


def test_a_wide_change_after_the_product_requests_only_that_day_and_ship():
    settings = _settings()
    product = _product(settings)
    sensor = build_day_refresh_sensor(settings, WIDE, [DayProduct((product.key,))], corrections_key=CORR)
    with dg.instance_for_test() as instance:
        for h in range(24):
            _wide_event(instance, WIDE[0], "IMO1", dt.datetime(2025, 3, 1, h))
        # never exported: a wide change requests nothing (and the cursor moves on)
        result, cursor = _tick(sensor, instance, None)
        assert not result.run_requests
        dg.materialize([product], instance=instance, partition_key=str(day_key("IMO1", DAY)))
        dg.materialize([product], instance=instance, partition_key=str(day_key("IMO2", DAY)))
        result, cursor = _tick(sensor, instance, cursor)
        assert not result.run_requests  # the product saw every change
        _wide_event(instance, WIDE[1], "IMO1", dt.datetime(2025, 3, 1, 17))  # late rows, one hour
        _wide_event(instance, WIDE[0], "IMO2", dt.datetime(2025, 3, 2, 3))   # a day never exported
        result, cursor2 = _tick(sensor, instance, cursor)
        assert _keys(result) == [("2025-03-01|IMO1", ["daily_thing"])]
        # the same tick again (a retried evaluation) requests the same run key: no duplicate run
        again, _ = _tick(sensor, instance, cursor)
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in result.run_requests]
        dg.materialize([product], instance=instance, partition_key=str(day_key("IMO1", DAY)))
        result, _ = _tick(sensor, instance, cursor2)
        assert not result.run_requests  # the refresh covered it: no loop


def test_a_change_while_the_product_was_reading_is_not_lost():
    """The product's watermark predates a wide event recorded before the product's own event."""
    settings = _settings()

    @dg.asset(name="slow_thing", partitions_def=day_partitions(settings))
    def slow(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        mark = wide_watermark(context.instance, WIDE)
        _wide_event(context.instance, WIDE[0], "IMO1", dt.datetime(2025, 3, 1, 5))  # lands mid-run
        return dg.MaterializeResult(metadata={WATERMARK: mark})

    sensor = build_day_refresh_sensor(settings, WIDE, [DayProduct((slow.key,))])
    with dg.instance_for_test() as instance:
        _wide_event(instance, WIDE[0], "IMO1", dt.datetime(2025, 3, 1, 4))
        _, cursor = _tick(sensor, instance, None)
        dg.materialize([slow], instance=instance, partition_key=str(day_key("IMO1", DAY)))
        result, _ = _tick(sensor, instance, cursor)
        assert _keys(result) == [("2025-03-01|IMO1", ["slow_thing"])]


def test_a_correction_file_refreshes_the_exported_days_of_its_month():
    settings = _settings()
    product = _product(settings)
    sensor = build_day_refresh_sensor(settings, WIDE, [DayProduct((product.key,))], corrections_key=CORR)
    with dg.instance_for_test() as instance:
        _, cursor = _tick(sensor, instance, None)
        for day in (dt.date(2025, 2, 10), dt.date(2025, 3, 10)):
            dg.materialize([product], instance=instance, partition_key=str(day_key("IMO1", day)))
        instance.add_dynamic_partitions("correction_files", ["H1/H1_2025-02.csv"])
        instance.report_runless_asset_event(dg.AssetMaterialization(CORR, partition="H1/H1_2025-02.csv"))
        result, _ = _tick(sensor, instance, cursor)
        assert _keys(result) == [("2025-02-10|IMO1", ["daily_thing"])]


def test_finished_days_are_requested_once_for_every_ship():
    settings = _settings()
    product = _product(settings)
    daily = DayProduct((product.key,), request_finished_days=True)
    sensor = build_day_refresh_sensor(settings, WIDE, [daily])
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    with dg.instance_for_test() as instance:
        result, cursor = _tick(sensor, instance, None)
        assert _keys(result) == [(f"{yesterday:%Y-%m-%d}|{s}", ["daily_thing"]) for s in SHIPS]
        again, _ = _tick(sensor, instance, cursor)
        assert not again.run_requests
        # a daemon that was down for two weeks catches up CATCH_UP_DAYS days, not more
        old = json.dumps({"after": {}, "day": (yesterday - dt.timedelta(days=14)).isoformat()})
        late, _ = _tick(sensor, instance, old)
        assert len(late.run_requests) == CATCH_UP_DAYS * len(SHIPS)
