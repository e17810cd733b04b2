"""Storage lifecycle: time partitions, rollups, retention, migration — on a real PostgreSQL
with real Dagster materialisations, every value checked against an independent computation."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings, parse_retention
from n2w_pipeline.defs.automation import DayProduct, build_day_refresh_sensor
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.defs.rollups import DAILY_KEY, HOURLY_KEY, build_rollup_assets
from n2w_pipeline.defs.wide_assets import build_wide_assets, wide_asset_key
from n2w_pipeline.generate import generate
from n2w_pipeline.storage.partitioning import list_partitions, periods, table_kind
from n2w_pipeline.storage.rollups import ROLLUP_DAILY, ROLLUP_HOURLY, reconcile
from n2w_pipeline_tests.helpers import hour_key, run_wide, sql_reference, wide_cells

SHIP = "IMO9976903"
H0 = dt.datetime(2025, 2, 28, 22, 0)  # 4 hours across the February → March boundary
H_END = dt.datetime(2025, 3, 1, 2, 0)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def small(settings: Settings, tmp_path: Path, conn: psycopg.Connection):
    """Two small channel groups and 4 generated hours of one ship across a month boundary."""
    lists = tmp_path / "small_lists"
    lists.mkdir()
    (lists / "1_small.txt").write_text("/a\n/b\n/c\n/d\n")
    (lists / "2_other.txt").write_text("/e\n/f\n")
    s = replace(settings, channel_lists_dir=lists)
    catalog = load_catalog(lists)
    generate(conn, s, catalog, [SHIP], H0, H_END, seed=3)
    return s, catalog


def test_periods_and_retention_parsing():
    t = dt.datetime(2025, 5, 14, 13)
    assert periods(t, t + HOUR, "month") == [(dt.datetime(2025, 5, 1), dt.datetime(2025, 6, 1))]
    assert periods(t, t + HOUR, "quarter") == [(dt.datetime(2025, 4, 1), dt.datetime(2025, 7, 1))]
    assert periods(t, t + HOUR, "week") == [(dt.datetime(2025, 5, 12), dt.datetime(2025, 5, 19))]
    assert periods(dt.datetime(2025, 12, 31), dt.datetime(2026, 1, 2), "month") == [
        (dt.datetime(2025, 12, 1), dt.datetime(2026, 1, 1)),
        (dt.datetime(2026, 1, 1), dt.datetime(2026, 2, 1))]
    assert parse_retention("18 months") == (18, "month")
    assert parse_retention(" 2 years ") == (2, "year")
    assert parse_retention("off") is None
    with pytest.raises(ValueError, match="N2W_RETENTION"):
        parse_retention("18 moons")
    with pytest.raises(ValueError, match="N2W_PARTITION_INTERVAL"):
        Settings.from_env({"N2W_PARTITION_INTERVAL": "day"})


def _rows_by_partition(conn, settings, table) -> dict[str, int]:
    out = {}
    for p in list_partitions(conn, settings.target_schema, table):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(settings.target_schema, p.name))).fetchone()
        out[p.name] = row[0]
    return out


def materialize_rollups(settings, catalog, ship, days, instance=None) -> dg.ExecuteInProcessResult:
    wide = build_wide_assets(settings, catalog)
    rollups = build_rollup_assets(settings, catalog)
    keys = [f"{d:%Y-%m-%d}|{ship}" for d in days]
    tags = ({"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
            if len(keys) > 1 else {})

    def go(inst):
        return dg.materialize([wide, rollups], instance=inst, tags=tags, selection=list(rollups.keys),
                              partition_key=keys[0] if len(keys) == 1 else None,
                              resources={"n2w_db": N2WDatabase(url=settings.database_url)})

    if instance is not None:
        return go(instance)
    with dg.instance_for_test() as inst:
        return go(inst)


def python_rollups(conn, settings, catalog, ship, trunc: str) -> dict[tuple[dt.datetime, str], tuple]:
    """(bucket, channel) → (n, avg, min, max) from the wide cells, computed in Python."""
    acc: dict[tuple[dt.datetime, str], list[float]] = {}
    for g in catalog.groups:
        _, cells = wide_cells(conn, settings, g, ship)
        for (t, ch), v in cells.items():
            b = t.replace(minute=0, second=0, microsecond=0)
            if trunc == "day":
                b = b.replace(hour=0)
            acc.setdefault((b, ch), []).append(v)
    return {k: (len(v), math.fsum(v) / len(v), min(v), max(v)) for k, v in acc.items()}


def stored_rollups(conn, settings, table, ship) -> dict[tuple[dt.datetime, str], tuple]:
    q = sql.SQL("SELECT bucket, channel_id, n, avg, min, max FROM {} WHERE ship_id = %s")
    rows = conn.execute(q.format(sql.Identifier(settings.target_schema, table)), (ship,)).fetchall()
    return {(b, ch): (n, a, mn, mx) for b, ch, n, a, mn, mx in rows}


def assert_rollups_match(conn, settings, catalog, ship):
    for table, trunc in ((ROLLUP_HOURLY, "hour"), (ROLLUP_DAILY, "day")):
        want = python_rollups(conn, settings, catalog, ship, trunc)
        got = stored_rollups(conn, settings, table, ship)
        assert want and set(got) == set(want), table
        for k, (n, avg, mn, mx) in want.items():
            gn, gavg, gmn, gmx = got[k]
            assert (gn, gmn, gmx) == (n, mn, mx), (table, k)
            assert gavg == pytest.approx(avg, rel=1e-12, abs=1e-12), (table, k)


def test_backfill_across_a_month_boundary_lands_in_two_partitions_and_rollups_follow(small, conn):
    settings, catalog = small
    result = run_wide(settings, catalog, first=hour_key(SHIP, H0), last=hour_key(SHIP, H_END - HOUR))
    assert result.success
    for g in catalog.groups:
        table = settings.table_name(SHIP, g.number)
        assert table_kind(conn, settings.target_schema, table) == "p"
        parts = _rows_by_partition(conn, settings, table)
        assert sorted(parts) == [f"{table}_p20250201", f"{table}_p20250301"]
        assert all(n > 0 for n in parts.values())
        ref_times, ref_cells = sql_reference(conn, settings, g, SHIP, H0, H_END)
        times, cells = wide_cells(conn, settings, g, SHIP)
        assert ref_cells and (times, cells) == (ref_times, ref_cells)
        feb = sum(1 for t in ref_times if t < dt.datetime(2025, 3, 1))
        assert parts[f"{table}_p20250201"] == feb and parts[f"{table}_p20250301"] == len(ref_times) - feb

    with dg.instance_for_test() as instance:
        days = [dt.date(2025, 2, 28), dt.date(2025, 3, 1)]
        r = materialize_rollups(settings, catalog, SHIP, days, instance)
        assert r.success
        checks = r.get_asset_check_evaluations()
        assert len(checks) == 2 and all(c.passed for c in checks)
        assert_rollups_match(conn, settings, catalog, SHIP)

        # a late narrow row for an hour already materialised: re-materialising that wide hour
        # and its day changes exactly that hour's rollup of that channel
        late = H0 + dt.timedelta(minutes=30, seconds=7)
        conn.execute(sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, "
                             "double_v) VALUES (%s, '/a', %s, 'Decimal', 1e6)").format(
            sql.Identifier(*settings.source_qualified)), (SHIP, late))
        before = stored_rollups(conn, settings, ROLLUP_HOURLY, SHIP)
        assert run_wide(settings, catalog, partition_key=hour_key(SHIP, H0), instance=instance).success
        # the day_products_refresh sensor asks for exactly that day's rollups
        sensor = build_day_refresh_sensor(settings, [wide_asset_key(g) for g in catalog.groups],
                                          [DayProduct((HOURLY_KEY, DAILY_KEY))])
        tick = sensor(dg.build_sensor_context(instance=instance))
        assert [(r.partition_key, sorted(k.to_user_string() for k in r.asset_selection))
                for r in tick.run_requests] == [(f"2025-02-28|{SHIP}", ["rollup_daily", "rollup_hourly"])]
        assert materialize_rollups(settings, catalog, SHIP, days[:1], instance).success
        after = stored_rollups(conn, settings, ROLLUP_HOURLY, SHIP)
        changed = {k for k in after if after[k] != before.get(k)}
        assert changed == {(H0, "/a")}
        assert after[(H0, "/a")][0] == before[(H0, "/a")][0] + 1 and after[(H0, "/a")][3] == 1e6
        assert_rollups_match(conn, settings, catalog, SHIP)

        # the check sees a tampered rollup row
        rollup = sql.Identifier(settings.target_schema, ROLLUP_HOURLY)
        conn.execute(sql.SQL("UPDATE {} SET max = max + 1 WHERE ship_id = %s AND channel_id = '/b' "
                             "AND bucket = %s").format(rollup), (SHIP, H0))
        out = reconcile(conn, settings, catalog.groups, SHIP, H0.date(), ROLLUP_HOURLY)
        assert out.differences == 1 and out.first[0]["channel_id"] == "/b"


def test_retention_drops_only_whole_old_months_after_their_export(small, conn, tmp_path, monkeypatch):
    from n2w_pipeline.export.paths import parquet_path
    from n2w_pipeline.storage import retention
    from n2w_pipeline.storage.rollups import ensure_rollup_tables, refresh_day
    from n2w_pipeline.write import corrections_table_name, ensure_support_tables, ensure_wide_table

    settings, catalog = small
    settings = replace(settings, retention=(3, "month"), export_dir=tmp_path / "export")
    g = catalog.group(1)
    s = settings.target_schema
    table, shadow = settings.table_name(SHIP, 1), corrections_table_name(settings, SHIP, 1)
    jan, may = dt.datetime(2025, 1, 1), dt.datetime(2025, 5, 1)
    ensure_support_tables(conn, settings)
    ensure_wide_table(conn, settings, g, SHIP, hours=(jan, may))
    ensure_wide_table(conn, settings, g, SHIP, table=shadow, hours=(jan, may))
    for name in (table, shadow):  # one row every 6 hours, Jan..Apr
        conn.execute(sql.SQL("INSERT INTO {} (created_time, {}) SELECT t, extract(epoch FROM t) FROM "
                             "generate_series(%s::timestamp, %s::timestamp - interval '1 hour', "
                             "interval '6 hours') t")
                     .format(sql.Identifier(s, name), sql.Identifier(g.columns[0])), (jan, may))
    ensure_rollup_tables(conn, settings)
    refresh_day(conn, settings, catalog.groups, SHIP, dt.date(2025, 1, 10))
    rollups_before = stored_rollups(conn, settings, ROLLUP_HOURLY, SHIP)
    kept_before = conn.execute(sql.SQL("SELECT count(*), sum({}) FROM {} WHERE created_time >= '2025-03-01'")
                               .format(sql.Identifier(g.columns[0]), sql.Identifier(s, table))).fetchone()
    # export of January done, February only partly
    for d in range(31):
        path = parquet_path(settings, g, SHIP, dt.date(2025, 1, 1) + dt.timedelta(days=d))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for d in range(27):
        path = parquet_path(settings, g, SHIP, dt.date(2025, 2, 1) + dt.timedelta(days=d))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    now = dt.datetime(2025, 6, 15, 12)  # cutoff 2025-03-15 12:00: January and February only
    found = retention.apply(conn, settings, catalog.groups, now)
    assert [(e.partition.name, e.dropped, bool(e.blocked)) for e in found] == [
        (f"{table}_p20250101", True, False), (f"{table}_p20250201", False, True)]
    assert "2025-02-28" in (found[1].blocked or "")
    assert [p.name for p in list_partitions(conn, s, table)] == [
        f"{table}_p20250201", f"{table}_p20250301", f"{table}_p20250401"]
    assert [p.name for p in list_partitions(conn, s, shadow)] == [
        f"{shadow}_p20250201", f"{shadow}_p20250301", f"{shadow}_p20250401"]

    path = parquet_path(settings, g, SHIP, dt.date(2025, 2, 28))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    # a long query on the table: the drop times out, the partition stays for the next run
    monkeypatch.setattr(retention, "LOCK_TIMEOUT", "200ms")
    with psycopg.connect(settings.database_url) as reader:
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s, table)))
        busy = retention.apply(conn, settings, catalog.groups, now)
    assert [(e.partition.name, e.dropped) for e in busy] == [(f"{table}_p20250201", False)]
    assert "lock timeout" in (busy[0].blocked or "")
    found = retention.apply(conn, settings, catalog.groups, now)
    assert [(e.partition.name, e.dropped) for e in found] == [(f"{table}_p20250201", True)]
    assert [p.name for p in list_partitions(conn, s, table)] == [f"{table}_p20250301", f"{table}_p20250401"]
    kept_after = conn.execute(sql.SQL("SELECT count(*), sum({}) FROM {}").format(
        sql.Identifier(g.columns[0]), sql.Identifier(s, table))).fetchone()
    assert kept_after == kept_before  # March and April untouched, row for row
    assert stored_rollups(conn, settings, ROLLUP_HOURLY, SHIP) == rollups_before  # rollups kept
    assert retention.apply(conn, settings, catalog.groups, now) == []  # nothing left to do


def test_migrate_converts_a_plain_table_month_by_month_keeping_every_cell_and_concurrent_writes(
        small, conn):
    from n2w_pipeline.storage.migrate import migrate_table
    from n2w_pipeline_tests.helpers import table_digest

    settings, catalog = small
    g = catalog.group(1)
    s, table = settings.target_schema, settings.table_name(SHIP, 1)
    t = sql.Identifier(s, table)
    cols = sql.SQL(", ").join(sql.SQL("{} double precision").format(sql.Identifier(c)) for c in g.columns)
    conn.execute(sql.SQL("CREATE TABLE {} (created_time timestamp PRIMARY KEY, {})").format(t, cols))
    first = sql.Identifier(g.columns[0])
    conn.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS 'a long channel id'").format(t, first))
    conn.execute(sql.SQL(
        "INSERT INTO {} SELECT ts, extract(epoch FROM ts), NULLIF(extract(hour FROM ts), 4), -1.5, random() "
        "FROM generate_series('2025-01-15'::timestamp, '2025-03-20', interval '30 minutes') ts").format(t))
    writes = iter([
        "UPDATE {} SET \"/b\" = 42 WHERE created_time = '2025-01-20 10:00'",       # a copied month
        "DELETE FROM {} WHERE created_time = '2025-02-01 00:30'",
        "INSERT INTO {} (created_time, \"/c\") VALUES ('2025-01-31 23:59:59', 7)",
    ])

    def during_copy(message: str) -> None:  # another writer, between the period copies
        for w in (next(writes, None),):
            if w:
                conn.execute(sql.SQL(w).format(t))

    class Stop(Exception):
        pass

    def interrupted(message: str) -> None:  # the migration dies after its first period
        during_copy(message)
        raise Stop

    with pytest.raises(Stop):
        migrate_table(conn, s, table, "month", keep_old=True, log=interrupted)
    assert table_kind(conn, s, table) == "r"  # the old table stays in use
    report = migrate_table(conn, s, table, "month", keep_old=True, log=during_copy)  # resumes
    assert report.periods_copied == 2 and report.hours_recopied == 3
    assert table_kind(conn, s, table) == "p"
    assert [p.name for p in list_partitions(conn, s, table)][:3] == [
        f"{table}_p20250101", f"{table}_p20250201", f"{table}_p20250301"]
    assert table_digest(conn, s, table) == table_digest(conn, s, table + "__n2w_old")
    assert table_digest(conn, s, table)[0] == 64 * 48 + 1  # + 1 inserted - 1 deleted
    comment = conn.execute("SELECT col_description(%s::regclass, 2)", (t.as_string(conn),)).fetchone()
    assert comment == ("a long channel id",)
    leftovers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'n2w_migrate%%'").fetchone()
    assert leftovers == (0,)
    # n2w writes the migrated table like any other: a backfill across the month boundary
    generate(conn, settings, catalog, [SHIP], H0, H_END, seed=3)
    assert run_wide(settings, catalog, first=hour_key(SHIP, H0), last=hour_key(SHIP, H_END - HOUR)).success
    ref_times, ref_cells = sql_reference(conn, settings, g, SHIP, H0, H_END)
    times, cells = wide_cells(conn, settings, g, SHIP)
    assert ref_times <= times and all(cells[k] == v for k, v in ref_cells.items())
    assert migrate_table(conn, s, table, "month").skipped == "already partitioned"
