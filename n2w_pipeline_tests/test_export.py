"""Exports for real: generated narrow rows → wide assets → Parquet files and chDB tables through
Dagster runs, read back with Polars and ClickHouse SQL and compared with the wide tables."""

import datetime as dt
import hashlib
from dataclasses import replace
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from psycopg import sql

from n2w_pipeline.channels import ChannelGroup, load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.automation import build_day_refresh_sensor
from n2w_pipeline.defs.exports import build_export_assets, export_product
from n2w_pipeline.defs.partitions import day_key
from n2w_pipeline.defs.resources import N2WClickHouse, N2WDatabase
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline.export.clickhouse import ChdbBackend, ident
from n2w_pipeline.export.paths import parquet_path
from n2w_pipeline.generate import generate
from n2w_pipeline_tests.helpers import hour_key, wide_cells

SHIP = "IMO9976903"
D = dt.date(2025, 3, 1)
H = dt.datetime(2025, 3, 1, 10)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def xs(settings: Settings, tmp_path: Path) -> Settings:
    return replace(settings, export_dir=tmp_path / "export", clickhouse_path=tmp_path / "ch",
                   export_retries=2, export_retry_seconds=0.01, slice_hours=12)


def subset(catalog, per_group: int = 40) -> list[str]:  # noqa: ANN001
    """A few channels of every group (fast to generate; the tables keep all their columns)."""
    return [ch for g in catalog.groups for ch in g.channels[:per_group]]


def run_wide_hours(s: Settings, catalog, instance, first: dt.datetime, last: dt.datetime) -> None:  # noqa: ANN001
    result = dg.materialize(
        [build_wide_assets(s, catalog)], instance=instance,
        tags={"dagster/asset_partition_range_start": hour_key(SHIP, first),
              "dagster/asset_partition_range_end": hour_key(SHIP, last)},
        resources={"n2w_db": N2WDatabase(url=s.database_url)},
    )
    assert result.success


def export(s: Settings, catalog, instance, day: dt.date, selection=None, ch_url=None):  # noqa: ANN001, ANN201
    return dg.materialize(
        [build_export_assets(s, catalog)], instance=instance, partition_key=str(day_key(SHIP, day)),
        selection=selection, raise_on_error=False,
        resources={"n2w_db": N2WDatabase(url=s.database_url),
                   "n2w_clickhouse": N2WClickHouse(url=ch_url, path=str(s.clickhouse_path))},
    )


def frame_cells(frame: pl.DataFrame, group: ChannelGroup) -> tuple[set, dict]:
    """(row times, non-NULL cells keyed by channel id) of an exported frame."""
    times = set(frame["created_time"].to_list())
    cells = {}
    for ch, col in zip(group.channels, group.columns, strict=True):
        if col in frame.columns:
            for t, v in frame.select("created_time", col).drop_nulls().iter_rows():
                cells[(t, ch)] = v
    return times, cells


def ch_frame(s: Settings, group: ChannelGroup, day: dt.date) -> pl.DataFrame:
    """The ship-day as ClickHouse holds it (times back to naive UTC)."""
    b = ChdbBackend(s.clickhouse_path)
    try:
        t = b.query_arrow(
            f"SELECT * FROM {ident('n2w')}.{ident(group.asset_name)} WHERE ship_id = {{s:String}} "
            "AND toDate(created_time) = {d:Date} ORDER BY created_time", {"s": SHIP, "d": day.isoformat()})
    finally:
        b.close()
    frame = pl.from_arrow(t)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col("created_time").dt.replace_time_zone(None))


def part_names(s: Settings, group: ChannelGroup) -> list[str]:
    """The active parts of the group's ClickHouse table: a day replaced gets new ones."""
    b = ChdbBackend(s.clickhouse_path)
    try:
        t = b.query_arrow("SELECT name FROM system.parts WHERE database = 'n2w' AND table = {t:String} "
                          "AND active ORDER BY name", {"t": group.asset_name})
    finally:
        b.close()
    return [str(v) for v in t.column(0).to_pylist()]


def day_cells(conn, s: Settings, group: ChannelGroup, day: dt.date) -> tuple[set, dict]:  # noqa: ANN001
    times, cells = wide_cells(conn, s, group, SHIP)
    keep = {t for t in times if t.date() == day}
    return keep, {k: v for k, v in cells.items() if k[0] in keep}


def checks_passed(result) -> dict[str, bool]:  # noqa: ANN001
    return {e.asset_check_evaluation_data.asset_key.to_user_string(): e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_exports_equal_the_wide_tables_reexport_is_idempotent_and_a_corrected_day_refreshes(xs, conn):
    s = xs
    catalog = load_catalog(s.channel_lists_dir)
    generate(conn, s, catalog, [SHIP], H, H + 2 * HOUR, seed=7, channels=subset(catalog))
    generate(conn, s, catalog, [SHIP], H + 14 * HOUR, H + 15 * HOUR, seed=8, channels=subset(catalog, 5))
    with dg.instance_for_test() as instance:
        run_wide_hours(s, catalog, instance, H, H + HOUR)
        run_wide_hours(s, catalog, instance, H + 14 * HOUR, H + 14 * HOUR)  # the next day's 00:00
        result = export(s, catalog, instance, D)
        assert result.success
        assert checks_passed(result) == {f"{kind}_{g.number}_{g.name}": True
                                         for g in catalog.groups for kind in ("parquet", "clickhouse")}
        md = {m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
              for m in result.asset_materializations_for_node("wide_to_export")}
        for g in catalog.groups:
            times, cells = day_cells(conn, s, g, D)
            assert len(times) == 480  # two hours of 15-s rows; the next day's hour is not in D
            path = parquet_path(s, g, SHIP, D)
            frame = pl.read_parquet(path)
            assert frame.columns == ["created_time", "ship_id", *g.columns]
            assert set(frame.schema.values()) == {pl.Datetime("us"), pl.String, pl.Float64}
            assert frame["ship_id"].unique().to_list() == [SHIP]
            assert frame_cells(frame, g) == (times, cells)  # Parquet == PostgreSQL, cell for cell
            assert frame_cells(ch_frame(s, g, D), g) == (times, cells)  # ClickHouse too
            pmd = md[f"parquet_{g.number}_{g.name}"]
            assert pmd["rows"] == 480 and pmd["bytes"] == path.stat().st_size
            assert pmd["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert md[f"clickhouse_{g.number}_{g.name}"]["ship_days_unchanged"] == 0  # loaded, not kept
            assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind

        # a re-export leaves ClickHouse unchanged (no duplicate row) and the files equal
        g2 = catalog.group(2)
        before, file_before = ch_frame(s, g2, D), pl.read_parquet(parquet_path(s, g2, SHIP, D))
        parts = {g.number: part_names(s, g) for g in catalog.groups}
        again = export(s, catalog, instance, D)
        assert again.success
        assert ch_frame(s, g2, D).equals(before) and before.height == 480
        assert [m.metadata["ship_days_unchanged"].value for m in again.asset_materializations_for_node(
            "wide_to_export") if m.asset_key.to_user_string().startswith("clickhouse")] == [1, 1, 1]
        assert {g.number: part_names(s, g) for g in catalog.groups} == parts  # left as it was
        assert pl.read_parquet(parquet_path(s, g2, SHIP, D)).equals(file_before)

        # late rows correct one hour: its wide hour is re-materialised; the refresh sensor asks
        # for exactly that ship-day, and the requested run refreshes the file and the table
        sensor = build_day_refresh_sensor(s, sorted(build_wide_assets(s, catalog).keys),
                                          [export_product(catalog)])
        with dg.build_sensor_context(instance=instance) as ctx:
            first = sensor(ctx)
        assert not first.run_requests  # the exports already saw every wide hour
        channel = g2.channels[0]
        conn.execute(sql.SQL("UPDATE {} SET double_v = 12345.5, value_format = 'Decimal' "
                             "WHERE ship_id = %s AND data_channel_id = %s AND created_time = %s").format(
            sql.Identifier(s.source_schema, s.source_table)), (SHIP, channel, H + HOUR))
        run_wide_hours(s, catalog, instance, H + HOUR, H + HOUR)
        with dg.build_sensor_context(instance=instance, cursor=first.cursor) as ctx:
            tick = sensor(ctx)
        assert [r.partition_key for r in tick.run_requests] == [str(day_key(SHIP, D))]
        request = tick.run_requests[0]
        assert export(s, catalog, instance, D, selection=request.asset_selection).success
        # only the changed group's day is replaced in ClickHouse; the others stay as they were
        now = {g.number: part_names(s, g) for g in catalog.groups}
        assert now[2] != parts[2] and {n: now[n] for n in (1, 3)} == {n: parts[n] for n in (1, 3)}
        col = g2.columns[0]
        for frame in (pl.read_parquet(parquet_path(s, g2, SHIP, D)), ch_frame(s, g2, D)):
            got = frame.filter(pl.col("created_time") == H + HOUR)[col].to_list()
            assert got == [12345.5]
            assert frame.height == 480


def test_a_channel_appended_to_a_list_becomes_a_column_older_data_reads_null(xs, conn, lists_dir):
    s = xs
    catalog = load_catalog(s.channel_lists_dir)
    generate(conn, s, catalog, [SHIP], H, H + HOUR, seed=3, channels=subset(catalog, 3))
    with dg.instance_for_test() as instance:
        run_wide_hours(s, catalog, instance, H, H)
        assert export(s, catalog, instance, D).success
        new = "/n2w_test/new/channel"
        path = lists_dir / "3_navigation_ship.txt"
        path.write_text(path.read_text() + f"\n{new}\n")
        catalog = load_catalog(lists_dir)
        g3 = catalog.group(3)
        nxt = H + dt.timedelta(days=1)
        generate(conn, s, catalog, [SHIP], nxt, nxt + HOUR, seed=4, channels=[g3.channels[0], new])
        run_wide_hours(s, catalog, instance, nxt, nxt)
        assert export(s, catalog, instance, D + dt.timedelta(days=1)).success
    old_file, new_file = (parquet_path(s, g3, SHIP, d) for d in (D, D + dt.timedelta(days=1)))
    assert new not in pl.read_parquet(old_file).columns  # files already written stay as they are
    assert pl.read_parquet(new_file)[new].null_count() < 240
    # the newest file's schema, older files get the new column as NULL
    both = pl.scan_parquet(str(s.export_dir / g3.asset_name / "**" / "*.parquet"),
                           schema=pl.read_parquet_schema(new_file), missing_columns="insert",
                           ).select("created_time", new).collect()
    old_rows = both.filter(pl.col("created_time") < nxt)
    assert old_rows.height == 240 and old_rows[new].null_count() == 240
    ch_old = ch_frame(s, g3, D)
    assert new in ch_old.columns and ch_old[new].null_count() == 240  # ALTER … ADD COLUMN
    ch_new = ch_frame(s, g3, D + dt.timedelta(days=1))
    _, cells = day_cells(conn, s, g3, D + dt.timedelta(days=1))
    assert {(t, v) for t, v in ch_new.select("created_time", new).drop_nulls().iter_rows()} == {
        (t, v) for (t, ch), v in cells.items() if ch == new}


def test_the_schedule_requests_yesterday_for_every_ship(settings):
    from n2w_pipeline.definitions import build_definitions
    from n2w_pipeline.defs.schedules import EXPORT_SCHEDULE

    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def(EXPORT_SCHEDULE)
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    tick = dt.datetime(2025, 3, 2, 2, 0, tzinfo=dt.UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick) as ctx:
        requests = schedule(ctx)
    assert sorted(r.partition_key for r in requests) == sorted(f"2025-03-01|{s}" for s in settings.ships)
    assert all(r.asset_selection is None for r in requests)  # the schedule's target: every export asset


def test_an_unwritable_export_folder_fails_in_one_line_after_retries(xs, conn, tmp_path):
    s = xs
    catalog = load_catalog(s.channel_lists_dir)
    generate(conn, s, catalog, [SHIP], H, H + HOUR, seed=5, channels=subset(catalog, 2))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with dg.instance_for_test() as instance:
        run_wide_hours(s, catalog, instance, H, H)
        # the export folder cannot be created (its parent is a file): fails after 2 attempts
        bad = replace(s, export_dir=blocker / "export")
        result = export(bad, catalog, instance, D, selection=[dg.AssetKey("parquet_3_navigation_ship")])
        assert not result.success
        msg = _failure(result)
        assert msg.startswith(f"export of {SHIP} 2025-03-01 to parquet failed after 2 attempt(s): ")
        assert str(blocker) in msg and "\n" not in msg
        assert not parquet_path(s, catalog.group(3), SHIP, D).exists()


def _failure(result) -> str:  # noqa: ANN001
    from n2w_pipeline.commands.export import _failure as failure

    return failure(result)


def test_a_range_of_days_in_one_run_overlaps_them_and_a_day_that_fails_late_is_retried_alone(
        xs, conn, monkeypatch):
    """``export_days`` reads the next day while this one finishes; a transient failure while a
    day is published (after the next day was read) retries that day on its own, and the run
    ends with every day exported, reconciled, and no stage table or temporary file left."""
    from n2w_pipeline.export import attempt

    s = xs
    catalog = load_catalog(s.channel_lists_dir)
    days = [D, D + dt.timedelta(days=1), D + dt.timedelta(days=2)]
    for i, day in enumerate(days):
        first = dt.datetime.combine(day, dt.time(10))
        generate(conn, s, catalog, [SHIP], first, first + HOUR, seed=20 + i, channels=subset(catalog, 8))
    completed: list[dt.date] = []
    complete = attempt.DayAttempt.complete

    def flaky(self):  # noqa: ANN001, ANN202
        completed.append(self.day)
        if self.day == days[0] and completed.count(days[0]) == 1:
            raise OSError("injected: the disk went away while publishing")
        return complete(self)

    monkeypatch.setattr(attempt.DayAttempt, "complete", flaky)
    with dg.instance_for_test() as instance:
        for day in days:
            hour = dt.datetime.combine(day, dt.time(10))
            run_wide_hours(s, catalog, instance, hour, hour)
        result = dg.materialize(
            [build_export_assets(s, catalog)], instance=instance, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": str(day_key(SHIP, days[0])),
                  "dagster/asset_partition_range_end": str(day_key(SHIP, days[-1]))},
            resources={"n2w_db": N2WDatabase(url=s.database_url),
                       "n2w_clickhouse": N2WClickHouse(path=str(s.clickhouse_path))})
        assert result.success
        assert all(checks_passed(result).values()) and len(checks_passed(result)) == 6
    # day 1 failed once after day 2 had been read, then ran again on its own
    assert completed == [days[0], days[0], days[1], days[2]]
    g = catalog.group(1)
    for day in days:
        times, cells = day_cells(conn, s, g, day)
        assert len(times) == 240
        assert frame_cells(pl.read_parquet(parquet_path(s, g, SHIP, day)), g) == (times, cells)
        assert frame_cells(ch_frame(s, g, day), g) == (times, cells)
        assert not list(parquet_path(s, g, SHIP, day).parent.glob(".*tmp*"))
    b = ChdbBackend(s.clickhouse_path)
    try:
        tables = b.query_arrow("SELECT name FROM system.tables WHERE database = 'n2w'").column(0).to_pylist()
    finally:
        b.close()
    assert sorted(tables) == sorted(g.asset_name for g in catalog.groups)  # no stage left behind
