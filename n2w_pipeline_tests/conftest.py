"""Shared fixtures: a real PostgreSQL (embedded, or N2W_TEST_DATABASE_URL) and a fresh
schema per test, so tests never see each other's tables."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.channels import ChannelCatalog, load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.instance import BOOKKEEPING_ENV

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a real PostgreSQL: N2W_TEST_DATABASE_URL, else a throwaway embedded server."""
    if os.environ.get("N2W_TEST_DATABASE_URL"):
        yield os.environ["N2W_TEST_DATABASE_URL"]
        return
    from n2w_pipeline.database import _embedded_server, embedded_url

    # outside /root: the embedded server runs as an unprivileged user when we are root
    state = Path(tempfile.mkdtemp(prefix="n2w-test-pg-", dir="/tmp"))
    url = embedded_url(state)
    yield url
    server = _embedded_server(state)
    server.cleanup_mode = "delete"
    server.cleanup()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def lists_dir(tmp_path: Path) -> Path:
    """A copy of the reference channel lists that a test may change."""
    dest = tmp_path / "channel_lists"
    shutil.copytree(REPO / "channel_lists", dest)
    return dest


@pytest.fixture
def settings(pg_url: str, schema: str, lists_dir: Path, tmp_path: Path) -> Settings:
    return Settings(
        database_url=pg_url,
        source_schema=schema,
        target_schema=schema,
        ships=("IMO9976903", "IMO9976915", "IMO9976927"),
        partition_start="2025-01-01-00:00",
        channel_lists_dir=lists_dir,
        migration_dir=tmp_path / "migration_data",
        state_dir=tmp_path / "state",
        slice_hours=2,
    )


@pytest.fixture
def catalog(settings: Settings) -> ChannelCatalog:
    return load_catalog(settings.channel_lists_dir)


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as c:
        yield c


@pytest.fixture
def backfill_env(settings: Settings, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """An n2w Dagster instance of its own (fresh database), env restored afterwards."""
    name = f"n2w_test_dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_url)
    storage = urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
    for key in ("DAGSTER_HOME", "N2W_DATABASE_URL", "N2W_STATE_DIR", "N2W_COMPUTE_LOG_DIR",
                *BOOKKEEPING_ENV):
        monkeypatch.setenv(key, "")  # so that monkeypatch restores what apply_dagster_env sets
    monkeypatch.setenv("N2W_DAGSTER_PG_URL", storage)
    yield replace(settings, slice_hours=1, run_hours=3)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
