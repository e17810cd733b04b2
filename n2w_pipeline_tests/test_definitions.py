"""The code location loads, and its shape changes only on purpose."""

import subprocess
import sys

import dagster as dg

from n2w_pipeline.cli import COMMANDS, build_parser
from n2w_pipeline.config import Settings
from n2w_pipeline.definitions import build_definitions


def test_definitions_resolve_with_expected_assets(settings):
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == [
        "clickhouse_1_auxiliary_systems", "clickhouse_2_engine_generator", "clickhouse_3_navigation_ship",
        "csv_corrections", "narrow_timeseries",
        "parquet_1_auxiliary_systems", "parquet_2_engine_generator", "parquet_3_navigation_ship",
        "rollup_daily", "rollup_hourly",
        "wide_1_auxiliary_systems", "wide_2_engine_generator", "wide_3_navigation_ship",
    ]
    exports = defs.resolve_assets_def("parquet_2_engine_generator")
    assert [d.name for d in exports.partitions_def.partitions_defs] == ["day", "ship"]
    assert "daily_export" in {s.name for s in defs.schedules}
    assert "day_products_refresh" in {s.name for s in defs.sensors}
    wide = defs.resolve_assets_def("wide_2_engine_generator")
    pd = wide.partitions_def
    assert isinstance(pd, dg.MultiPartitionsDefinition)
    assert [d.name for d in pd.partitions_defs] == ["hour", "ship"]
    assert wide.backfill_policy == dg.BackfillPolicy.multi_run(settings.run_hours)
    spec = next(s for s in wide.specs if s.key.to_user_string() == "wide_2_engine_generator")
    assert spec.metadata["column_count"] == 656
    assert spec.description and "engine generator" in spec.description


def test_module_level_defs_load():
    from n2w_pipeline import definitions

    assert isinstance(definitions.defs, dg.Definitions)


def test_settings_from_env():
    s = Settings.from_env({"N2W_SHIPS": "A, B", "N2W_SLICE_HOURS": "3", "N2W_COL_CHANNEL": "chan",
                           "N2W_HULLS": "H1=IMO1,H2=IMO2"})
    assert s.ships == ("A", "B") and s.slice_hours == 3 and s.columns.channel == "chan"
    assert s.hulls == {"H1": "IMO1", "H2": "IMO2"}
    assert s.table_name("IMO9976903", 2) == "tbl_data_timeseries_imo9976903_2"


def test_every_command_has_help():
    parser = build_parser()
    assert parser.format_help()
    for name in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "n2w_pipeline.cli", name.replace("_", "-"), "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "usage: n2w" in out and len(out) > 200


def test_a_day_partition_reads_its_24_wide_hours() -> None:
    import datetime as dt

    from n2w_pipeline.defs.partitions import (
        day_key,
        day_partitions,
        hours_to_days,
        split_day_key,
        split_key,
        wide_partitions,
    )

    s = Settings(ships=("IMO1", "IMO2"))
    days, hours = day_partitions(s), wide_partitions(s)
    assert split_day_key(days, "2025-03-01|IMO2") == ("IMO2", dt.date(2025, 3, 1))
    sub = days.empty_subset().with_partition_keys([day_key("IMO1", dt.date(2025, 3, 1))])
    up = hours_to_days().get_upstream_mapped_partitions_result_for_partitions(sub, days, hours)
    got = sorted(split_key(hours, k) for k in up.partitions_subset.get_partition_keys())
    assert got == [("IMO1", dt.datetime(2025, 3, 1, h)) for h in range(24)]
