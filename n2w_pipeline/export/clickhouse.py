"""ClickHouse: the embedded engine (chDB) by default, an existing server through clickhouse-connect.

One MergeTree table per channel group (``<database>.<group asset name>``)::

    created_time DateTime64(6, 'UTC'), ship_id LowCardinality(String), `<column>` Nullable(Float64) …
    ENGINE = MergeTree PARTITION BY toYYYYMM(created_time) ORDER BY (ship_id, created_time)

**Idempotent ship-day loads** (``DayLoad``). A group's day, once read, is inserted into a stage
table of the same structure and counted and summed there; only when every group's day is read
does ``replace_day`` delete the ship-day from the table (a lightweight ``DELETE``, skipped when
the table holds none of it, as on a first export) and attach the stage's parts (``ATTACH
PARTITION … FROM``, which links the stage's parts into the table in one step); a ship-day the
table already holds row for row (a re-export, a group a correction did not change) is left as
it is (``same_rows``). A re-run or a
corrected day therefore replaces that ship-day, never adds to it; a read that fails half-way
drops the stage and leaves the table as it was. A reader sees the old ship-day, then (between
the DELETE and the ATTACH, milliseconds) none of it, then the new one: never a duplicate row,
never part of a day; ClickHouse has no transaction to close that gap. Two loads of the same
ship-day never interleave: the export holds a PostgreSQL advisory lock on the ship-day
(``export/day.py``). Chosen over a ReplacingMergeTree: that needs ``FINAL`` (or a merge) in
every query to hide old versions, and cannot remove a row that disappeared from PostgreSQL
without writing tombstones. Measured on a 655-column ship-day: the lightweight DELETE (a
mutation that rewrites the compact parts holding the day) 0.4-0.7 s; ClickHouse's patch-part
deletes (``lightweight_delete_mode = 'lightweight_update'``, 0.04 s) are beta, so not used.

**Schema evolution.** A channel appended to a list becomes ``ALTER TABLE … ADD COLUMN IF NOT
EXISTS `<column>` Nullable(Float64)`` before the next load; older rows read NULL there.

**chDB is in-process**: one data folder per process at a time, and a folder used by one
process only. ``ChdbBackend`` holds an exclusive ``flock`` on ``<folder>.lock`` while its
session is open, so a second process (another Dagster run, ``n2w olap`` while ``n2w dev``
exports) waits for it instead of failing; a session is opened per step and closed after it.

Every value is bound as a ClickHouse query parameter (``{name:Type}``); identifiers are
back-quoted by ``ident``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from n2w_pipeline.channels import TIME_COLUMN, ChannelGroup
from n2w_pipeline.export.read import SHIP_COLUMN, ColumnStats

DEFAULT_DATABASE = "n2w"
TIME_TYPE = "DateTime64(6, 'UTC')"
LOCK_WAIT_SECONDS = 600.0
COMPACT_PART_BYTES = 256 * 2**20
"""A ship-day insert (~656 Nullable columns) is written as a compact part (one data file)
instead of a wide one (two files and two mark files per column, ~2,600 files); parts merged
past 256 MB become wide, the layout analytic queries read column by column."""
GRANULE_BYTES = 2**30
"""Granules of ``index_granularity`` (8,192) rows whatever the row's width. ClickHouse's default
(10 MB a granule, adaptive) cut a 655-column table (~5 kB a row) into granules of ~1,900 rows,
so a query of a few columns read, filtered and aggregated 4x as many small blocks: the hourly
average of 10 channels over a ship-week took 19.4 ms instead of 12.9 ms (chDB, 7 daily parts).
Fixed when the table is created (ClickHouse cannot change it later)."""


class ClickHouseError(RuntimeError):
    """ClickHouse cannot be used; the message is one line saying where and why."""


def ident(name: str) -> str:
    """A back-quoted ClickHouse identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def redact_url(url: str) -> str:
    """The URL without user and password (for logs, metadata and errors)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


class Backend(Protocol):
    database: str
    label: str

    def command(self, query: str, params: dict[str, Any] | None = None) -> None: ...
    def query_arrow(self, query: str, params: dict[str, Any] | None = None) -> pa.Table: ...
    def insert_arrow(self, table: str, data: pa.Table) -> None: ...
    def close(self) -> None: ...


_process_lock = threading.Lock()


class ChdbBackend:
    """chDB with its data under ``path`` (created if missing)."""

    def __init__(self, path: Path, database: str = DEFAULT_DATABASE,
                 lock_wait: float = LOCK_WAIT_SECONDS, log=None) -> None:  # noqa: ANN001
        from chdb import session

        self.database = database
        self.path = Path(path).resolve()
        self.label = f"embedded ClickHouse (chDB) at {self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not _process_lock.acquire(timeout=lock_wait):
            raise ClickHouseError(f"{self.label}: still in use by this process after {lock_wait:.0f} s")
        self._lock_file = None
        # One call in chDB at a time, waited for here, where waiting releases the GIL: chDB
        # waits for its session without releasing it, while a running ``Python(data)`` insert
        # needs it — two threads calling at once deadlocked.
        self._calls = threading.Lock()
        try:
            lock_path = self.path.with_name(self.path.name + ".lock")
            self._lock_file = _flock(lock_path, lock_wait, self.label, log)
            self._session = session.Session(str(self.path))
            self._session.query(f"CREATE DATABASE IF NOT EXISTS {ident(database)}")
            self._session.query(f"USE {ident(database)}")
        except BaseException:
            self._release()
            raise

    def command(self, query: str, params: dict[str, Any] | None = None) -> None:
        with self._calls:
            self._session.query(query, "CSV", params=params or {})

    def query_arrow(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        with self._calls:
            return self._session.query(query, "ArrowTable", params=params or {})

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """chDB's ``Python(<name>)`` table function reads the Arrow table named ``data`` in this
        frame in place (a day of 655 columns went in ~2x faster than as an ArrowStream). One
        thread: the export's other threads use the other core, and peak memory fell by ~150 MB."""
        cols = ", ".join(ident(c) for c in data.column_names)
        with self._calls:
            self._session.query(f"INSERT INTO {table} ({cols}) SELECT * FROM Python(data) "
                                "SETTINGS max_threads = 1, max_insert_threads = 1", "CSV")

    def close(self) -> None:
        try:
            self._session.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
        with contextlib.suppress(RuntimeError):
            _process_lock.release()


def _flock(path: Path, wait: float, label: str, log) -> Any:  # noqa: ANN001
    f = open(path, "a")  # noqa: SIM115 - kept open while the lock is held
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise ClickHouseError(f"{label}: in use by another process for over {wait:.0f} s") from None
            if not told and log is not None:
                log.info(f"waiting for {label}: in use by another process")
                told = True
            time.sleep(0.2)


class ServerBackend:
    """An existing ClickHouse server through clickhouse-connect (HTTP). ``url``:
    ``http[s]://user:password@host:8123/database`` (database default ``n2w``)."""

    def __init__(self, url: str, database: str | None = None) -> None:
        import clickhouse_connect

        parts = urlsplit(url)
        self.database = database or parts.path.strip("/") or DEFAULT_DATABASE
        self.label = f"ClickHouse server {redact_url(url)}"
        self._calls = threading.Lock()  # one query at a time per client session (exports use threads)
        try:
            self._client = clickhouse_connect.get_client(
                host=parts.hostname or "localhost",
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=parts.username or "default", password=parts.password or "",
                secure=parts.scheme == "https", connect_timeout=5, send_receive_timeout=300,
            )
        except Exception as e:
            raise _server_error(self.label, url, e) from None
        self._client.command(f"CREATE DATABASE IF NOT EXISTS {ident(self.database)}")
        self._client.database = self.database

    def command(self, query: str, params: dict[str, Any] | None = None) -> None:
        with self._calls:
            self._client.command(query, parameters=params or None)

    def query_arrow(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        with self._calls:
            return self._client.query_arrow(query, parameters=params or None)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        with self._calls:
            self._client.insert_arrow(table, data)

    def close(self) -> None:
        self._client.close()


def _server_error(label: str, url: str, exc: Exception) -> Exception:
    """Connection failures stay retryable (OSError); an old server gets a one-line reason."""
    text = " ".join(str(exc).split())
    if "readonly" in text and "system.settings" in text or "Unknown identifier: readonly" in text:
        version = _plain_version(url)
        return ClickHouseError(
            f"{label}: ClickHouse {version or '(old)'} is too old for clickhouse-connect, which reads "
            "system.settings.readonly at connect (ClickHouse 18.x has no such column); use a current "
            "ClickHouse server, or unset N2W_CLICKHOUSE_URL for the embedded chDB")
    if isinstance(exc, OSError) or "Connection refused" in text or "Max retries exceeded" in text:
        return ConnectionError(f"{label}: unreachable ({text[:200]})")
    return ClickHouseError(f"{label}: {text[:300]}")


def _plain_version(url: str) -> str | None:
    """``SELECT version()`` over plain HTTP, for the message about an old server."""
    import urllib.request

    parts = urlsplit(url)
    base = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{parts.port or 8123}", path="/", query=""))
    request = urllib.request.Request(base + "?query=SELECT%20version()", headers={
        "X-ClickHouse-User": parts.username or "default", "X-ClickHouse-Key": parts.password or ""})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310
            return r.read().decode().strip()
    except Exception:  # noqa: BLE001 - only for the message
        return None


@contextlib.contextmanager
def open_backend(url: str | None, path: Path, log=None) -> Iterator[Backend]:  # noqa: ANN001
    """The configured ClickHouse for the duration of a ``with`` block."""
    backend: Backend = ServerBackend(url) if url else ChdbBackend(path, log=log)
    try:
        yield backend
    finally:
        backend.close()


# ------------------------------------------------------------------ tables

def table_name(backend: Backend, group: ChannelGroup) -> str:
    return f"{ident(backend.database)}.{ident(group.asset_name)}"


def existing_columns(backend: Backend, group: ChannelGroup) -> list[str] | None:
    got = backend.query_arrow(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "ORDER BY position",
        {"db": backend.database, "t": group.asset_name},
    )
    names = [str(v) for v in got.column(0).to_pylist()] if got.num_rows else []
    return names or None


def ensure_table(backend: Backend, group: ChannelGroup) -> tuple[bool, list[str]]:
    """Create the group's table or add the list's new channels: (created, added columns)."""
    have = existing_columns(backend, group)
    if have is None:
        cols = [f"{ident(TIME_COLUMN)} {TIME_TYPE}", f"{ident(SHIP_COLUMN)} LowCardinality(String)"]
        cols += [f"{ident(c)} Nullable(Float64)" for c in group.columns]
        backend.command(
            f"CREATE TABLE IF NOT EXISTS {table_name(backend, group)} ({', '.join(cols)}) "
            f"ENGINE = MergeTree PARTITION BY toYYYYMM({ident(TIME_COLUMN)}) "
            f"ORDER BY ({ident(SHIP_COLUMN)}, {ident(TIME_COLUMN)}) "
            f"SETTINGS min_bytes_for_wide_part = {COMPACT_PART_BYTES}, "
            f"index_granularity_bytes = {GRANULE_BYTES}"
        )
        return True, list(group.columns)
    present = set(have)
    added = [c for c in group.columns if c not in present]
    if added:
        backend.command(f"ALTER TABLE {table_name(backend, group)} "
                        + ", ".join(f"ADD COLUMN IF NOT EXISTS {ident(c)} Nullable(Float64)" for c in added))
    return False, added


def _window(ship: str, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    return {"ship": ship, "start": f"{start:%Y-%m-%d %H:%M:%S}", "end": f"{end:%Y-%m-%d %H:%M:%S}"}


_WHERE = (f"{ident(SHIP_COLUMN)} = {{ship:String}} AND {ident(TIME_COLUMN)} >= {{start:{TIME_TYPE}}} "
          f"AND {ident(TIME_COLUMN)} < {{end:{TIME_TYPE}}}")


class DayLoad:
    """One ship-day of one group, loaded so that a reader never sees a duplicate or half a day.

    ``add`` the slices (kept as Arrow: one day of one group, ~30 MB for 655 channels); ``stage``
    (when the group's day is read; it can run in a thread while the next group is read) inserts
    them in one INSERT into a stage table of the same structure (``<table>__stage_<ship>_<day>``)
    and counts and sums the stage there; ``replace_day`` (when every group's day is read) deletes
    the ship-day from the table if it holds any of it, attaches the stage's parts (``ATTACH
    PARTITION … FROM``: the parts are linked, not copied) and drops the stage; ``drop`` discards
    it all. One INSERT per group-day: each statement on a ~658-column table costs ~0.1-0.15 s
    whatever its rows (planning its columns), so inserting per slice took 3x the time."""

    def __init__(self, backend: Backend, group: ChannelGroup, ship: str, day: dt.date) -> None:
        self.backend, self.group, self.ship, self.day = backend, group, ship, day
        self.target = table_name(backend, group)
        self.stage_name = f"{group.asset_name}__stage_{ship}_{day:%Y%m%d}"
        self.stage_table = f"{ident(backend.database)}.{ident(self.stage_name)}"
        self.parts: list[pa.Table] = []
        self.rows = 0
        self.staged: ColumnStats | None = None
        self.unchanged = False

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.parts.append(table)
            self.rows += table.num_rows

    def stage(self) -> ColumnStats:
        """Insert the day into a fresh stage table and return its figures (rows, per column the
        non-NULL count and sum, computed by ClickHouse)."""
        self.backend.command(f"DROP TABLE IF EXISTS {self.stage_table}")
        self.backend.command(f"CREATE TABLE {self.stage_table} AS {self.target}")
        if self.rows:
            self.backend.insert_arrow(self.stage_table, pa.concat_tables(self.parts))
        self.parts = []
        self.staged = table_stats(self.backend, self.stage_table, self.group.columns)
        # the day's buffers are free now: hand them back, so two days in flight do not add up
        pa.default_memory_pool().release_unused()
        if isinstance(self.backend, ChdbBackend):
            self.backend.command("SYSTEM JEMALLOC PURGE")
        return self.staged

    def replace_day(self, start: dt.datetime, end: dt.datetime) -> int:
        """Swap the staged day in; returns the ship-day's rows in the table afterwards. A day
        the table already holds exactly (``same_rows``: a re-export, a group a correction did
        not touch) is left as it is and the stage dropped (``unchanged``)."""
        assert self.staged is not None, "stage() before replace_day()"
        window = _window(self.ship, start, end)
        held = count_rows(self.backend, self.target, window)
        if held == self.staged.rows > 0 and same_rows(self.backend, self.stage_table, self.target, window):
            self.unchanged = True
            self.backend.command(f"DROP TABLE IF EXISTS {self.stage_table}")
            return held
        if held:
            self.backend.command(f"DELETE FROM {self.target} WHERE {_WHERE}", window)
        got = self.backend.query_arrow(
            "SELECT DISTINCT partition_id FROM system.parts WHERE database = {db:String} "
            "AND table = {t:String} AND active", {"db": self.backend.database, "t": self.stage_name})
        for pid in got.column(0).to_pylist() if got.num_rows else []:
            if not str(pid).isalnum():  # toYYYYMM partitions: digits; never pasted unchecked
                raise ClickHouseError(f"{self.stage_table}: unexpected partition id {pid!r}")
            self.backend.command(
                f"ALTER TABLE {self.target} ATTACH PARTITION ID '{pid}' FROM {self.stage_table}")
        self.backend.command(f"DROP TABLE IF EXISTS {self.stage_table}")
        return count_rows(self.backend, self.target, window)

    def drop(self) -> None:
        self.parts = []
        self.backend.command(f"DROP TABLE IF EXISTS {self.stage_table}")


def same_rows(backend: Backend, stage: str, table: str, window: dict[str, Any]) -> bool:
    """Whether every row of ``stage`` is in ``table``'s ship-day, every column bit for bit
    (NULL equal to NULL; ``EXCEPT`` compares whole rows). With the row counts equal and each
    day's timestamps unique, that is the same day. Reading the day back costs a fraction of a
    ``DELETE``, which rewrites the part holding the day and, on chDB, grew the process's memory
    with every day replaced."""
    got = backend.query_arrow(
        f"SELECT count() FROM (SELECT * FROM {stage} EXCEPT DISTINCT SELECT * FROM {table} "
        f"WHERE {_WHERE}) SETTINGS max_threads = 1", window)
    return int(got.column(0)[0].as_py()) == 0


def count_rows(backend: Backend, table: str, window: dict[str, Any]) -> int:
    got = backend.query_arrow(f"SELECT count() FROM {table} WHERE {_WHERE}", window)
    return int(got.column(0)[0].as_py())


def table_stats(backend: Backend, table: str, columns: Sequence[str]) -> ColumnStats:
    """Rows, and per column the non-NULL count and sum, of a whole (stage) table, computed by
    ClickHouse in one aggregate over an array of the columns (``countForEach``/``sumForEach``:
    the order is the list's). JIT-compiling the aggregates is off: compiling ~1,300 of them
    took seconds, more than the query. One thread: faster here (137 vs 167 ms for a 655-column
    day) and less memory."""
    if not columns:
        got = backend.query_arrow(f"SELECT count() FROM {table}")
        return ColumnStats(rows=int(got.column(0)[0].as_py()))
    array = ", ".join(ident(c) for c in columns)
    got = backend.query_arrow(
        f"SELECT count(), countForEach(a), sumForEach(a) FROM (SELECT [{array}] AS a FROM {table}) "
        "SETTINGS compile_aggregate_expressions = 0, max_threads = 1")
    rows = int(got.column(0)[0].as_py())
    counts = got.column(1)[0].as_py() or [0] * len(columns)
    sums = got.column(2)[0].as_py() or [0.0] * len(columns)
    return ColumnStats(rows=rows, count={c: int(n) for c, n in zip(columns, counts, strict=True)},
                       total={c: float(x or 0.0) for c, x in zip(columns, sums, strict=True)})
