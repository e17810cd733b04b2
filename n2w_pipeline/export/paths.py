"""Where exported data lives: the Parquet layout under ``N2W_EXPORT_DIR`` and the embedded
ClickHouse's folder.

Parquet layout (hive style, one file per channel group × ship × day)::

    <N2W_EXPORT_DIR>/<table group>/ship_id=<ship>/date=<YYYY-MM-DD>/<ship>_<YYYY-MM-DD>.parquet

``<table group>`` is the group's asset name (``wide_2_engine_generator``), the same name as
its ClickHouse table. A file holds ``created_time``, ``ship_id`` and one float64 column per
channel of the list at export time, named like the PostgreSQL column. A day without rows still
gets a file (0 rows, full schema), so "the day's Parquet exists" is true for every exported
day. Files are written under a temporary name in the same folder (``.<name>.tmp-<id>``,
hidden: hive readers skip dot files) and renamed, so a reader never sees half a file.

Readers: ``pl.scan_parquet("<dir>/wide_2_engine_generator/**/*.parquet")`` (Polars),
``SELECT … FROM file('<dir>/wide_2_engine_generator/**/*.parquet')`` (ClickHouse / chDB),
DuckDB's ``read_parquet(…, hive_partitioning=true)``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from n2w_pipeline.channels import ChannelGroup
from n2w_pipeline.config import Settings

EXPORT_SUBDIR = "export"
CLICKHOUSE_SUBDIR = "clickhouse"
DAY_FMT = "%Y-%m-%d"


def export_root(settings: Settings) -> Path:
    """``N2W_EXPORT_DIR``, else ``<N2W_STATE_DIR>/export``."""
    return Path(settings.export_dir) if settings.export_dir else Path(settings.state_dir) / EXPORT_SUBDIR


def clickhouse_root(settings: Settings) -> Path:
    """``N2W_CLICKHOUSE_PATH``, else ``<N2W_STATE_DIR>/clickhouse``: the embedded chDB's data."""
    if settings.clickhouse_path:
        return Path(settings.clickhouse_path)
    return Path(settings.state_dir) / CLICKHOUSE_SUBDIR


def group_dir(settings: Settings, group: ChannelGroup) -> Path:
    """The folder of one channel group's files (every ship, every day)."""
    return export_root(settings) / group.asset_name


def parquet_path(settings: Settings, group: ChannelGroup, ship: str, day: dt.date) -> Path:
    """The Parquet file of ``group`` × ``ship`` × ``day`` (it may not exist yet)."""
    stamp = day.strftime(DAY_FMT)
    return group_dir(settings, group) / f"ship_id={ship}" / f"date={stamp}" / f"{ship}_{stamp}.parquet"
