"""Planning (pure): which wide table and column each channel of a parsed file lands in.

A file's cells are split by channel group into one dense ``WideBlock`` per group (the
rows of the timestamps with at least one non-blank cell of that group); channels in no
channel list are counted, not stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from n2w_pipeline.channels import TIME_COLUMN, ChannelCatalog, ChannelGroup
from n2w_pipeline.corrections.parse import ParsedFile
from n2w_pipeline.pivot import WideBlock


@dataclass(frozen=True)
class TablePlan:
    """The cells of one file that land in one channel group's wide table."""

    group: ChannelGroup
    channels: tuple[str, ...]  # file channels of this group, in group order
    columns: tuple[str, ...]  # their wide-table columns
    block: WideBlock  # rows = timestamps with at least one non-blank cell of this group

    @property
    def coverage_pct(self) -> float:
        return round(100.0 * len(self.channels) / len(self.group.channels), 1)

    def take(self, rows: np.ndarray) -> TablePlan:
        """The plan with the block's ``rows`` (a boolean mask) only; no copy when all are kept."""
        if rows.all():
            return self
        b = self.block
        return replace(self, block=WideBlock(b.times_us[rows], b.values[rows], b.mask[rows]))


@dataclass(frozen=True)
class FilePlan:
    tables: tuple[TablePlan, ...]
    unknown: dict[str, int]  # channel in no list → non-blank cells (not stored)


def plan_tables(parsed: ParsedFile, catalog: ChannelCatalog) -> FilePlan:
    """Split a parsed file by channel group into dense blocks (pure)."""
    by_group: dict[int, list[tuple[int, str]]] = {}
    unknown: dict[str, int] = {}
    counts = parsed.frame.select(pl.all().exclude(TIME_COLUMN).count()).row(0) if parsed.channels else ()
    for ch, n in zip(parsed.channels, counts, strict=True):
        loc = catalog.locate(ch)
        if loc is None:
            unknown[ch] = int(n)
        else:
            by_group.setdefault(loc[0], []).append((loc[1], ch))
    times = parsed.frame.get_column(TIME_COLUMN).cast(pl.Int64).to_numpy()
    tables = []
    for number in sorted(by_group):
        g = catalog.group(number)
        members = sorted(by_group[number])
        chans = tuple(ch for _, ch in members)
        values = parsed.frame.select(chans).to_numpy().astype(np.float64, copy=False)
        if values.ndim == 1:
            values = values.reshape(-1, 1)
        mask = ~np.isnan(values)
        keep = mask.any(axis=1)
        if not keep.all():  # (the copy is skipped in the common case)
            times_g, values, mask = times[keep], values[keep], mask[keep]
        else:
            times_g = times
        block = WideBlock(
            np.ascontiguousarray(times_g),
            np.where(mask, values, 0.0),
            np.ascontiguousarray(mask),
        )
        tables.append(TablePlan(g, chans, tuple(g.columns[i] for i, _ in members), block))
    return FilePlan(tuple(tables), unknown)
