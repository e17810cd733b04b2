"""A run's lanes: the connections a window's slices are processed on.

A lane is a writer connection on the data database and a reader (``NarrowReader``) on
the source; ``PIPELINE_LANES`` of them per window, one slice in flight on each (see
``materialize``). A ``LanePool`` keeps them open across a run's windows: opening a reader
costs ~0.2 s, and a realtime run covers one hour of up to every ship.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from n2w_pipeline.config import Settings
from n2w_pipeline.extract import NarrowReader
from n2w_pipeline.priority import match_server_process

PIPELINE_LANES = 2
"""Slices in flight per window (one extracting while the other pivots and writes). This default,
N2W_SLICE_HOURS (6), `n2w backfill --parallel` (1) and N2W_CORRECTION_WORKERS (2) follow from
`n2w bench sweep`: each was within the noise of the fastest configuration of its grid
(docs/operations.md#throughput-sweep; the sweep of 2026-12-02 ran on a busy machine)."""


class Lane:
    """One lane's connections, a writer on the data database and a reader on the source:
    opened on first use, dropped after a transient error and opened again by the next
    attempt (a broken connection stays broken)."""

    def __init__(self, url: str, source_url: str, settings: Settings, channels: Sequence[str]) -> None:
        self.args = (url, source_url, settings, channels)
        self.conn: psycopg.Connection | None = None
        self.reader: NarrowReader | None = None

    def open(self) -> tuple[psycopg.Connection, NarrowReader]:
        url, source_url, settings, channels = self.args
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(url)
            match_server_process(self.conn.info.backend_pid, self.conn.info.host)  # a backfill's: nicer
        if self.reader is None:
            self.reader = NarrowReader(source_url, settings, channels)
            match_server_process(self.reader.backend_pid, conninfo_to_dict(source_url).get("host"))
        return self.conn, self.reader

    def drop(self) -> None:
        conn, reader, self.conn, self.reader = self.conn, self.reader, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()


class LanePool:
    """``size`` lanes (``Lane``) for one run's windows: ``materialize_window(connections=…)``
    takes the first ones it needs, so a run of many ship-hours (a realtime run covers one hour
    of up to every ship) opens its readers once. Close it (or use it as a context manager)."""

    def __init__(self, url: str, source_url: str, settings: Settings, channels: Sequence[str],
                 size: int = PIPELINE_LANES) -> None:
        self.lanes = [Lane(url, source_url, settings, channels) for _ in range(max(1, size))]

    def close(self) -> None:
        for lane in self.lanes:
            lane.drop()

    def __enter__(self) -> LanePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
