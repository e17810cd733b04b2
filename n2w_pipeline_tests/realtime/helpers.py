"""Shared by the realtime tests: times, inserts of narrow rows, and the real sensor
evaluated tick by tick."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import psycopg
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.partitions import split_key, wide_partitions
from n2w_pipeline.defs.realtime import SENSOR_NAME, build_realtime_sensor
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline.hours import HOUR
from n2w_pipeline_tests.helpers import hour_key, run_wide

H0 = dt.datetime(2025, 3, 1, 0, 0)
S = dt.timedelta(seconds=15)
NOW = dt.datetime(2025, 3, 1, 12, 30, tzinfo=dt.UTC)  # "now" for ticks run through tick()

__all__ = ["H0", "HOUR", "NOW", "S", "Sensor", "insert", "some_channels"]


def some_channels(catalog: ChannelCatalog, per_group: int = 8) -> list[str]:
    return [ch for g in catalog.groups for ch in g.channels[:per_group]]


def insert(conn: psycopg.Connection, settings: Settings, rows: list[tuple]) -> None:
    """rows: (ship, channel, created_time, double_v[, server_created_time]) as Decimal values."""
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (ship_id, data_channel_id, created_time, double_v, value_format, "
                "server_created_time) VALUES (%s, %s, %s, %s, 'Decimal', %s)"
            ).format(sql.Identifier(*settings.source_qualified)),
            [(*r, None) if len(r) == 4 else r for r in rows],
        )


class Sensor:
    """The real sensor of ``build_definitions``-style wiring, evaluated tick by tick."""

    def __init__(self, settings: Settings, catalog: ChannelCatalog, instance: dg.DagsterInstance):
        self.settings = settings
        self.partitions = wide_partitions(settings)
        wide = build_wide_assets(settings, catalog)
        self.sensor = build_realtime_sensor(settings, wide)
        self.db = N2WDatabase(url=settings.database_url)
        self.defs = dg.Definitions(assets=[wide], sensors=[self.sensor], resources={"n2w_db": self.db})
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> tuple[list[dg.RunRequest], str | None]:
        ctx = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, sensor_name=SENSOR_NAME, definitions=self.defs,
            resources={"n2w_db": self.db},
        )
        data = self.sensor.evaluate_tick(ctx)
        self.cursor = data.cursor
        return list(data.run_requests or []), data.skip_message

    def parts(self, requests: list[dg.RunRequest]) -> list[str]:
        """Every partition the requests cover (a range run: one hour × a ship range)."""
        out = []
        ships = list(self.settings.ships)
        for r in requests:
            if r.partition_key is not None:
                out.append(str(r.partition_key))
                continue
            a, hour = split_key(self.partitions, r.tags["dagster/asset_partition_range_start"])
            b, _ = split_key(self.partitions, r.tags["dagster/asset_partition_range_end"])
            out += [hour_key(s, hour) for s in ships[ships.index(a): ships.index(b) + 1]]
        return out

    def execute(self, r: dg.RunRequest, catalog: ChannelCatalog, raise_on_error: bool = True) -> bool:
        """Run what the request asks for, for real (partition or range tags), tagged as the
        daemon tags a sensor's run (the sensor looks at its runs' outcomes)."""
        tags = {**r.tags, "dagster/sensor_name": SENSOR_NAME, "dagster/run_key": r.run_key or ""}
        if r.partition_key is not None:
            return run_wide(self.settings, catalog, partition_key=r.partition_key, instance=self.instance,
                            tags=tags, raise_on_error=raise_on_error).success
        return run_wide(self.settings, catalog, first=r.tags["dagster/asset_partition_range_start"],
                        last=r.tags["dagster/asset_partition_range_end"], instance=self.instance,
                        tags=tags, raise_on_error=raise_on_error).success
