"""Who can still write into an arrival range the sensor skipped: the writers' transactions
that are open, read on the server where the writers run.

Why this is enough. Every id inside a gap was drawn (``nextval``) before the id above the
gap, which a tick saw committed: so by a transaction already open when that tick's snapshot
was taken. Such a transaction may have no xid yet (``nextval`` assigns one only when it
WAL-logs the sequence; an ORM that pre-fetches ids, or COPY buffering 1,000 rows, inserts
later), so ``pg_snapshot_xmin``/``xmax`` cannot tell it apart; but ``nextval`` takes a
RowExclusiveLock on the sequence that the transaction holds until it ends (a PREPAREd
transaction keeps it until COMMIT/ROLLBACK PREPARED). So the transactions holding a lock on
the id column's sequence, read *after* the snapshot that saw the gap, include every one
that can still write an id into it; once all of them have ended, one more read of the gap
in a snapshot taken after that sees every row that will ever be in it. ``pg_locks`` shows
every session's locks to any role (unlike ``pg_stat_activity``, which hides other users'
``xact_start``/``backend_xid`` without ``pg_read_all_stats``), so no privilege is needed;
as a check that the role really sees other sessions' locks, the query must see its own.

Without a sequence owned by the id column (ids from elsewhere) and with
``server_created_time`` (stamped by ``now()``, the transaction's start, a row may be inserted
long after its arrival time), every open transaction of the database counts instead (each
holds a lock on its own virtual transaction id in ``pg_locks``): more conservative, still
no privilege.

On a replica (``N2W_SOURCE_URL``) ``pg_locks`` shows only the replica's own sessions, so
this runs on the primary (``N2W_SOURCE_PRIMARY_URL``); it also returns the primary's WAL
insert position, read after the locks: a range whose writers have all ended is re-read a
last time only once the replica has replayed past it (``replay_lsn`` before the snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.realtime.cursor import arrival


class WritersNotVisible(RuntimeError):
    """The writers' server cannot be read (a standby, or its locks are hidden from this role)."""


@dataclass(frozen=True)
class Writers:
    """Open writer transactions on the writers' server at one moment.

    ``open``: ``pid:vxid`` of each (unique per transaction), ``prepared``: prepared ones
    (they block every range until they end: one may be a writer that was seen open before
    its PREPARE); ``lsn``: the server's WAL insert position read after them (bytes);
    ``by``: what was read (``sequence <name>`` or ``open transactions``).
    """

    open: frozenset[str]
    prepared: frozenset[str] = frozenset()
    lsn: int = 0
    by: str = ""
    details: dict[str, str] = field(default_factory=dict)
    warning: str | None = None  # about the sequence (``sequence_problem``)


LOCK_HOLDERS = """SELECT l.pid, l.virtualtransaction, a.usename, a.application_name
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = %(seq)s::regclass
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (l.pid IS NULL OR l.pid <> pg_backend_pid())"""
"""Transactions holding a lock on the id sequence (pid NULL: a prepared transaction)."""

OPEN_TRANSACTIONS = """SELECT l.pid, l.virtualtransaction, a.usename, a.application_name
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'virtualxid' AND l.pid <> pg_backend_pid() AND a.datname = current_database()
  AND a.backend_type IS DISTINCT FROM 'autovacuum worker'
UNION ALL
SELECT NULL, 'prepared:' || gid, owner, NULL FROM pg_prepared_xacts WHERE database = current_database()"""
"""Every open transaction of the database (each holds a lock on its virtual transaction id)."""

SELF_VISIBLE = "SELECT count(*) FROM pg_locks WHERE locktype = 'virtualxid' AND pid = pg_backend_pid()"


def id_sequence(conn: psycopg.Connection, settings: Settings) -> str | None:
    """The sequence that gives the narrow table's id column its values (serial or identity)."""
    if not arrival(settings).unique:
        return None
    table = sql.Identifier(*settings.source_qualified).as_string(conn)
    row = conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, settings.columns.id)).fetchone()
    return row[0] if row and row[0] else None


def sequence_problem(conn: psycopg.Connection, sequence: str) -> str | None:
    """A warning if the sequence hands out ids that a transaction may use long after drawing
    them (a per-session cache) or in steps the gap logic reads as gaps."""
    row = conn.execute(
        "SELECT cache_size, increment_by FROM pg_sequences WHERE format('%%I.%%I', schemaname, sequencename)"
        "::regclass = %s::regclass", (sequence,)).fetchone()
    if row and (row[0] != 1 or row[1] != 1):
        return (f"sequence {sequence} has CACHE {row[0]}, INCREMENT {row[1]}: a session may insert ids "
                "it cached long before, which the realtime sensor cannot wait for; use CACHE 1 INCREMENT 1 "
                "(the default) for the narrow table's ids")
    return None


def read_writers(conn: psycopg.Connection, settings: Settings) -> Writers:
    """The open writer transactions on ``conn``'s server (the writers' one: the primary),
    then its WAL insert position. ``conn`` must be in autocommit mode."""
    (standby,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()  # type: ignore[misc]
    if standby:
        raise WritersNotVisible(
            "the narrow table's writers cannot be seen on a standby: its pg_locks shows only its own "
            "sessions. Set N2W_SOURCE_PRIMARY_URL to the primary (any role that can connect)")
    seq = id_sequence(conn, settings)
    if seq is not None:
        rows = conn.execute(LOCK_HOLDERS, {"seq": seq}).fetchall()
        by = f"sequence {seq}"
    else:
        rows = conn.execute(OPEN_TRANSACTIONS).fetchall()
        by = "open transactions"
    (seen,) = conn.execute(SELF_VISIBLE).fetchone()  # type: ignore[misc]
    if not seen:
        raise WritersNotVisible("pg_locks does not show this session's own transaction: this role "
                                "cannot see the writers' transactions")
    (lsn,) = conn.execute(  # after the locks: every writer that ended before has committed below it
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint").fetchone()  # type: ignore[misc]
    open_, prepared, details = set(), set(), {}
    for pid, vxid, user, app in rows:
        if pid is None or str(vxid).startswith("prepared:"):
            key = f"prepared:{vxid}"
            prepared.add(key)
        else:
            key = f"{pid}:{vxid}"
            open_.add(key)
        details[key] = f"pid {pid} ({user}, {app!r})" if pid is not None else f"prepared transaction {vxid}"
    warning = sequence_problem(conn, seq) if seq is not None else None
    return Writers(frozenset(open_), frozenset(prepared), int(lsn), by, details, warning)


def replay_lsn(conn: psycopg.Connection) -> int | None:
    """On a standby, the WAL position it has replayed (bytes); None on a primary. Read it
    before the tick's snapshot: that snapshot then sees every commit below it."""
    row = conn.execute("SELECT CASE WHEN pg_is_in_recovery() "
                       "THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint END").fetchone()
    return None if not row or row[0] is None else int(row[0])
