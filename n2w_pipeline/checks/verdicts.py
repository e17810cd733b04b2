"""The verdicts: four pure functions of a group's facts, their names, severities,
descriptions and thresholds. No database, no Dagster here.

* **null-fill rate**: filled cells / (rows × channels), with the ten emptiest channels;
* **channel coverage**: channels with at least one value / channels in the list;
* **reconciliation**: every narrow row of the group is a filled cell or a counted NULL
  (``null_value``, ``unparsable``, ``non_finite``, ``unknown_format``), corrected cells
  accounted for exactly, and every narrow or correction timestamp is one wide row. Only
  when the counts disagree, ``find_differences`` (``diff.py``) compares the first failing
  hours cell by cell and names the timestamps and channels;
* **unknown channels**: narrow channels in no list, with their row counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from n2w_pipeline.checks.facts import GroupFacts
from n2w_pipeline.config import Settings

FILL, COVERAGE, RECONCILIATION, UNKNOWN = (
    "null_fill_rate", "channel_coverage", "reconciliation", "unknown_channels",
)
CHECK_NAMES = (FILL, COVERAGE, RECONCILIATION, UNKNOWN)
WARN, ERROR = "WARN", "ERROR"
SEVERITY = {FILL: WARN, COVERAGE: WARN, RECONCILIATION: ERROR, UNKNOWN: WARN}
BLOCKING = {FILL: False, COVERAGE: False, RECONCILIATION: True, UNKNOWN: False}
DESCRIPTIONS = {
    FILL: (
        "Share of filled cells (channel columns × rows) in the wide table over the checked "
        "window, with the ten emptiest channels. Warns below the group's minimum "
        "(N2W_CHECK_MIN_FILL_PCT, default 90 %: the reference fleet misses ~5 % of samples, "
        "so a healthy table is ~95 % filled)."
    ),
    COVERAGE: (
        "Channels of the list with at least one value in the checked window, and the silent "
        "ones. Warns below the group's minimum (N2W_CHECK_MIN_COVERAGE_PCT, default 95 %): a "
        "channel reporting every 15 s is never silent for an hour by chance, so a silent "
        "channel is a sensor, feed or list problem."
    ),
    RECONCILIATION: (
        "Every narrow value of the group's channels in the checked window landed: narrow "
        "rows = filled wide cells + values that stayed NULL (counted per reason), with CSV "
        "corrections accounted for cell by cell, and distinct narrow (and correction) "
        "timestamps = wide rows. A failure names the first differing timestamps and "
        "channels; it blocks downstream work. Inside a materialisation the narrow side is "
        "what the run read (so rows arriving later do not fail it, and the narrow table is "
        "not scanned twice); the n2w_check_window job and `n2w check` count the narrow "
        "table itself, which also catches rows that arrived after the run."
    ),
    UNKNOWN: (
        "Narrow channels of the ship that are in no channel list, with their row counts (as "
        "counted by the last materialisation of each hour): their values are in no wide "
        "table. Add them to a list under N2W_CHANNEL_LISTS to keep them."
    ),
}
TOP_N = 10


@dataclass(frozen=True)
class Thresholds:
    """Per-group minimums in percent; ``{0: pct}`` is the default for every group."""

    min_fill_pct: Mapping[int, float]
    min_coverage_pct: Mapping[int, float]

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(dict(settings.check_min_fill_pct), dict(settings.check_min_coverage_pct))

    def fill(self, group: int) -> float:
        return self.min_fill_pct.get(group, self.min_fill_pct.get(0, 90.0))

    def coverage(self, group: int) -> float:
        return self.min_coverage_pct.get(group, self.min_coverage_pct.get(0, 95.0))


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict, a one-line summary and the figures behind it."""

    name: str
    group: int
    passed: bool
    severity: str
    summary: str
    metadata: dict[str, Any]


def _pct(num: int, den: int) -> float:
    return round(100.0 * num / den, 3) if den else 0.0


def _windows_md(facts: GroupFacts) -> dict[str, Any]:
    ships = sorted({s for s, _, _ in facts.windows})
    return {
        "ships": ships,
        "windows": [[s, a.isoformat(), b.isoformat()] for s, a, b in facts.windows],
        "hours_checked": int(sum((b - a).total_seconds() // 3600 for _, a, b in facts.windows)),
        "tables": sorted(set(facts.tables)),
    }


def fill_check(facts: GroupFacts, thresholds: Thresholds) -> CheckOutcome:
    g = facts.group
    total = facts.total
    n_ch = len(g.channels)
    slots = total.wide_rows * n_ch
    pct = _pct(total.wide_cells, slots)
    minimum = thresholds.fill(g.number)
    passed = total.wide_rows > 0 and pct >= minimum
    rows = total.wide_rows
    emptiest = sorted(facts.channel_cells.items(), key=lambda kv: (kv[1], kv[0]))[:TOP_N]
    emptiest_md = [
        {"channel": ch, "filled_cells": n, "filled_pct": _pct(n, rows)} for ch, n in emptiest
    ]
    summary = (
        f"{pct:.2f} % filled ({total.wide_cells:,} of {slots:,} cells), minimum {minimum:g} %"
        if rows else "no wide rows in the window"
    )
    return CheckOutcome(FILL, g.number, passed, SEVERITY[FILL], summary, {
        "filled_pct": pct,
        "min_fill_pct": minimum,
        "filled_cells": total.wide_cells,
        "cell_slots": slots,
        "wide_rows": rows,
        "channels": n_ch,
        "emptiest_channels": emptiest_md,
        **_windows_md(facts),
    })


def coverage_check(facts: GroupFacts, thresholds: Thresholds) -> CheckOutcome:
    g = facts.group
    silent = [ch for ch in g.channels if facts.channel_cells.get(ch, 0) == 0]
    reporting = len(g.channels) - len(silent)
    pct = _pct(reporting, len(g.channels))
    minimum = thresholds.coverage(g.number)
    passed = pct >= minimum
    summary = (
        f"{reporting} of {len(g.channels)} channels have values ({pct:.2f} %), minimum {minimum:g} %"
        + (f"; silent: {', '.join(silent[:3])}{' …' if len(silent) > 3 else ''}" if silent else "")
    )
    return CheckOutcome(COVERAGE, g.number, passed, SEVERITY[COVERAGE], summary, {
        "coverage_pct": pct,
        "min_coverage_pct": minimum,
        "channels_with_values": reporting,
        "channels": len(g.channels),
        "silent_channel_count": len(silent),
        "silent_channels": silent[:100],
        **_windows_md(facts),
    })


def reconciliation_check(facts: GroupFacts) -> CheckOutcome:
    g = facts.group
    t = facts.total
    rows_ok = t.narrow_times == t.wide_rows
    passed = t.balance == 0 and rows_ok and not facts.failing_hours()
    if passed:
        summary = (
            f"{t.narrow_rows:,} narrow rows = {t.wide_cells:,} filled cells + {t.null_values:,} "
            f"counted NULLs - {t.adjustment:,} cells added by corrections; {t.wide_rows:,} rows"
        )
    else:
        first = facts.differences[0] if facts.differences else None
        where = (
            f"; first difference {first['kind']} at {first['time']}"
            + (f" {first['channel']}" if first["channel"] else "")
            if first else ""
        )
        hours = facts.failing_hours()
        summary = (
            f"narrow rows off by {t.balance:+,} cells, rows {t.wide_rows:,} vs {t.narrow_times:,} "
            f"expected, in {len(hours)} hour(s){where}"
        )
        if facts.missing_tables:
            summary += f"; table(s) not materialised: {', '.join(facts.missing_tables)}"
    hours = facts.failing_hours()
    return CheckOutcome(RECONCILIATION, g.number, passed, SEVERITY[RECONCILIATION], summary, {
        "narrow_rows": t.narrow_rows,
        "filled_wide_cells": t.wide_cells,
        "null_values_counted": t.null_values,
        "null_values_by_reason": dict(sorted(facts.null_by_reason.items())),
        "corrections": t.corrections,
        "corrections_over_narrow_values": t.corrections_over_narrow,
        "corrections_over_null_values": t.corrections_over_null,
        "corrections_nan": t.corrections_nan,
        "correction_adjustment": t.adjustment,
        "cell_balance": t.balance,
        "expected_rows": t.narrow_times,
        "wide_rows": t.wide_rows,
        "failing_hours": [[s, h.isoformat()] for s, h in hours[:20]],
        "failing_hour_count": len(hours),
        "first_differences": facts.differences,
        "missing_tables": facts.missing_tables,
        "narrow_counted_from": (
            "the rows this run read (its extraction's snapshot)" if facts.narrow_source == "run"
            else "a pass over the narrow table"
        ),
        **_windows_md(facts),
    })


def unknown_check(facts: GroupFacts) -> CheckOutcome:
    ranked = sorted(facts.unknown.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = sum(facts.unknown.values())
    summary = (
        f"{len(ranked)} channel(s) in no list, {rows:,} narrow rows skipped"
        + (f", e.g. {ranked[0][0]}" if ranked else "")
    )
    return CheckOutcome(UNKNOWN, facts.group.number, not ranked, SEVERITY[UNKNOWN], summary, {
        "unknown_channel_count": len(ranked),
        "unknown_rows": rows,
        "unknown_channels": [{"channel": ch, "rows": n} for ch, n in ranked[:50]],
        **_windows_md(facts),
    })
