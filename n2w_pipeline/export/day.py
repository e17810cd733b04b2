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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import tenacity

from n2w_pipeline.channels import ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.export import clickhouse as ch
from n2w_pipeline.export.parquet import ParquetDayWriter, ParquetResult, file_stats
from n2w_pipeline.export.paths import clickhouse_root, parquet_path
from n2w_pipeline.export.read import ColumnStats, WideDayReader, arrow_schema
from n2w_pipeline.export.reconcile import Mismatch, compare
from n2w_pipeline.hours import window_slices

DAY = dt.timedelta(days=1)


class ExportError(RuntimeError):
    """An export step failed for good (after its retries): one line, no credentials."""


@dataclass
class GroupDay:
    """What one group's ship-day became."""

    group: ChannelGroup
    rows: int = 0
    reference: ColumnStats | None = None
    parquet: ParquetResult | None = None
    parquet_mismatches: list[Mismatch] | None = None
    clickhouse_mismatches: list[Mismatch] | None = None
    clickhouse_added: list[str] = field(default_factory=list)
    clickhouse_table: str = ""


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
        from adbc_driver_manager import OperationalError as AdbcOperational

        if isinstance(exc, AdbcOperational):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from clickhouse_connect.driver.exceptions import OperationalError as ChOperational

        return isinstance(exc, ChOperational)
    except ImportError:  # pragma: no cover
        return False


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:400]


def retrying(settings: Settings, what: str, log=None) -> tenacity.Retrying:  # noqa: ANN001
    """Exponential backoff with full jitter over ``settings.export_retries`` attempts."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if log is not None and state.outcome is not None:
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(f"{what}: attempt {state.attempt_number}/{settings.export_retries} failed "
                        f"({one_line(state.outcome.exception())}); retrying in {wait:.1f} s")

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.export_retries),
        wait=tenacity.wait_random_exponential(multiplier=settings.export_retry_seconds, max=60),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )


def with_retries(settings: Settings, what: str, fn: Callable, log=None):  # noqa: ANN001, ANN201
    """``fn()`` under ``retrying``; a final failure becomes one ``ExportError`` line."""
    attempts = 0

    def attempt():  # noqa: ANN202
        nonlocal attempts
        attempts += 1
        return fn()

    try:
        return retrying(settings, what, log)(attempt)
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


def _lock_key(ship: str, day: dt.date) -> tuple[int, int]:
    return zlib.crc32(f"n2w:export:{ship}".encode()) - 2**31, day.toordinal()


def export_day(
    url: str, settings: Settings, ship: str, day: dt.date,
    parquet_groups: Sequence[ChannelGroup], clickhouse_groups: Sequence[ChannelGroup],
    backend: ch.Backend | None, metadata: dict[str, str] | None = None, log=None,  # noqa: ANN001
) -> DayResult:
    """Export one ship-day with retries (see the module docstring)."""
    t0 = time.perf_counter()
    attempts = 0
    phases: dict[str, float] = {}
    targets = ", ".join(t for t, g in (("parquet", parquet_groups), ("clickhouse", clickhouse_groups)) if g)

    def attempt() -> dict[int, GroupDay]:
        nonlocal attempts
        attempts += 1
        phases.clear()
        return _export_once(url, settings, ship, day, parquet_groups, clickhouse_groups, backend, metadata,
                            phases)

    groups = with_retries(settings, f"export of {ship} {day:%Y-%m-%d} to {targets}", attempt, log)
    return DayResult(ship, day, groups, time.perf_counter() - t0, attempts, dict(phases))


def _export_once(
    url: str, settings: Settings, ship: str, day: dt.date,
    parquet_groups: Sequence[ChannelGroup], clickhouse_groups: Sequence[ChannelGroup],
    backend: ch.Backend | None, metadata: dict[str, str] | None, phases: dict[str, float],
) -> dict[int, GroupDay]:
    start = dt.datetime.combine(day, dt.time())
    end = start + DAY
    groups = {g.number: g for g in [*parquet_groups, *clickhouse_groups]}
    to_parquet = {g.number for g in parquet_groups}
    to_ch = {g.number for g in clickhouse_groups} if backend is not None else set()
    out = {n: GroupDay(g) for n, g in groups.items()}
    writers: dict[int, ParquetDayWriter] = {}
    loads: dict[int, ch.DayLoad] = {}
    with psycopg.connect(url, autocommit=True) as lock_conn, WideDayReader(url, settings) as reader:
        clock = _Clock(phases)
        lock_conn.execute("SELECT pg_advisory_lock(%s, %s)", _lock_key(ship, day))
        clock("lock")
        try:
            for n in sorted(to_ch):
                assert backend is not None
                _, out[n].clickhouse_added = ch.ensure_table(backend, groups[n])
                out[n].clickhouse_table = ch.table_name(backend, groups[n])
                loads[n] = ch.DayLoad(backend, groups[n], ship, day)
            clock("clickhouse_ddl")
            for n in sorted(to_parquet):
                writers[n] = ParquetDayWriter(parquet_path(settings, groups[n], ship, day),
                                              arrow_schema(groups[n]), metadata)
            reader.begin(ship, list(groups.values()), start, end)
            steps = [(n, g, a, b) for a, b in window_slices(start, end, settings.slice_hours)
                     for n, g in sorted(groups.items())]
            for (n, _g, _a, _b), table in _prefetched(reader, ship, steps):
                out[n].rows += table.num_rows
                if n in writers:
                    writers[n].write(table)
                if n in loads:
                    loads[n].add(table)
                del table
            clock("read_write")
            for n, g in groups.items():
                out[n].reference = reader.day_stats(ship, g, start, end)
            reader.end()
            clock("postgres_stats")
            for n, w in writers.items():
                out[n].parquet = w.publish()
            clock("parquet_publish")
            for load in loads.values():
                load.replace_day(start, end)
            clock("clickhouse_replace")
        except BaseException:
            with contextlib.suppress(Exception):
                reader.rollback()
            for w in writers.values():
                w.discard()
            for load in loads.values():
                with contextlib.suppress(Exception):
                    load.drop()
            raise
        finally:
            with contextlib.suppress(Exception):
                lock_conn.execute("SELECT pg_advisory_unlock(%s, %s)", _lock_key(ship, day))
    for n, g in groups.items():
        ref = out[n].reference
        assert ref is not None
        if n in writers:
            got = file_stats(Path(writers[n].path), list(g.columns))
            out[n].parquet_mismatches = compare(ref, got, g.columns)
            clock("parquet_check")
        if n in loads:
            assert backend is not None
            got = ch.day_stats(backend, g, ship, start, end, g.columns)
            out[n].clickhouse_mismatches = compare(ref, got, g.columns)
            clock("clickhouse_check")
    return out


def _prefetched(reader: WideDayReader, ship: str, steps: list) -> Iterator:  # noqa: ANN001
    """``(step, table)`` for each (group number, group, start, end) step, the next one read in a
    thread while the caller writes this one: the server's COPY and the client's Parquet/Arrow
    work overlap (one read in flight, so memory holds two slices)."""
    with ThreadPoolExecutor(1, thread_name_prefix="n2w-export-read") as pool:
        ahead = pool.submit(reader.read, ship, steps[0][1], steps[0][2], steps[0][3]) if steps else None
        for i, step in enumerate(steps):
            assert ahead is not None
            table = ahead.result()
            if i + 1 < len(steps):
                _, g, a, b = steps[i + 1]
                ahead = pool.submit(reader.read, ship, g, a, b)
            yield step, table


class _Clock:
    """Adds the seconds since the previous call to ``phases[name]``."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.t
        self.t = now
