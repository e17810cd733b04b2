"""Source and target apart (N2W_SOURCE_URL): the narrow table in one database, read-only
for every new session like a replica, the wide tables and n2w's own tables in another.
The backfill, its in-run checks, the on-demand checks (narrow pass and cell-level diff)
and the realtime sensor read the source; nothing of n2w lands there."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog
from n2w_pipeline.checks import RECONCILIATION, check_window
from n2w_pipeline.commands._common import writable_source
from n2w_pipeline.config import Settings
from n2w_pipeline.generate import create_source_indexes, create_source_table, generate
from n2w_pipeline.realtime.index import ensure_arrival_index
from n2w_pipeline_tests.helpers import hour_key, run_wide, sql_reference, wide_cells
from n2w_pipeline_tests.realtime.helpers import Sensor, insert, some_channels

H0 = dt.datetime(2025, 3, 1, 0, 0)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def apart(pg_url: str, settings: Settings, catalog: ChannelCatalog) -> Iterator[Settings]:
    """Settings whose narrow table (1 ship x 2 hours, 20 channels per group) lives in a
    database of its own, made read-only for new sessions after loading it."""
    name = f"n2w_test_src_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    src_url = urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    s = replace(settings, source_url=src_url, source_schema=f"src_{uuid.uuid4().hex[:8]}")
    try:
        with psycopg.connect(src_url, autocommit=True) as c:
            create_source_table(c, s)
            generate(c, s, catalog, s.ships[:1], H0, H0 + 2 * HOUR, seed=31,
                     channels=some_channels(catalog, 20))
            create_source_indexes(c, s)
            ensure_arrival_index(c, s)
            c.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                sql.Identifier(name)))
        yield s
    finally:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _writer(url: str) -> psycopg.Connection:
    """A session that may write the read-only source (what the ingest does on a primary)."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET default_transaction_read_only = off")
    return conn


def _assert_equals_reference(s: Settings, catalog: ChannelCatalog, ship: str, end: dt.datetime) -> None:
    with psycopg.connect(s.source_url) as src, psycopg.connect(s.database_url) as dst:
        for g in catalog.groups:
            ref_times, ref_cells = sql_reference(src, s, g, ship, H0, end)
            assert ref_cells
            assert wide_cells(dst, s, g, ship) == (ref_times, ref_cells), g.number


def _exists(url: str, schema: str, table: str) -> bool:
    with psycopg.connect(url) as conn:
        name = sql.Identifier(schema, table).as_string(conn)
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def test_backfill_and_checks_read_the_source_and_write_the_target(apart, catalog):
    s = apart
    ship = s.ships[0]
    with psycopg.connect(s.source_url) as src, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        src.execute("CREATE TABLE n2w_probe (x int)")  # the source takes no writes, like a replica
    result = run_wide(s, catalog, first=hour_key(ship, H0), last=hour_key(ship, H0 + HOUR))
    assert result.success
    recons = [c for c in result.get_asset_check_evaluations() if c.check_name == RECONCILIATION]
    assert len(recons) == len(catalog.groups) and all(c.passed for c in recons)
    _assert_equals_reference(s, catalog, ship, H0 + 2 * HOUR)
    g1 = catalog.groups[0]
    assert _exists(s.database_url, s.target_schema, s.table_name(ship, g1.number))
    assert not _exists(s.source_url, s.target_schema, s.table_name(ship, g1.number))
    assert not _exists(s.database_url, *s.source_qualified)

    # on demand: the narrow pass on the source; then a wide row goes missing in the target
    # and the cell-level diff (narrow cells staged from the source) names it
    outcomes = check_window(s.database_url, s, catalog, [ship], H0, H0 + 2 * HOUR,
                            source_url=s.source_url)
    assert all(o.passed for o in outcomes if o.name == RECONCILIATION)
    gone = H0 + HOUR + dt.timedelta(seconds=30)
    with psycopg.connect(s.database_url, autocommit=True) as dst:
        dst.execute(sql.SQL("DELETE FROM {} WHERE created_time = %s").format(
            sql.Identifier(s.target_schema, s.table_name(ship, g1.number))), (gone,))
    outcomes = check_window(s.database_url, s, catalog, [ship], H0, H0 + 2 * HOUR, [g1],
                            source_url=s.source_url)
    (recon,) = [o for o in outcomes if o.name == RECONCILIATION]
    assert not recon.passed
    assert {"ship": ship, "time": gone.isoformat(), "channel": None, "kind": "missing_row",
            "expected": None, "actual": None} in recon.metadata["first_differences"]

    with pytest.raises(SystemExit, match="read-only"):
        # generate/demo write the narrow table: not on a replica, even when external is allowed
        writable_source(s, "generate", allow_external=True)


def test_the_realtime_sensor_reads_the_source(apart, catalog):
    s = apart
    ship = s.ships[0]
    with dg.instance_for_test() as instance:
        sensor = Sensor(s, catalog, instance)
        runs, skip = sensor.tick()
        assert runs == [] and "first tick" in (skip or "")
        late = H0 + 3 * HOUR
        with _writer(s.source_url) as w:
            insert(w, s, [(ship, ch, late + i * dt.timedelta(seconds=15), float(i))
                          for i, ch in enumerate(some_channels(catalog, 2))])
        runs, skip = sensor.tick()
        assert skip is None and sensor.parts(runs) == [hour_key(ship, late)]
        assert sensor.execute(runs[0], catalog)
    with psycopg.connect(s.source_url) as src, psycopg.connect(s.database_url) as dst:
        for g in catalog.groups:
            ref = sql_reference(src, s, g, ship, late, late + HOUR)
            times, cells = wide_cells(dst, s, g, ship)
            assert {t for t in times if t >= late} == ref[0]
            assert {k: v for k, v in cells.items() if k[0] >= late} == ref[1]
