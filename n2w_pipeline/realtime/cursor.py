"""The realtime sensor's state between ticks: how arrival order is read (``Arrival``),
the arrival ranges still watched (``Pending``), and the ``Cursor`` Dagster stores as JSON.

Partitions are named in the cursor ``ship|YYYY-MM-DDTHH:MM`` (``part_key``): cursors
stored by running sensors hold these keys, so the format stays as it is.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from psycopg import sql

from n2w_pipeline.config import Settings

EMPTY_TIME = dt.datetime(1, 1, 1)

Key = int | dt.datetime  # an arrival value: an id, or a server_created_time


@dataclass(frozen=True)
class Arrival:
    """How arrival order is read: the column, and whether its values are unique ids."""

    column: str
    unique: bool

    @property
    def empty(self) -> Key:
        """The frontier of a tick that has seen nothing (below every value)."""
        return 0 if self.unique else EMPTY_TIME

    def dump(self, value: Key) -> int | str:
        return value if isinstance(value, int) else value.isoformat()

    def load(self, value: int | str) -> Key:
        return int(value) if self.unique else dt.datetime.fromisoformat(str(value))

    @property
    def sql_type(self) -> sql.SQL:
        return sql.SQL("bigint" if self.unique else "timestamp")


def arrival(settings: Settings) -> Arrival:
    """The arrival column N2W_REALTIME_CURSOR_COLUMN names, through N2W_COL_* mapping."""
    if settings.realtime_cursor == "id":
        return Arrival(settings.columns.id, unique=True)
    if settings.realtime_cursor == "server_created_time":
        return Arrival(settings.columns.server_created_time, unique=False)
    raise ValueError(f"realtime cursor must be id or server_created_time, got {settings.realtime_cursor!r}")


def part_key(ship: str, hour: dt.datetime) -> str:
    """The cursor's name of a (ship, hour) partition."""
    return f"{ship}|{hour:%Y-%m-%dT%H:%M}"


def split_part(part: str) -> tuple[str, dt.datetime]:
    """A ``part_key`` → (ship, hour)."""
    ship, hour = part.rsplit("|", 1)
    return ship, dt.datetime.fromisoformat(hour)


@dataclass
class Pending:
    """An arrival range (lo, hi] re-read every tick until it settles.

    ``writers``: the open writer transactions (``writers.Writers``) that could still write
    into it, as read after the snapshot that first saw it, shrunk as they end (None: not
    known yet, e.g. a cursor stored before they were tracked); ``at``: when it was first seen
    (epoch seconds); ``seen``: row count per partition (``part_key``) at the last read, None =
    unknown; ``cleared``: the writers' WAL position when none of them was open any more —
    the next read on a server that has replayed past it is the last one.
    """

    lo: Key
    hi: Key
    writers: list[str] | None
    at: float
    seen: dict[str, int] | None = field(default_factory=dict)
    cleared: int | None = None
    warned: int = 0  # warnings given so far about its age (one per WARN_PENDING_SECONDS)


@dataclass
class Cursor:
    """The sensor's state between ticks, stored by Dagster as JSON."""

    column: str
    frontier: Key | None = None  # None: not initialised yet
    pending: list[Pending] = field(default_factory=list)
    deferred: dict[str, tuple[str, int]] = field(default_factory=dict)  # part → (last, rows)
    skipped: dict[str, int] = field(default_factory=dict)  # cumulative reason → rows
    owed: dict[str, Owed] = field(default_factory=dict)  # part → hours whose run failed
    checked: float = 0.0  # runs that ended (failed, cancelled) after this were looked at

    def to_json(self, arr: Arrival) -> str:
        return json.dumps(
            {
                "column": self.column,
                "frontier": None if self.frontier is None else arr.dump(self.frontier),
                "pending": [
                    [arr.dump(p.lo), arr.dump(p.hi), p.writers, round(p.at, 3), p.seen, p.cleared, p.warned]
                    for p in self.pending
                ],
                "deferred": {k: list(v) for k, v in sorted(self.deferred.items())},
                "skipped": dict(sorted(self.skipped.items())),
                "owed": {k: v.dump() for k, v in sorted(self.owed.items())},
                "checked": self.checked,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None, arr: Arrival) -> Cursor:
        """Parse a stored cursor; None, or one for another arrival column, starts afresh."""
        if not text:
            return cls(arr.column)
        data = json.loads(text)
        if data.get("column") != arr.column:
            return cls(arr.column)
        frontier = data.get("frontier")
        return cls(
            column=arr.column,
            frontier=None if frontier is None else arr.load(frontier),
            pending=[_load_pending(p, arr) for p in data.get("pending", [])],
            deferred={k: (str(v[0]), int(v[1])) for k, v in data.get("deferred", {}).items()},
            skipped={k: int(v) for k, v in data.get("skipped", {}).items()},
            owed={k: Owed.load(v) for k, v in data.get("owed", {}).items()},
            checked=float(data.get("checked", 0.0)),
        )


def _load_pending(p: list, arr: Arrival) -> Pending:
    """A stored pending range; the format before writers were tracked held the snapshot's
    xmax (an int) in their place: its writers are read again (None)."""
    lo, hi, writers, at, seen = p[:5]
    cleared = p[5] if len(p) > 5 else None
    return Pending(arr.load(lo), arr.load(hi), list(writers) if isinstance(writers, list) else None,
                   float(at), seen, None if cleared is None else int(cleared), int(p[6]) if len(p) > 6 else 0)


@dataclass
class Owed:
    """A partition whose realtime run failed or was cancelled: requested again until a run
    covering it succeeds. ``since``: creation time of the first failed run (a run created
    later reads every row that one would have read); ``attempts``: runs requested for it
    since; ``next_at``: when to request the next one (epoch seconds)."""

    since: float
    attempts: int = 0
    next_at: float = 0.0
    reason: str = ""

    def dump(self) -> list:
        return [round(self.since, 3), self.attempts, round(self.next_at, 3), self.reason]

    @classmethod
    def load(cls, v: list) -> Owed:
        return cls(float(v[0]), int(v[1]), float(v[2]), str(v[3]) if len(v) > 3 else "")
