"""One attempt at one ship-day: ``start`` reads it (one PostgreSQL snapshot) and hands each
group's day to a thread that finishes it (Parquet file written, hashed and read back; ClickHouse
stage loaded and counted); ``complete`` publishes (rename, swap) and reconciles; ``abort`` undoes
whatever was done. ``export/day.py`` runs attempts with retries, and pipelines days: the next
day's ``start`` runs while this day's finishing work is still going on.

The groups are read one after the other, the widest first, slice by slice (``N2W_SLICE_HOURS``;
the next slice is read in a thread while this one is handed on). A group's day goes to the
finishing thread as soon as it is read, so its file and stage are written while the next group
is read, and what is left when the read ends is the narrowest group's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import psycopg

from n2w_pipeline.channels import ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.export import clickhouse as ch
from n2w_pipeline.export.parquet import ParquetDayWriter, ParquetResult
from n2w_pipeline.export.paths import parquet_path
from n2w_pipeline.export.read import ColumnStats, WideDayReader, arrow_schema
from n2w_pipeline.export.reconcile import Mismatch, compare
from n2w_pipeline.hours import window_slices

DAY = dt.timedelta(days=1)


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
    clickhouse_unchanged: bool = False  # the table held the day row for row: left as it was


def lock_key(ship: str, day: dt.date) -> tuple[int, int]:
    return zlib.crc32(f"n2w:export:{ship}".encode()) - 2**31, day.toordinal()


class DayAttempt:
    """``start()`` then ``complete()``; ``abort()`` after a failure of either."""

    def __init__(
        self, url: str, settings: Settings, ship: str, day: dt.date,
        parquet_groups: Sequence[ChannelGroup], clickhouse_groups: Sequence[ChannelGroup],
        backend: ch.Backend | None, metadata: dict[str, str] | None = None,
    ) -> None:
        self.url, self.settings, self.ship, self.day = url, settings, ship, day
        self.backend, self.metadata = backend, metadata
        self.start_time = dt.datetime.combine(day, dt.time())
        self.end_time = self.start_time + DAY
        self.groups = {g.number: g for g in [*parquet_groups, *clickhouse_groups]}
        self.to_parquet = {g.number for g in parquet_groups}
        self.to_ch = {g.number for g in clickhouse_groups} if backend is not None else set()
        self.out = {n: GroupDay(g) for n, g in self.groups.items()}
        self.writers: dict[int, ParquetDayWriter] = {}
        self.loads: dict[int, ch.DayLoad] = {}
        self.finished: dict[tuple[str, int], Future] = {}
        self.abs_sums = {n: np.zeros(len(g.columns)) for n, g in self.groups.items()}
        self.phases: dict[str, float] = {}
        self._stack = contextlib.ExitStack()
        self._lock_conn: psycopg.Connection | None = None
        self._clock = _Clock(self.phases)

    # ------------------------------------------------------------------ read

    def start(self) -> None:
        """Lock the ship-day, prepare the targets, read every group in one snapshot and hand each
        group's day to the finishing thread; PostgreSQL's figures are in when this returns."""
        self._lock_conn = self._stack.enter_context(psycopg.connect(self.url, autocommit=True))
        self._lock_conn.execute("SELECT pg_advisory_lock(%s, %s)", lock_key(self.ship, self.day))
        self._clock("lock")
        for n in sorted(self.to_ch):
            assert self.backend is not None
            _, self.out[n].clickhouse_added = ch.ensure_table(self.backend, self.groups[n])
            self.out[n].clickhouse_table = ch.table_name(self.backend, self.groups[n])
            self.loads[n] = ch.DayLoad(self.backend, self.groups[n], self.ship, self.day)
        self._clock("clickhouse_ddl")
        for n in sorted(self.to_parquet):
            path = parquet_path(self.settings, self.groups[n], self.ship, self.day)
            self.writers[n] = ParquetDayWriter(path, arrow_schema(self.groups[n]), self.metadata)
        reader = self._stack.enter_context(WideDayReader(self.url, self.settings))
        finisher = self._stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="n2w-export-finish"))
        self._reader, self._finisher = reader, finisher
        reader.begin(self.ship, list(self.groups.values()), self.start_time, self.end_time)
        order = sorted(self.groups.values(), key=lambda g: (-len(g.columns), g.number))
        slices = window_slices(self.start_time, self.end_time, self.settings.slice_hours)
        steps = [(g.number, g, a, b) for g in order for a, b in slices]
        for (n, g, _a, b), piece in _prefetched(reader, self.ship, steps):
            self.out[n].rows += piece.table.num_rows
            self.abs_sums[n] += piece.abs_sums
            if n in self.writers:
                self.writers[n].write(piece.table)
            if n in self.loads:
                self.loads[n].add(piece.table)
            del piece
            if b == self.end_time:  # the group's day is read
                self._hand_on(n, g)
        self._clock("read_write")
        for n, g in self.groups.items():
            self.out[n].reference = reader.day_stats(self.ship, g, self.start_time, self.end_time)
        reader.end()
        self._clock("postgres_stats")

    def _hand_on(self, n: int, g: ChannelGroup) -> None:
        if n in self.writers:
            self.finished["parquet", n] = self._finisher.submit(
                _timed, self.phases, "parquet_finish", self.writers[n].finish, list(g.columns))
        if n in self.loads:
            self.finished["clickhouse", n] = self._finisher.submit(
                _timed, self.phases, "clickhouse_stage", self.loads[n].stage)

    # ------------------------------------------------------------------ publish

    def complete(self) -> dict[int, GroupDay]:
        """Wait for the finishing work, publish the files, swap the ClickHouse ship-days in,
        unlock, and compare every target with PostgreSQL's figures."""
        self._clock.reset()
        for f in self.finished.values():
            f.result()
        self._clock("finish_wait")
        for n, w in self.writers.items():
            self.out[n].parquet = w.publish()
        self._clock("parquet_publish")
        in_table = {n: load.replace_day(self.start_time, self.end_time) for n, load in self.loads.items()}
        for n, load in self.loads.items():
            self.out[n].clickhouse_unchanged = load.unchanged
        self._clock("clickhouse_replace")
        self._unlock()
        self._stack.close()
        for n, g in self.groups.items():
            ref = self.out[n].reference
            assert ref is not None
            scale = dict(zip(g.columns, self.abs_sums[n].tolist(), strict=True))
            if n in self.writers:
                got = self.out[n].parquet.stats  # type: ignore[union-attr]
                assert got is not None
                self.out[n].parquet_mismatches = compare(ref, replace(got, scale=scale), g.columns)
            if n in self.loads:
                staged = self.loads[n].staged
                assert staged is not None
                mism = compare(ref, replace(staged, scale=scale), g.columns)
                if in_table[n] != ref.rows and not any(m.what == "rows" for m in mism):
                    mism.insert(0, Mismatch("", "rows", ref.rows, in_table[n]))  # leftovers or a gap
                self.out[n].clickhouse_mismatches = mism
        return self.out

    def abort(self) -> None:
        """Discard the temporary files and stages, roll the snapshot back, unlock."""
        for f in self.finished.values():
            f.cancel()
        with contextlib.suppress(Exception):
            for f in self.finished.values():
                if not f.cancelled():
                    with contextlib.suppress(Exception):
                        f.result()
        reader = getattr(self, "_reader", None)
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.rollback()
        for w in self.writers.values():
            w.discard()
        for load in self.loads.values():
            with contextlib.suppress(Exception):
                load.drop()
        self._unlock()
        with contextlib.suppress(Exception):
            self._stack.close()

    def _unlock(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                self._lock_conn.execute("SELECT pg_advisory_unlock(%s, %s)", lock_key(self.ship, self.day))
            self._lock_conn = None


def _timed(phases: dict[str, float], name: str, fn: Callable, *args):  # noqa: ANN002, ANN202
    """``fn(*args)``, its seconds added to ``phases[name]`` (work overlapping the read)."""
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0


def _prefetched(reader: WideDayReader, ship: str, steps: list) -> Iterator:  # noqa: ANN001
    """``(step, WideSlice)`` for each (group number, group, start, end) step, the next one read in
    a thread while the caller hands this one on: the server's COPY and the client's work overlap
    (one read in flight, so memory holds two slices)."""
    with ThreadPoolExecutor(1, thread_name_prefix="n2w-export-read") as pool:
        ahead = pool.submit(reader.read, ship, steps[0][1], steps[0][2], steps[0][3]) if steps else None
        for i, step in enumerate(steps):
            assert ahead is not None
            piece = ahead.result()
            if i + 1 < len(steps):
                _, g, a, b = steps[i + 1]
                ahead = pool.submit(reader.read, ship, g, a, b)
            yield step, piece


class _Clock:
    """Adds the seconds since the previous call to ``phases[name]``."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases
        self.t = time.perf_counter()

    def reset(self) -> None:
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.t
        self.t = now
