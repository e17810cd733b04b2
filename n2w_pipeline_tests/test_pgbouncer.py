"""n2w through a real PgBouncer (Debian's ``pgbouncer``) in front of the test PostgreSQL:
session pooling works cell-exact for a backfill, a realtime run and a correction file;
transaction pooling is refused at start with a message that says why."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.corrections import apply_file
from n2w_pipeline.database import database_url
from n2w_pipeline.generate import create_source_indexes, create_source_table, generate
from n2w_pipeline.realtime import ensure_arrival_index
from n2w_pipeline.storage.pooling import PoolingModeError, require_session_pooling, sessions_are_kept
from n2w_pipeline_tests.helpers import hour_key, run_wide, sql_reference, wide_cells
from n2w_pipeline_tests.realtime.helpers import Sensor, insert

SHIP = "IMO9976903"
H0 = dt.datetime(2025, 3, 1, 0, 0)
HOUR = dt.timedelta(hours=1)
S = dt.timedelta(seconds=15)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bouncer(pg_url: str) -> Iterator[dict[str, str]]:
    """PgBouncer on a free local port with two databases in front of the test server:
    ``session`` (pool_mode=session) and ``transaction`` (pool_mode=transaction)."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).exists():
        pytest.fail("pgbouncer is not installed (Debian package pgbouncer; .ci/run installs it)")
    info = conninfo_to_dict(pg_url)
    host, port = info.get("host") or "localhost", info.get("port") or "5432"
    user, dbname = info.get("user") or "postgres", info.get("dbname") or "postgres"
    work = Path(tempfile.mkdtemp(prefix="n2w-test-pgbouncer-", dir="/tmp"))
    work.chmod(0o777)
    listen = _free_port()
    target = f"host={host} port={port} dbname={dbname} user={user}"
    if info.get("password"):
        target += f" password={info['password']}"
    (work / "users.txt").write_text(f'"{user}" ""\n')
    ini = work / "pgbouncer.ini"
    ini.write_text(f"""[databases]
session = {target} pool_mode=session
transaction = {target} pool_mode=transaction
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {work / 'users.txt'}
pool_mode = session
max_client_conn = 200
default_pool_size = 30
ignore_startup_parameters = extra_float_digits,options
pidfile = {work / 'pgbouncer.pid'}
logfile = {work / 'pgbouncer.log'}
""")
    for f in work.iterdir():
        f.chmod(0o644)
    cmd = [exe, "-d", str(ini)]
    if os.geteuid() == 0:  # run as the owner of the server's socket folder (mode 0700 when embedded)
        owner = Path(host).owner() if host.startswith("/") else "nobody"
        cmd = [exe, "-d", "-u", owner, str(ini)]
    subprocess.run(cmd, check=True, capture_output=True)
    urls = {mode: f"postgresql://{user}@127.0.0.1:{listen}/{mode}" for mode in ("session", "transaction")}
    deadline = time.monotonic() + 20
    while True:
        try:
            psycopg.connect(urls["session"], connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield urls
    finally:
        pid = int((work / "pgbouncer.pid").read_text().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def small(settings: Settings, tmp_path: Path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "1_small.txt").write_text("/a\n/b\n/c\n")
    (lists / "2_other.txt").write_text("/e\n")
    return replace(settings, channel_lists_dir=lists), load_catalog(lists)


def assert_cell_exact(conn, settings, catalog, start, end):
    for g in catalog.groups:
        ref_times, ref_cells = sql_reference(conn, settings, g, SHIP, start, end)
        assert ref_cells and wide_cells(conn, settings, g, SHIP) == (ref_times, ref_cells), g.number


def test_backfill_realtime_and_corrections_through_session_pooling(bouncer, small, conn):
    settings, catalog = small
    assert sessions_are_kept(bouncer["session"])
    via = replace(settings, database_url=bouncer["session"])
    assert database_url(via) == bouncer["session"]
    create_source_table(conn, settings)
    create_source_indexes(conn, settings)
    ensure_arrival_index(conn, settings)
    generate(conn, settings, catalog, [SHIP], H0, H0 + 2 * HOUR, seed=5)

    # a backfill (range run) through the bouncer
    assert run_wide(via, catalog, first=hour_key(SHIP, H0), last=hour_key(SHIP, H0 + HOUR)).success
    assert_cell_exact(conn, settings, catalog, H0, H0 + 2 * HOUR)

    # a realtime run: new rows for the next hour, the real sensor's tick and its run, all via the bouncer
    with dg.instance_for_test() as instance:
        sensor = Sensor(via, catalog, instance)
        sensor.tick()  # the first tick starts the cursor at the rows already there
        insert(conn, settings, [(SHIP, ch, H0 + 2 * HOUR + i * S, float(i) + 0.5)
                                for i in range(8) for ch in ("/a", "/e")])
        requests, _ = sensor.tick()
        assert sensor.parts(requests) == [hour_key(SHIP, H0 + 2 * HOUR)]
        assert all(sensor.execute(r, catalog) for r in requests)
    assert_cell_exact(conn, settings, catalog, H0, H0 + 3 * HOUR)

    # a correction file, applied on bouncer connections (two parts side by side)
    folder = settings.migration_dir / "H2546"
    folder.mkdir(parents=True)
    path = folder / "H2546_2025-03.csv"
    path.write_text("timestamp,/a,/b\n" + "".join(
        f"{H0 + i * S:%Y-%m-%d %H:%M:%S},{i * 0.25},\n" for i in range(0, 600, 3)))
    with psycopg.connect(via.database_url, autocommit=True) as c:
        report = apply_file(c, via, catalog, path,
                            connect=lambda: psycopg.connect(via.database_url, autocommit=True))
    assert report.tables[0].rows == 200
    g1 = catalog.group(1)
    ref_times, ref_cells = sql_reference(conn, settings, g1, SHIP, H0, H0 + 3 * HOUR)
    for i in range(0, 600, 3):
        ref_times.add(H0 + i * S)
        ref_cells[(H0 + i * S, "/a")] = i * 0.25
    assert wide_cells(conn, settings, g1, SHIP) == (ref_times, ref_cells)


def test_transaction_pooling_is_refused_at_start_with_the_reason(bouncer, settings):
    assert not sessions_are_kept(bouncer["transaction"])
    with pytest.raises(PoolingModeError, match="transaction .*pooling.*temporary tables"):
        require_session_pooling(bouncer["transaction"])
    with pytest.raises(PoolingModeError):
        database_url(replace(settings, database_url=bouncer["transaction"]))
    env = {**os.environ, "N2W_DATABASE_URL": bouncer["transaction"]}
    out = subprocess.run([sys.executable, "-m", "n2w_pipeline.cli", "db-url"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "session pooling" in lines[0] and "advisory locks" in lines[0]
