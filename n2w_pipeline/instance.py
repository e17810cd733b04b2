"""The Dagster instance n2w runs against: DAGSTER_HOME and the variables every Dagster
process that n2w starts must see."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from n2w_pipeline.config import Settings
from n2w_pipeline.database import dagster_storage_url, database_url

DB_POOL = "n2w_database"
"""The Dagster concurrency pool of every step that opens data connections (wide tables,
corrections, window checks): its limit caps the connections n2w opens."""

# Without these, a range run writes one planned event per partition, one insert at a time
# (8,784 for a one-ship-year run: minutes before it starts); with them benchmarks/backfill.py
# creates and starts such a run in ~1.3 s (Dagster 1.13.27).
BOOKKEEPING_ENV = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
}


def project_file(name: str) -> Path:
    """A project file (dagster.yaml, workspace.yaml): from the working directory if it
    has one, else from the source checkout this package was installed from."""
    here = Path.cwd() / name
    if here.exists():
        return here
    return Path(__file__).resolve().parent.parent / name


def dagster_env(settings: Settings) -> dict[str, str]:
    """Environment for Dagster processes (daemon, webserver, runs, in-process runs).

    Copies the project's dagster.yaml into ``<state_dir>/dagster_home`` and resolves the
    database URLs once, so child processes reuse the same (embedded) server.
    """
    home = (settings.state_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    write_instance_yaml(settings, home / "dagster.yaml")
    logs = (settings.state_dir / "compute_logs").resolve()
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        "DAGSTER_HOME": str(home),
        "N2W_DAGSTER_PG_URL": dagster_storage_url(settings),
        "N2W_DATABASE_URL": database_url(settings),
        "N2W_STATE_DIR": str(settings.state_dir.resolve()),
        "N2W_COMPUTE_LOG_DIR": str(logs),
        **BOOKKEEPING_ENV,
    }
    return env


def write_instance_yaml(settings: Settings, dest: Path) -> None:
    """The project's dagster.yaml with the tick retention of ``N2W_INSTANCE_RETENTION_DAYS``
    (Dagster reads ``purge_after_days`` as a plain number, not from the environment);
    written only when it changes, so a running daemon never reads a half-written file, through
    a temporary file of this writer's own: processes starting together (`n2w worker` twice, a
    daemon and a run) each rename a whole file into place."""
    days = settings.instance_retention_days
    text = re.sub(r"(purge_after_days:) *-?\d+", rf"\g<1> {days if days else -1}",
                  project_file("dagster.yaml").read_text())
    if not dest.exists() or dest.read_text() != text:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def apply_dagster_env(settings: Settings) -> dict[str, str]:
    """Set ``dagster_env`` in this process (for in-process runs); returns it."""
    env = dagster_env(settings)
    os.environ.update(env)
    return env


def sync_pool_limit(instance) -> int | None:  # noqa: ANN001 - dagster.DagsterInstance
    """Give the ``n2w_database`` pool the limit of ``concurrency.pools.default_limit``.

    Works around dagster-postgres 0.29: when the default limit in dagster.yaml changes,
    the first claim of a pool that already has a row tries an INSERT, gets an
    IntegrityError that aborts the transaction, then fails its UPDATE — and every run of
    the pool fails ("current transaction is aborted"). An explicit limit set here never
    goes through that path. Called by every n2w command that starts Dagster work.
    """
    limit = instance.global_op_concurrency_default_limit
    if limit is not None and instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.set_concurrency_slots(DB_POOL, int(limit))
    return limit
