"""Shared by the operations tests: small channel lists, a Dagster instance database of its own
and the environment that points an `n2w` subprocess at the test server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from n2w_pipeline.config import Settings

REPO = Path(__file__).resolve().parent.parent


def tiny_lists(folder: Path, per_group: int = 12) -> Path:
    """The reference groups with their first ``per_group`` channels (same names and numbers)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((REPO / "channel_lists").glob("*.txt")):
        channels = [c for c in src.read_text().splitlines() if c.strip()][:per_group]
        (folder / src.name).write_text("\n".join(channels) + "\n")
    return folder


@contextmanager
def dagster_database(pg_url: str) -> Iterator[str]:
    """A fresh database for a Dagster instance on the test server; its SQLAlchemy URL."""
    name = f"n2w_test_dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(pg_url)._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def cli_env(s: Settings, dagster_url: str, **extra: str) -> dict[str, str]:
    """os.environ plus the N2W_* variables that make an `n2w` process use ``s``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("N2W_", "DAGSTER_"))}
    env.update({
        "N2W_DATABASE_URL": str(s.database_url), "N2W_SOURCE_SCHEMA": s.source_schema,
        "N2W_TARGET_SCHEMA": s.target_schema, "N2W_SHIPS": ",".join(s.ships),
        "N2W_CHANNEL_LISTS": str(s.channel_lists_dir), "N2W_MIGRATION_DIR": str(s.migration_dir),
        "N2W_STATE_DIR": str(s.state_dir), "N2W_DAGSTER_PG_URL": dagster_url,
        "N2W_SLICE_HOURS": str(s.slice_hours), "N2W_RUN_HOURS": str(s.run_hours),
        "N2W_PARTITION_START": s.partition_start,
    })
    env.update(extra)
    return env
