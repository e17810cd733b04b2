"""Connection poolers (PgBouncer) in front of n2w's database: session pooling only.

n2w's connections keep session state across transactions: the reader's channel → code
list (a session setting used by every slice's COPY), the writers' temporary stage tables,
advisory locks, prepared statements (psycopg prepares a query it runs often; ADBC prepares
too), and on PostgreSQL < 16 a session-local function in ``pg_temp``. A pooler in
*transaction* (or *statement*) mode hands the server connection to another client after each
transaction, so that state would vanish or leak into another client's session. With session
pooling a client keeps its server connection until it disconnects, and n2w works unchanged.

``require_session_pooling(url)`` tells the two apart at start, without needing the pooler's
admin console: it asks for the backend's pid on one client connection, opens a transaction on
a second client connection, and asks the first one again. Directly connected or through a
session pooler, a client's backend never changes and two clients never share one; through a
transaction pooler, the second client is handed the backend the first one just released
(PgBouncer reuses the most recently used server connection), or the first one moves to
another. The probe runs once per URL per process (three short queries on two connections).
"""

from __future__ import annotations

import functools

import psycopg

PROBES = 3


class PoolingModeError(RuntimeError):
    """n2w's database URL goes through a pooler that does not keep sessions."""


MESSAGE = (
    "n2w's database (N2W_DATABASE_URL) goes through a connection pooler in transaction (or "
    "statement) pooling mode: a client's backend changed between two transactions. n2w cannot work "
    "like that: its connections keep session state across transactions (the channel codes in a "
    "session setting, temporary tables for the write stage, advisory locks, prepared statements, "
    "a pg_temp function on PostgreSQL < 16), which such a pooler hands to other clients. Use "
    "session pooling for n2w's database (PgBouncer: pool_mode = session, e.g. a second "
    "[databases] entry for n2w) or connect to PostgreSQL directly; see docs/storage.md."
)


def _pid(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def sessions_are_kept(url: str) -> bool:
    """False if ``url`` is served by a pooler that moves clients between backends."""
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as a, \
            psycopg.connect(url, autocommit=True, prepare_threshold=None) as b:
        for _ in range(PROBES):
            first = _pid(a)
            with b.transaction():  # b holds a backend for the whole transaction
                other = _pid(b)
                again = _pid(a)
            if other == first or again != first:
                return False
    return True


@functools.lru_cache(maxsize=16)
def require_session_pooling(url: str) -> None:
    """Raise ``PoolingModeError`` (saying why) unless ``url`` keeps sessions; once per URL."""
    if not sessions_are_kept(url):
        raise PoolingModeError(MESSAGE)
