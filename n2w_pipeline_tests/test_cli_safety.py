"""Safe defaults of the CLI: synthetic rows only into the embedded database, no password in
any output whatever the connection-string form, and one clear line (no traceback, non-zero
exit) for a bad setting, a database that is down, a missing narrow table or an unknown group."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from n2w_pipeline.cli import main
from n2w_pipeline.commands.dev import banner
from n2w_pipeline.config import Settings
from n2w_pipeline.dsn import mask_secrets, redact
from n2w_pipeline.generate import create_source_indexes, create_source_table
from n2w_pipeline.instance import BOOKKEEPING_ENV

SECRET = "S3cret-pw_42"
WINDOW = ["--start", "2025-03-01", "--end", "2025-03-01T01:00"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dsn_forms(url: str) -> dict[str, str]:
    """``url`` with the password in each place PostgreSQL takes one."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0] or "postgres"
    query = parts.query + ("&" if parts.query else "") + f"password={SECRET}"
    return {
        "url userinfo": urlunsplit(parts._replace(netloc=f"{user}:{SECRET}@{host}")),
        "url query": urlunsplit(parts._replace(netloc=f"{user}@{host}", query=query)),
        "key/value": make_conninfo("", **{**conninfo_to_dict(url), "password": SECRET}),
    }


@pytest.fixture
def cli(settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """N2W_* for the CLI on the test schema; the variables n2w sets for Dagster restored after."""
    for key in ("DAGSTER_HOME", "N2W_COMPUTE_LOG_DIR", "N2W_DAGSTER_PG_URL", "N2W_SOURCE_URL",
                "N2W_SOURCE_PRIMARY_URL", *BOOKKEEPING_ENV):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    env = {"N2W_DATABASE_URL": settings.database_url, "N2W_SOURCE_SCHEMA": settings.source_schema,
           "N2W_TARGET_SCHEMA": settings.target_schema, "N2W_SHIPS": ",".join(settings.ships),
           "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir), "N2W_STATE_DIR": str(tmp_path / "state"),
           "N2W_BACKFILL_NICE": "0"}  # in-process: `n2w backfill` would lower pytest's own niceness
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env


def _one_line(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_every_connection_string_form_is_masked(cli, pg_url, monkeypatch, capsys):
    down = f"postgresql://postgres@127.0.0.1:{_free_port()}/n2w"
    for form, dsn in dsn_forms(pg_url).items():
        assert SECRET not in redact(dsn) and "***" in redact(dsn), form
        monkeypatch.setenv("N2W_DATABASE_URL", dsn)
        assert main(["db-url"]) == 0
        out = capsys.readouterr().out
        assert SECRET not in out and "***" in out, (form, out)
        monkeypatch.setenv("N2W_SOURCE_URL", dsn)
        assert main(["db-url", "--source"]) == 0
        assert SECRET not in capsys.readouterr().out
        settings = Settings.from_env()
        lines = banner(settings, {"N2W_DATABASE_URL": dsn, "N2W_DAGSTER_PG_URL": dsn.replace(
            "postgresql://", "postgresql+psycopg2://"), "DAGSTER_HOME": "/x"}, "127.0.0.1", 3000)
        assert SECRET not in "\n".join(lines) and "***" in lines[1], lines
        with pytest.raises(SystemExit) as refused:  # demo: the refusal names the URL, masked
            main(["demo"])
        assert SECRET not in str(refused.value) and "***" in str(refused.value)
        monkeypatch.delenv("N2W_SOURCE_URL")
        # error messages: the same forms pointing at a server that is not there
        for bad in dsn_forms(down).values():
            monkeypatch.setenv("N2W_DATABASE_URL", bad)
            assert main(["backfill", *WINDOW]) == 1
            line = _one_line(capsys)
            assert SECRET not in line and "cannot reach PostgreSQL" in line, line
    # a string psycopg cannot parse: its own message would quote it
    monkeypatch.setenv("N2W_DATABASE_URL", f"host=x password={SECRET} 'unclosed")
    assert main(["db-url"]) == 2
    line = _one_line(capsys)
    assert "N2W_DATABASE_URL" in line and SECRET not in line
    with pytest.raises(psycopg.ProgrammingError) as e:
        psycopg.connect(f"host=x password={SECRET} 'unclosed")
    assert SECRET not in mask_secrets(str(e.value))


def _narrow_exists(conn: psycopg.Connection, settings: Settings) -> bool:
    name = sql.Identifier(*settings.source_qualified).as_string(conn)
    return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None


def _index_oids(conn: psycopg.Connection, settings: Settings) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT indexrelid::int FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1",
        (sql.Identifier(*settings.source_qualified).as_string(conn),))]


def test_demo_and_generate_write_into_an_external_database_only_when_told(cli, settings, conn, capsys):
    for argv in (["generate", "--ships", "1", "--hours", "1"], ["demo", "--ships", "1", "--hours", "1"]):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        message = str(refused.value)
        assert "--allow-external" in message and "N2W_DATABASE_URL" in message and "\n" not in message
        assert not _narrow_exists(conn, settings)  # nothing written, not even the table
    # a user's own (empty) table: rows go in through its primary key and index, never dropped
    create_source_table(conn, settings)
    create_source_indexes(conn, settings)
    before = _index_oids(conn, settings)
    assert len(before) == 2
    assert main(["generate", "--ships", "1", "--hours", "1", "--allow-external"]) == 0
    assert "generated" in capsys.readouterr().out
    assert _index_oids(conn, settings) == before
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(*settings.source_qualified))).fetchone()[0]
    assert rows > 0


def test_errors_are_one_line_naming_what_to_fix(cli, settings, conn, monkeypatch, capsys):
    # a bad N2W_* value: named, exit status 2
    monkeypatch.setenv("N2W_SLICE_HOURS", "abc")
    assert main(["backfill", *WINDOW]) == 2
    assert "N2W_SLICE_HOURS: expected a whole number, got 'abc'" in _one_line(capsys)
    monkeypatch.delenv("N2W_SLICE_HOURS")
    # the narrow table missing: before any Dagster run
    for argv in (["backfill", *WINDOW], ["check", *WINDOW]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert f"the narrow table {settings.source_schema}.tbl_data_timeseries does not exist" in str(e.value)
        assert "\n" not in str(e.value)
    # an unknown group or ship
    create_source_table(conn, settings)
    with pytest.raises(SystemExit, match=r"unknown channel group\(s\) \[9\]; the groups are \[1, 2, 3\]"):
        main(["check", "--group", "9", *WINDOW])
    with pytest.raises(SystemExit, match=r"unknown ship\(s\) \['IMO0000000'\]"):
        main(["backfill", "--ship", "IMO0000000", *WINDOW])
    # the Dagster instance's database down (the data database is up)
    monkeypatch.setenv("N2W_DAGSTER_PG_URL", f"postgresql+psycopg2://n2w:{SECRET}@127.0.0.1:{_free_port()}/d")
    assert main(["backfill", *WINDOW]) == 1
    line = _one_line(capsys)
    assert "cannot reach the Dagster instance's database (N2W_DAGSTER_PG_URL)" in line and SECRET not in line
    monkeypatch.delenv("N2W_DAGSTER_PG_URL")
    # the data database down: every command that needs it says so in one line
    monkeypatch.setenv("N2W_DATABASE_URL", f"postgresql://n2w@127.0.0.1:{_free_port()}/{uuid.uuid4().hex}")
    for argv in (["backfill", *WINDOW], ["check", *WINDOW], ["db-url"], ["storage", "status"]):
        assert main(argv) == 1, argv
        assert "cannot reach PostgreSQL" in _one_line(capsys), argv
    # --debug: the traceback instead
    assert main(["--debug", "db-url"]) == 1
    assert "Traceback" in capsys.readouterr().err
