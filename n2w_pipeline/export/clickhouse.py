"""ClickHouse: the embedded engine (chDB) by default, an existing server through clickhouse-connect.

One MergeTree table per channel group (``<database>.<group asset name>``)::

    created_time DateTime64(6, 'UTC'), ship_id LowCardinality(String), `<column>` Nullable(Float64) …
    ENGINE = MergeTree PARTITION BY toYYYYMM(created_time) ORDER BY (ship_id, created_time)

**Idempotent ship-day loads.** A day's slices are kept as Arrow (one day of one group); only
when the whole day is read does ``replace_day`` delete the ship-day from the table (a
lightweight ``DELETE``) and insert the day in one ``INSERT``. A re-run or a corrected day
therefore replaces that ship-day, never adds to it; a read that fails half-way leaves the
table as it was. Between the DELETE and the INSERT (milliseconds to a second) a reader can
see the ship-day empty; ClickHouse has no transaction to close that gap. Two loads of the same
ship-day never interleave: the export holds a PostgreSQL advisory lock on the ship-day
(``export/day.py``). Chosen over a ReplacingMergeTree: that needs ``FINAL`` (or a merge) in
every query to hide old versions, and cannot remove a row that disappeared from PostgreSQL
without writing tombstones.

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
        self._session.query(query, "CSV", params=params or {})

    def query_arrow(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._session.query(query, "ArrowTable", params=params or {})

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """chDB's ``Python(<name>)`` table function reads the Arrow table named ``data`` in this
        frame in place (a day of 655 columns went in ~2x faster than as an ArrowStream)."""
        cols = ", ".join(ident(c) for c in data.column_names)
        self._session.query(f"INSERT INTO {table} ({cols}) SELECT * FROM Python(data)", "CSV")

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
        self._client.command(query, parameters=params or None)

    def query_arrow(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._client.query_arrow(query, parameters=params or None)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
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
            f"SETTINGS min_bytes_for_wide_part = {COMPACT_PART_BYTES}"
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
    """One ship-day of one group: ``add`` the slices (kept in memory as Arrow: one day of one
    group, ~30 MB for 655 channels), then ``replace_day`` deletes the ship-day and inserts it in
    one INSERT. ClickHouse is touched only once the whole day has been read."""

    def __init__(self, backend: Backend, group: ChannelGroup, ship: str, day: dt.date) -> None:
        self.backend, self.group, self.ship, self.day = backend, group, ship, day
        self.target = table_name(backend, group)
        self.parts: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.parts.append(table)
            self.rows += table.num_rows

    def replace_day(self, start: dt.datetime, end: dt.datetime) -> None:
        self.backend.command(f"DELETE FROM {self.target} WHERE {_WHERE}", _window(self.ship, start, end))
        if self.rows:
            self.backend.insert_arrow(self.target, pa.concat_tables(self.parts).combine_chunks())
        self.drop()

    def drop(self) -> None:
        self.parts = []


def read_day(backend: Backend, group: ChannelGroup, ship: str, start: dt.datetime, end: dt.datetime
             ) -> pa.Table:
    """The ship-day's rows as ClickHouse holds them (for the reconciliation)."""
    return backend.query_arrow(f"SELECT * FROM {table_name(backend, group)} WHERE {_WHERE}",
                               _window(ship, start, end))


def day_stats(backend: Backend, group: ChannelGroup, ship: str, start: dt.datetime, end: dt.datetime,
              columns: Sequence[str]) -> ColumnStats:
    """ClickHouse's rows of the ship-day read back, counted and summed by Polars. (One
    ``count/sum`` query over ~1,300 expressions took 1-3 s per group-day in chDB 4.4, up to 50 s
    on the first query after a re-opened session; reading the day back takes ~0.3 s.)"""
    import polars as pl

    from n2w_pipeline.export.reconcile import frame_stats

    frame = pl.from_arrow(read_day(backend, group, ship, start, end))
    assert isinstance(frame, pl.DataFrame)
    return frame_stats(frame, columns)
