"""Data-quality checks of the wide tables against the narrow table. No Dagster here.

Four checks per (ship, channel group, window of hours) — null-fill rate, channel
coverage, reconciliation, unknown channels — in three steps, one module each:

* ``facts``: a few aggregates of both sides, a fraction of the cost of the pivot
  (``gather_facts``; inside a materialisation the narrow side is what the run read);
* ``diff``: only when the counts disagree, the first failing hours cell by cell
  (``find_differences``, ``locate_differences``);
* ``verdicts``: the four pure checks of those facts, with their names, severities,
  descriptions and thresholds.

``run`` ties them together: ``evaluate`` (an open connection, the in-run and on-demand
checks) and ``check_window`` (the CLI's ``n2w check``).
"""

from n2w_pipeline.checks.diff import DIFF_LIMIT, find_differences, locate_differences
from n2w_pipeline.checks.facts import GroupFacts, HourFacts, NarrowHours, gather_facts
from n2w_pipeline.checks.run import check_window, evaluate, open_pair
from n2w_pipeline.checks.verdicts import (
    BLOCKING,
    CHECK_NAMES,
    COVERAGE,
    DESCRIPTIONS,
    ERROR,
    FILL,
    RECONCILIATION,
    SEVERITY,
    UNKNOWN,
    WARN,
    CheckOutcome,
    Thresholds,
    coverage_check,
    fill_check,
    reconciliation_check,
    unknown_check,
)

__all__ = [
    "BLOCKING",
    "CHECK_NAMES",
    "COVERAGE",
    "DESCRIPTIONS",
    "DIFF_LIMIT",
    "ERROR",
    "FILL",
    "RECONCILIATION",
    "SEVERITY",
    "UNKNOWN",
    "WARN",
    "CheckOutcome",
    "GroupFacts",
    "HourFacts",
    "NarrowHours",
    "Thresholds",
    "check_window",
    "coverage_check",
    "evaluate",
    "fill_check",
    "find_differences",
    "open_pair",
    "gather_facts",
    "locate_differences",
    "reconciliation_check",
    "unknown_check",
]
