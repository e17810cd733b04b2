"""`n2w export` and `n2w olap` as a user runs them, the embedded engine shared between
processes, and the ClickHouse server path against the server these machines have."""

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.cli import main
from n2w_pipeline.config import Settings
from n2w_pipeline.export.clickhouse import ChdbBackend, ClickHouseError, ServerBackend
from n2w_pipeline.export.day import ExportError, clickhouse_backend
from n2w_pipeline.generate import generate
from n2w_pipeline.instance import BOOKKEEPING_ENV

SHIP = "IMO9976903"
H = dt.datetime(2025, 3, 1, 10)
CH_SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"


@pytest.fixture
def cli_env(
    settings: Settings, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """N2W_* for the CLI on the test schema, and a Dagster instance database of its own."""
    name = f"n2w_test_dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    from urllib.parse import urlsplit, urlunsplit

    storage = urlunsplit(urlsplit(pg_url)._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
    for key in ("DAGSTER_HOME", "N2W_COMPUTE_LOG_DIR", *BOOKKEEPING_ENV):
        monkeypatch.setenv(key, "")  # restored after apply_dagster_env sets them
    env = {"N2W_DATABASE_URL": pg_url, "N2W_SOURCE_SCHEMA": settings.source_schema,
           "N2W_TARGET_SCHEMA": settings.target_schema, "N2W_SHIPS": ",".join(settings.ships),
           "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir), "N2W_STATE_DIR": str(tmp_path / "state"),
           "N2W_PARTITION_START": settings.partition_start, "N2W_SLICE_HOURS": "12",
           "N2W_EXPORT_RETRIES": "2", "N2W_EXPORT_RETRY_SECONDS": "0.01", "N2W_DAGSTER_PG_URL": storage,
           "N2W_BACKFILL_NICE": "0"}  # in-process: `n2w backfill` would lower pytest's own niceness
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("N2W_CLICKHOUSE_URL", raising=False)
    yield tmp_path / "state"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_cli_export_then_olap_and_bad_input_in_one_line(cli_env, settings, conn, capsys, monkeypatch):
    catalog = load_catalog(settings.channel_lists_dir)
    g3 = catalog.group(3)
    generate(conn, settings, catalog, [SHIP], H, H + dt.timedelta(hours=1), seed=9, channels=g3.channels[:4])
    assert main(["backfill", "--ship", SHIP, "--start", "2025-03-01T10:00", "--end", "2025-03-01T11:00",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", "--ship", SHIP, "--start", "2025-03-01", "--end", "2025-03-02", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reconciliation: every ship-day equals PostgreSQL" in out
    assert (cli_env / "export" / g3.asset_name / f"ship_id={SHIP}" / "date=2025-03-01").is_dir()
    assert main(["olap", "SELECT ship_id, count() AS n FROM wide_3_navigation_ship GROUP BY ship_id",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["ship_id,n", f"{SHIP},240"]

    bad = [
        (["export", "--ship", "NOPE", "--start", "2025-03-01", "--end", "2025-03-02"],
         "unknown ship(s) ['NOPE']"),
        (["export", "--start", f"{dt.date.today()}", "--end", f"{dt.date.today() + dt.timedelta(days=1)}"],
         "has not ended yet"),
        (["export", "--start", "2024-12-01", "--end", "2024-12-02"], "before the first partition day"),
        (["olap", "SELECT nonsense"], "n2w olap: Code: 47"),
    ]
    for argv, text in bad:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)
    monkeypatch.setenv("N2W_CLICKHOUSE_URL", "http://n2w:s3cret@127.0.0.1:9/n2w")  # nothing listens on 9
    with pytest.raises(SystemExit) as e:
        main(["export", "--ship", SHIP, "--start", "2025-03-01", "--end", "2025-03-02", "--to", "clickhouse",
              "--quiet"])
    assert str(e.value).startswith(f"n2w export: {SHIP} 2025-03-01 .. 2025-03-02: opening ClickHouse "
                                   "http://127.0.0.1:9/n2w failed after 2 attempt(s): ")
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)


def test_a_second_process_waits_for_the_embedded_clickhouse(tmp_path):
    path = tmp_path / "ch"
    probe = ("import sys; from pathlib import Path\n"
             "from n2w_pipeline.export.clickhouse import ChdbBackend, ClickHouseError, ServerBackend\n"
             "try:\n    b = ChdbBackend(Path(sys.argv[1]), lock_wait=float(sys.argv[2]))\n"
             "except ClickHouseError as e:\n    print(e); sys.exit(3)\n"
             "print(b.query_arrow('SELECT 41 + 1 AS x').column(0)[0].as_py()); b.close()\n")
    held = ChdbBackend(path)
    try:
        busy = subprocess.run([sys.executable, "-c", probe, str(path), "1"], capture_output=True, text=True)
        assert busy.returncode == 3 and "in use by another process" in busy.stdout
    finally:
        held.close()
    free = subprocess.run([sys.executable, "-c", probe, str(path), "5"], capture_output=True, text=True)
    assert free.returncode == 0 and free.stdout.strip() == "42", free.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def old_clickhouse_server(tmp_path: Path) -> Iterator[str]:
    """Debian's clickhouse-server (18.16) on a free local port, its data in tmp_path."""
    if not os.path.exists(CH_SERVER):
        if os.environ.get("N2W_REQUIRE_CLICKHOUSE_SERVER"):
            pytest.fail(f"{CH_SERVER} missing (apt-get install clickhouse-server)")
        pytest.skip("Debian's clickhouse-server is not installed")
    http, tcp = _free_port(), _free_port()
    root = tmp_path / "chsrv"
    (root / "log").mkdir(parents=True)
    (root / "config.xml").write_text(f"""<?xml version="1.0"?><yandex>
<logger><level>warning</level><log>{root}/log/server.log</log><errorlog>{root}/log/err.log</errorlog></logger>
<http_port>{http}</http_port><tcp_port>{tcp}</tcp_port><listen_host>127.0.0.1</listen_host>
<path>{root}/data/</path><tmp_path>{root}/tmp/</tmp_path><user_files_path>{root}/uf/</user_files_path>
<format_schema_path>{root}/fs/</format_schema_path><mark_cache_size>268435456</mark_cache_size>
<users_config>users.xml</users_config><default_profile>default</default_profile>
<default_database>default</default_database><timezone>UTC</timezone></yandex>""")
    (root / "users.xml").write_text("""<?xml version="1.0"?><yandex><profiles><default/></profiles>
<users><default><password>pw</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile>
<quota>default</quota></default></users><quotas><default/></quotas></yandex>""")
    proc = subprocess.Popen([CH_SERVER, f"--config-file={root}/config.xml"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{http}"
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "/ping", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (root / "log" / "err.log").read_text()[-2000:]
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()  # a throwaway server: its data goes with tmp_path (a clean stop takes ~10 s)
        proc.wait()


def test_debians_clickhouse_server_is_refused_with_one_line_and_no_retries(old_clickhouse_server, settings):
    """clickhouse-connect cannot talk to ClickHouse 18.16: n2w says so at once, naming the version."""
    url = old_clickhouse_server.replace("http://", "http://default:pw@") + "/n2w"
    with pytest.raises(ClickHouseError) as e:
        ServerBackend(url)
    assert "18.16" in str(e.value) and "too old for clickhouse-connect" in str(e.value)
    t0 = time.perf_counter()
    with pytest.raises(ExportError) as e2, clickhouse_backend(settings, url):
        pass
    msg = str(e2.value)
    assert "attempt" not in msg and ":pw@" not in msg and time.perf_counter() - t0 < 30  # not retried
    assert msg.startswith(f"opening ClickHouse {old_clickhouse_server}/n2w failed: ")
