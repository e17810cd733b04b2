"""The indexes n2w needs on the narrow table, and building them without locking it.

The fleet's table has a primary key ``(ship_id, data_channel_id, created_time)`` and an
index on ``created_time``. n2w needs two more, both built by ``n2w prepare``:

* ``(ship_id, created_time)``: a backfill run reads one ship's hours. Without it, on a
  table holding the whole fleet, PostgreSQL before 18 finds a ship's hours through the
  ``created_time`` index and throws away the other ships' rows (seven in eight for eight
  ships). PostgreSQL 18 can skip-scan the primary key instead (each channel's range of
  the ship), which gets close; the index is still the cheaper, version-independent way.
* the arrival column (``realtime.arrival_index_ddl``): the realtime sensor's cursor.

Both are built with ``CREATE INDEX CONCURRENTLY``: ingestion goes on while they build
(it costs each inserted row one index entry more afterwards). An interrupted concurrent
build leaves an invalid index behind; it is dropped and built again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.realtime.cursor import arrival
from n2w_pipeline.realtime.index import (
    arrival_index_ddl,
    arrival_index_problem,
    build_concurrently,
    ensure_arrival_index,
)


def ship_time_index_name(settings: Settings) -> str:
    c = settings.columns
    name = f"{settings.source_table}_{c.ship_id}_{c.created_time}_idx"
    return name.encode()[:63].decode(errors="ignore")


def ship_time_index_ddl(settings: Settings) -> sql.Composed:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS … (ship_id, created_time)``."""
    c = settings.columns
    return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING btree ({}, {})").format(
        sql.Identifier(ship_time_index_name(settings)),
        sql.Identifier(*settings.source_qualified),
        sql.Identifier(c.ship_id),
        sql.Identifier(c.created_time),
    )


SKIP_SCAN_VERSION = 180000
"""PostgreSQL 18 skip-scans the primary key (ship, channel, time) for one ship's hours."""

_SHIP_TIME_INDEX = """SELECT EXISTS (SELECT 1 FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_am am ON am.oid = ic.relam
  JOIN pg_attribute a0 ON a0.attrelid = i.indrelid AND a0.attnum = i.indkey[0]
  JOIN pg_attribute a1 ON a1.attrelid = i.indrelid AND a1.attnum = i.indkey[1]
  WHERE i.indrelid = to_regclass({0}) AND a0.attname = {1} AND a1.attname = {2}
    AND am.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL)"""


def ship_time_index_query(placeholders: tuple[str, str, str] = ("%s", "%s", "%s")) -> str:
    """Whether a valid b-tree index leads with (ship, created_time); parameters: the table
    (qualified, quoted), the ship and the created_time column names (``ship_time_params``).
    ``placeholders``: psycopg's ``%s`` or ADBC's ``$1``..``$3``."""
    return _SHIP_TIME_INDEX.format(*placeholders)


def ship_time_params(settings: Settings) -> tuple[str, str, str]:
    c = settings.columns
    table = sql.Identifier(*settings.source_qualified).as_string(None)
    return table, c.ship_id, c.created_time


def _table_oid(conn: psycopg.Connection, settings: Settings) -> int | None:
    table = sql.Identifier(*settings.source_qualified).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()
    return None if not row or row[0] is None else int(row[0])


def ship_time_index_problem(conn: psycopg.Connection, settings: Settings) -> str | None:
    """None when a valid b-tree index leads with (ship_id, created_time); else what is wrong."""
    oid = _table_oid(conn, settings)
    table = sql.Identifier(*settings.source_qualified).as_string(conn)
    if oid is None:
        return f"narrow table {table} does not exist"
    c = settings.columns
    found = conn.execute(ship_time_index_query(), ship_time_params(settings)).fetchone()
    if found and found[0]:
        return None
    return (f"no valid b-tree index on {table}({c.ship_id}, {c.created_time}): `n2w prepare` "
            "builds it")


def one_ship_read_problem(conn: psycopg.Connection, settings: Settings) -> str | None:
    """None when a one-ship read finds its rows through an index of its own (PostgreSQL 18's
    skip scan of the primary key, or a (ship_id, created_time) index); else what it costs."""
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    if row and int(row[0]) >= SKIP_SCAN_VERSION:
        return None
    problem = ship_time_index_problem(conn, settings)
    if problem is None or "does not exist" in problem:
        return None
    return ("before PostgreSQL 18, without a (ship_id, created_time) index a run of one ship "
            "reads every ship's rows of its hours to keep its own; `n2w prepare` builds it")


def ensure_ship_time_index(conn: psycopg.Connection, settings: Settings) -> bool:
    """Create the (ship_id, created_time) index if missing (autocommit connection); True if
    created. An invalid leftover of an interrupted concurrent build is dropped and rebuilt."""
    if ship_time_index_problem(conn, settings) is None:
        return False
    build_concurrently(conn, sql.Identifier(settings.source_schema, ship_time_index_name(settings)),
                       ship_time_index_ddl(settings))
    return True


@dataclass(frozen=True)
class IndexStep:
    """One index ``n2w prepare`` looks after: what it is for, whether it is there, its DDL."""

    key: str
    purpose: str
    problem: str | None  # None: present and valid
    ddl: str
    ensure: Callable[[psycopg.Connection, Settings], bool]

    @property
    def needed(self) -> bool:
        return self.problem is not None


def plan(conn: psycopg.Connection, settings: Settings) -> list[IndexStep]:
    """The indexes n2w needs on the narrow table, each with its state (raises
    ``LookupError`` if the narrow table does not exist)."""
    if _table_oid(conn, settings) is None:
        table = sql.Identifier(*settings.source_qualified).as_string(conn)
        raise LookupError(f"narrow table {table} does not exist (N2W_SOURCE_SCHEMA, N2W_SOURCE_TABLE)")
    c = settings.columns
    return [
        IndexStep(
            "ship_time", f"({c.ship_id}, {c.created_time}): backfill runs read one ship's hours",
            ship_time_index_problem(conn, settings), ship_time_index_ddl(settings).as_string(conn),
            ensure_ship_time_index,
        ),
        IndexStep(
            "arrival", f"({arrival(settings).column}): the realtime sensor reads rows in arrival order",
            arrival_index_problem(conn, settings), arrival_index_ddl(settings).as_string(conn),
            ensure_arrival_index,
        ),
    ]


@dataclass(frozen=True)
class BuildProgress:
    """A row of ``pg_stat_progress_create_index`` for the build, as text and a fraction."""

    phase: str
    done: int
    total: int

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    def __str__(self) -> str:
        if not self.total:
            return self.phase
        return f"{self.phase}: {100 * self.done / self.total:.0f} % ({self.done:,}/{self.total:,})"


def read_progress(conn: psycopg.Connection, pid: int) -> BuildProgress | None:
    """The index build of backend ``pid``: blocks while it scans the table, tuples while it
    sorts and loads them, lockers while it waits for older transactions."""
    row = conn.execute(
        """SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total,
                  lockers_done, lockers_total
           FROM pg_stat_progress_create_index WHERE pid = %s""",
        (pid,),
    ).fetchone()
    if row is None:
        return None
    phase, bd, bt, td, tt, ld, lt = row
    for done, total in ((bd, bt), (td, tt), (ld, lt)):
        if total:
            return BuildProgress(phase, int(done), int(total))
    return BuildProgress(phase, 0, 0)


def build(
    url: str,
    settings: Settings,
    step: IndexStep,
    report: Callable[[BuildProgress, float], None],
    every: float = 2.0,
) -> bool:
    """Run ``step.ensure`` on its own connection while another one reports the build's
    progress every ``every`` seconds as ``report(progress, elapsed_s)``. Returns whether
    the index was created; re-raises the build's error."""
    outcome: dict[str, object] = {}
    with psycopg.connect(url, autocommit=True) as builder, psycopg.connect(url, autocommit=True) as watch:
        pid = builder.info.backend_pid

        def work() -> None:
            try:
                outcome["created"] = step.ensure(builder, settings)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = exc

        t0 = time.perf_counter()
        thread = threading.Thread(target=work, name=f"n2w-index-{step.key}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(every)
            if thread.is_alive():
                progress = read_progress(watch, pid)
                if progress is not None:
                    report(progress, time.perf_counter() - t0)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return bool(outcome.get("created"))
