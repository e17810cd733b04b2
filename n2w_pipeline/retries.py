"""Transient database errors, and retrying the work they interrupt.

A connection lost or refused (a server restarting, a failover), an administrator shutting
sessions down, a serialization failure, a deadlock, a lock or statement that waited too long
under contention, too many connections: the same work done again a moment later succeeds.
Everything n2w writes is one transaction per slice (or per correction range) and idempotent,
so the unit is simply done again — on new connections, since a broken one stays broken.

``retrying`` gives the policy (tenacity, the well-kept retry library n2w's exports already
use): ``N2W_DB_RETRIES`` attempts, waiting ``N2W_DB_RETRY_SECONDS`` × 2ⁿ (at most 30 s) plus
up to ``N2W_DB_RETRY_SECONDS`` of random jitter between them, so that clients that failed
together do not come back together; ~31 s in all with the defaults, longer than a server
restart. Any other error is not retried. When the attempts run out, ``RetriesExhausted``
says in one line what failed, how often and the last error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity

from n2w_pipeline.config import Settings

T = TypeVar("T")
MAX_WAIT_SECONDS = 30.0

TRANSIENT_STATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, shutting down)
    "53300",  # too_many_connections
    "58030",  # io_error
})
"""SQLSTATEs worth another attempt; class 08 (connection exception) too."""

_CONNECTION_TEXT = ("server closed the connection", "terminating connection", "connection refused",
                    "could not connect", "connection is closed", "connection is lost", "broken pipe",
                    "the database system is", "no connection to the server", "connection reset",
                    "consuming input failed", "sending query failed", "could not receive data")


class RetriesExhausted(RuntimeError):
    """Work that kept failing on transient database errors; the message is one line."""


def _chain(exc: BaseException):  # noqa: ANN202 - a generator of exceptions
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = getattr(e, "user_exception", None) or e.__cause__ or e.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error behind it) is a transient database error."""
    for e in _chain(exc):
        if isinstance(e, RetriesExhausted):
            return False
        module, name = type(e).__module__, type(e).__name__
        state = str(getattr(e, "sqlstate", None) or getattr(e, "pgcode", None) or "")
        if state:
            if state in TRANSIENT_STATES or state.startswith("08"):
                return True
            continue  # a server error with another SQLSTATE: a real one
        if module.startswith(("psycopg", "sqlalchemy")) and name in (
                "OperationalError", "InterfaceError", "ConnectionTimeout", "DisconnectionError"):
            return True
        if name == "DagsterPostgresException" or isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if module.startswith("psycopg") and any(
                t in str(e).lower() for t in _CONNECTION_TEXT):
            return True
    return False


def one_line(exc: BaseException) -> str:
    from n2w_pipeline.errors import one_line as line

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return line(f"{type(exc).__name__}: {text}")


def retrying(settings: Settings, what: str, log: logging.Logger | None = None,
             on_retry: Callable[[BaseException], None] | None = None) -> tenacity.Retrying:
    """The retry policy for one unit of database work named ``what`` (see the module
    docstring). ``on_retry(error)`` runs before each wait, e.g. to drop broken connections."""
    base = max(settings.db_retry_seconds, 0.0)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None and on_retry is not None:
            on_retry(error)
        if log is not None and error is not None:
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(f"{what}: attempt {state.attempt_number}/{settings.db_retries} failed on a "
                        f"transient database error ({one_line(error)}); retrying in {wait:.1f} s")

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(settings.db_retries, 1)),
        wait=tenacity.wait_exponential(multiplier=base, max=MAX_WAIT_SECONDS) + tenacity.wait_random(0, base),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )


def with_retries(settings: Settings, what: str, fn: Callable[[], T], log: logging.Logger | None = None,
                 on_retry: Callable[[BaseException], None] | None = None) -> T:
    """``fn()`` under ``retrying``; transient errors that outlast the attempts become one
    ``RetriesExhausted`` line, any other error is raised as it is."""
    try:
        return retrying(settings, what, log, on_retry)(fn)
    except Exception as e:
        if is_transient(e):
            raise RetriesExhausted(
                f"{what}: failed {settings.db_retries} time(s) on transient database errors "
                f"(N2W_DB_RETRIES); the last: {one_line(e)}") from e
        raise
