"""Reconciliation of an exported ship-day with PostgreSQL: rows, and per column the non-NULL
count (exact) and the sum (to 1e-9 relative)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from n2w_pipeline.export.read import ColumnStats

SUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Mismatch:
    column: str  # "" for the row count
    what: str  # rows | count | sum
    expected: float
    actual: float


def frame_stats(frame: pl.DataFrame, columns: Sequence[str]) -> ColumnStats:
    """Rows, and per column the non-NULL count and sum, of exported data read back."""
    have = [c for c in columns if c in frame.columns]
    stats = ColumnStats(rows=frame.height)
    if not have:
        return stats
    agg = frame.select(
        [pl.col(c).count().alias(f"n{i}") for i, c in enumerate(have)]
        + [pl.col(c).sum().alias(f"s{i}") for i, c in enumerate(have)]
    ).row(0)
    k = len(have)
    for i, c in enumerate(have):
        stats.count[c] = int(agg[i])
        stats.total[c] = float(agg[k + i] or 0.0)
    return stats


def compare(reference: ColumnStats, actual: ColumnStats, columns: Sequence[str],
            rel: float = SUM_TOLERANCE) -> list[Mismatch]:
    """Differences of ``actual`` from PostgreSQL's ``reference``. A sum may differ by ``rel`` ×
    the column's sum of absolute values (the scale of rounding in a different summation order;
    it is also ≥ |sum|, so this is at least as strict as nothing but "relative to the sum"
    where values cancel). That scale is whichever side knows it (the export computes it from the
    values it read); a wrong value of magnitude v moves the sum by about v and the scale by at
    most v, so it cannot hide itself behind the tolerance it raises."""
    out: list[Mismatch] = []
    if reference.rows != actual.rows:
        out.append(Mismatch("", "rows", reference.rows, actual.rows))
    for c in columns:
        n_ref, n_act = reference.count.get(c, 0), actual.count.get(c, 0)
        if n_ref != n_act:
            out.append(Mismatch(c, "count", n_ref, n_act))
        s_ref, s_act = reference.total.get(c, 0.0), actual.total.get(c, 0.0)
        scale = max(reference.scale.get(c, 0.0), actual.scale.get(c, 0.0), abs(s_ref), abs(s_act))
        if abs(s_ref - s_act) > rel * scale:
            out.append(Mismatch(c, "sum", s_ref, s_act))
    return out


def describe(where: str, ship: str, day: dt.date, mismatches: Sequence[Mismatch], limit: int = 5) -> str:
    """One line naming the table (or file), the columns and the day."""
    if not mismatches:
        return f"{where} {ship} {day:%Y-%m-%d}: rows, counts and sums equal PostgreSQL's"
    parts = []
    for m in mismatches[:limit]:
        col = f"column {m.column!r} " if m.column else ""
        parts.append(f"{col}{m.what} {m.actual!r} != PostgreSQL {m.expected!r}")
    more = f" (+{len(mismatches) - limit} more)" if len(mismatches) > limit else ""
    return f"{where} {ship} {day:%Y-%m-%d}: " + "; ".join(parts) + more
