"""Hours the realtime sensor still owes: partitions whose run failed or was cancelled.

Pure (no Dagster, no clock): ``defs/realtime.py`` reads the sensor's runs from the instance
as ``RunOutcome``s and stores the result in the cursor (``Cursor.owed``).

The cursor's frontier moved past the rows that triggered a run when the run was requested,
so a run that fails (a server restart, a full disk, a lock, a bug fixed since) or is
cancelled in the queue would leave its hours behind for good. Instead each of its
partitions becomes *owed* and is requested again until a run covering it succeeds:

- **Covered** means a run of the partition that started after the failed run was created:
  the rows that triggered the failed run were committed before its tick, so any run that
  reads later sees them. A success of such a run — a retry or the next ordinary run of the
  hour — settles the partition; one queued or running waits for its outcome.
- **Backoff**: after the n-th failure the next request waits ``base × 2ⁿ⁻¹`` seconds
  (``N2W_REALTIME_RETRY_SECONDS``, at most ``MAX_BACKOFF_SECONDS``), times a jitter factor in
  [0.5, 1) drawn from the partition and n — deterministic, so evaluating a tick twice gives
  the same cursor, and spread, so owed hours do not all come back at once.
- **Never given up**: requests go on, every 10 minutes at most, until one succeeds; the
  tick message names what is owed and when the next request is due.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from n2w_pipeline.realtime.cursor import Owed, split_part

MAX_BACKOFF_SECONDS = 600.0
FAILED = ("failure", "canceled")
IN_FLIGHT = ("queued", "starting", "started")


@dataclass(frozen=True)
class RunOutcome:
    """A realtime run as the instance records it: the partitions it covers (``part_key``s),
    its status (failure, canceled, success, queued, starting, started), when it was created,
    started and last updated (epoch seconds; ``started`` None if it never started)."""

    parts: frozenset[str]
    status: str
    created: float
    started: float | None
    updated: float


def backoff(part: str, failures: int, base: float) -> float:
    """Seconds to wait after the ``failures``-th failure of ``part``."""
    if failures <= 0:
        return 0.0
    delay = min(MAX_BACKOFF_SECONDS, base * 2 ** (failures - 1))
    h = int.from_bytes(hashlib.sha1(f"{part}:{failures}".encode()).digest()[:4], "big")
    return delay * (0.5 + 0.5 * h / 2**32)


def _covers(run: RunOutcome, owed: Owed) -> bool:
    """``run`` reads the partition after the failure (see the module docstring)."""
    if run.status in ("queued", "starting"):
        return True  # it has not read yet: it will
    return run.started is not None and run.started >= owed.since


def update_owed(owed: dict[str, Owed], runs: Iterable[RunOutcome], checked: float, now: float,
                base: float) -> tuple[dict[str, Owed], float, list[str]]:
    """The owed partitions after looking at ``runs`` (the sensor's runs updated since
    ``checked`` and those of the owed partitions): failures and cancellations add or back off,
    covering successes settle. Returns (owed, the new ``checked``, log lines)."""
    out = dict(owed)
    lines: list[str] = []
    newest = checked
    runs = sorted(runs, key=lambda r: r.updated)
    for run in runs:
        newest = max(newest, run.updated)
        if run.status in FAILED and run.updated > checked:
            for part in sorted(run.parts):
                o = out.get(part)
                if o is None:
                    o = Owed(since=run.created, reason=run.status)
                elif run.started is not None and run.started < o.since:
                    continue  # an older run's outcome: already counted
                failures = o.attempts + 1
                out[part] = replace(o, attempts=failures, next_at=now + backoff(part, failures, base),
                                    reason=run.status)
                lines.append(f"{_name(part)}: realtime run {run.status} (failure {failures}); requested "
                             f"again in {out[part].next_at - now:.0f} s")
    for run in runs:
        if run.status == "success":
            for part in run.parts & out.keys():
                if _covers(run, out[part]):
                    lines.append(f"{_name(part)}: owed since a {out[part].reason} run, now materialised")
                    del out[part]
    return out, newest, lines


def due(owed: dict[str, Owed], runs: Iterable[RunOutcome], now: float) -> list[str]:
    """Owed partitions to request now: their wait is over and no run covering them is
    queued or running."""
    flying = [r for r in runs if r.status in IN_FLIGHT]
    return sorted(p for p, o in owed.items()
                  if now >= o.next_at and not any(p in r.parts and _covers(r, o) for r in flying))


def requested(owed: dict[str, Owed], parts: Iterable[str], now: float) -> dict[str, Owed]:
    """``parts`` were just requested: until their run's outcome comes back, the next request
    waits ``MAX_BACKOFF_SECONDS`` (in case the request never becomes a run)."""
    out = dict(owed)
    for p in parts:
        out[p] = replace(out[p], next_at=now + MAX_BACKOFF_SECONDS)
    return out


def describe(owed: dict[str, Owed], now: float, limit: int = 5) -> str:
    """The tick message's part: what is owed and when it is next requested."""
    if not owed:
        return ""
    items = sorted(owed.items(), key=lambda kv: kv[1].next_at)
    shown = ", ".join(f"{_name(p)} ({o.reason} ×{o.attempts}, next in {max(o.next_at - now, 0):.0f} s)"
                      for p, o in items[:limit])
    more = f" and {len(owed) - limit} more" if len(owed) > limit else ""
    return f"{len(owed)} partition(s) owed after failed or cancelled runs: {shown}{more}"


def _name(part: str) -> str:
    ship, hour = split_part(part)
    return f"{ship} {hour:%Y-%m-%d %H:00}"


def epoch(value: dt.datetime | float | None) -> float | None:
    """A Dagster timestamp (datetime or epoch seconds) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return float(value)
