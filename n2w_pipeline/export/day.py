"""Export ship-days: one PostgreSQL snapshot per day → Parquet files and/or ClickHouse, then
reconciled; retried with exponential backoff and jitter.

The unit of work is one ship-day, for every selected group at once (the slices of a group feed
both targets, so PostgreSQL is read once). While a day is exported, a session-level advisory
lock on (ship, day) keeps a second export of the same day (another run, ``n2w export``) waiting,
so the last export to finish read the newest data. A failure of the day discards its temporary
file and in-memory day: the published file and the ClickHouse rows stay as they were, and the
retry starts the day again. Transient failures (connection refused or lost, an I/O error, a
full or missing export folder) are retried ``N2W_EXPORT_RETRIES`` times, waiting a random time
up to ``N2W_EXPORT_RETRY_SECONDS`` × 2^attempt (at most 60 s); then one ``ExportError`` line
says what failed where. SQL errors and a ClickHouse that cannot work are not retried.

``export_days`` exports several ship-days in order and overlaps them: day d+1 is read while day
d's files and stages are finished in their thread, then day d is published (its advisory lock is
held until then). A day that fails there is retried on its own, like ``export_day``, with the
attempts it has left; the results come out in order either way. The work of one attempt is
``export/attempt.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
import tenacity

from n2w_pipeline.channels import ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.export import clickhouse as ch
from n2w_pipeline.export.attempt import DayAttempt, GroupDay
from n2w_pipeline.export.paths import clickhouse_root

__all__ = ["DayResult", "ExportError", "GroupDay", "clickhouse_backend", "export_day", "export_days"]


class ExportError(RuntimeError):
    """An export step failed for good (after its retries): one line, no credentials."""


@dataclass
class DayResult:
    ship: str
    day: dt.date
    groups: dict[int, GroupDay]
    seconds: float
    attempts: int
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.groups.values())


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: the network, the disk, a server restarting."""
    if isinstance(exc, ch.ClickHouseError):
        return False
    if isinstance(exc, (OSError, psycopg.OperationalError)):
        return True
    try:
        from clickhouse_connect.driver.exceptions import OperationalError as ChOperational

        return isinstance(exc, ChOperational)
    except ImportError:  # pragma: no cover
        return False


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:400]


def retrying(settings: Settings, what: str, log=None, used: int = 0) -> tenacity.Retrying:  # noqa: ANN001
    """Exponential backoff with full jitter over ``settings.export_retries`` attempts (``used`` of
    them already spent)."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if log is not None and state.outcome is not None:
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(f"{what}: attempt {used + state.attempt_number}/{settings.export_retries} failed "
                        f"({one_line(state.outcome.exception())}); retrying in {wait:.1f} s")

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, settings.export_retries - used)),
        wait=tenacity.wait_random_exponential(multiplier=settings.export_retry_seconds, max=60),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )


def with_retries(settings: Settings, what: str, fn: Callable, log=None, used: int = 0):  # noqa: ANN001, ANN201
    """``fn()`` under ``retrying``; a final failure becomes one ``ExportError`` line."""
    attempts = used

    def attempt():  # noqa: ANN202
        nonlocal attempts
        attempts += 1
        return fn()

    try:
        return retrying(settings, what, log, used)(attempt)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - reported as one line
        tries = f" after {attempts} attempt(s)" if is_transient(e) else ""
        raise ExportError(f"{what} failed{tries}: {one_line(e)}") from e


@contextlib.contextmanager
def clickhouse_backend(settings: Settings, url: str | None, log=None) -> Iterator[ch.Backend]:  # noqa: ANN001
    """A server at ``url`` (clickhouse-connect), else chDB under N2W_CLICKHOUSE_PATH; opened with retries."""
    where = ch.redact_url(url) if url else str(clickhouse_root(settings))
    backend = with_retries(
        settings, f"opening ClickHouse {where}",
        lambda: ch.ServerBackend(url) if url else ch.ChdbBackend(clickhouse_root(settings), log=log), log)
    try:
        yield backend
    finally:
        backend.close()


def export_day(
    url: str, settings: Settings, ship: str, day: dt.date,
    parquet_groups: Sequence[ChannelGroup], clickhouse_groups: Sequence[ChannelGroup],
    backend: ch.Backend | None, metadata: dict[str, str] | None = None, log=None,  # noqa: ANN001
) -> DayResult:
    """Export one ship-day with retries (see the module docstring)."""
    return _retried(url, settings, ship, day, parquet_groups, clickhouse_groups, backend, metadata, log,
                    time.perf_counter())


def export_days(
    url: str, settings: Settings, days: Sequence[tuple[str, dt.date]],
    parquet_groups: Sequence[ChannelGroup], clickhouse_groups: Sequence[ChannelGroup],
    backend: ch.Backend | None, metadata: dict[str, str] | None = None, log=None,  # noqa: ANN001
) -> Iterator[DayResult]:
    """``export_day`` for each (ship, day), in order, the next day read while this one finishes."""
    args = (url, settings)
    groups = (parquet_groups, clickhouse_groups, backend, metadata)
    pending: tuple[DayAttempt, float] | None = None
    for ship, day in days:
        t0 = time.perf_counter()
        attempt = DayAttempt(*args, ship, day, *groups)
        try:
            attempt.start()
        except Exception as e:  # noqa: BLE001 - this day is retried on its own below
            attempt.abort()
            if pending is not None:
                yield _completed(*pending, log)
                pending = None
            yield _retried(*args, ship, day, *groups, log, t0, failed=e)
            continue
        if pending is not None:
            yield _completed(*pending, log)
        pending = attempt, t0
    if pending is not None:
        yield _completed(*pending, log)


def _completed(attempt: DayAttempt, t0: float, log) -> DayResult:  # noqa: ANN001
    """The attempt's ``complete()``; if that fails, the day again on its own with its retries left."""
    try:
        groups = attempt.complete()
    except Exception as e:  # noqa: BLE001 - retried below
        attempt.abort()
        return _retried(attempt.url, attempt.settings, attempt.ship, attempt.day,
                        [g for n, g in attempt.groups.items() if n in attempt.to_parquet],
                        [g for n, g in attempt.groups.items() if n in attempt.to_ch],
                        attempt.backend, attempt.metadata, log, t0, failed=e)
    return DayResult(attempt.ship, attempt.day, groups, time.perf_counter() - t0, 1, dict(attempt.phases))


def _retried(
    url: str, settings: Settings, ship: str, day: dt.date,
    parquet_groups: Sequence[ChannelGroup], clickhouse_groups: Sequence[ChannelGroup],
    backend: ch.Backend | None, metadata: dict[str, str] | None, log, t0: float,  # noqa: ANN001
    failed: BaseException | None = None,
) -> DayResult:
    """Attempts of one ship-day until one succeeds (``failed``: a first attempt already failed so)."""
    targets = ", ".join(t for t, g in (("parquet", parquet_groups), ("clickhouse", clickhouse_groups)) if g)
    what = f"export of {ship} {day:%Y-%m-%d} to {targets}"
    used = 0
    if failed is not None:
        used = 1
        if not is_transient(failed) or settings.export_retries <= 1:
            tries = " after 1 attempt(s)" if is_transient(failed) else ""
            raise ExportError(f"{what} failed{tries}: {one_line(failed)}") from failed
        if log is not None:
            log.warning(f"{what}: attempt 1/{settings.export_retries} failed ({one_line(failed)}); retrying")
    attempts = used
    last: dict[str, float] = {}

    def once() -> dict[int, GroupDay]:
        nonlocal attempts, last
        attempts += 1
        attempt = DayAttempt(url, settings, ship, day, parquet_groups, clickhouse_groups, backend, metadata)
        last = attempt.phases
        try:
            attempt.start()
            return attempt.complete()
        except BaseException:
            attempt.abort()
            raise

    groups = with_retries(settings, what, once, log, used)
    return DayResult(ship, day, groups, time.perf_counter() - t0, attempts, dict(last))
