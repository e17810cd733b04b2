"""Writing one table's cells: the SQL write paths of a correction, and their read-only twin.

A table plan's cells go into the group's *corrections shadow table* (``<wide table>_corr``:
same ``created_time`` key and column names as the wide table, one column per channel a
correction has used, NULL = no correction; the durable overlay that every later
narrow → wide run re-applies, so backfills and realtime runs never undo a correction)
and into the wide table, setting only the file's columns to ``COALESCE(new, old)`` (a
blank cell keeps the old value) and skipping rows that would not change. Each timestamp
takes the cheapest path its existence allows (``apply_table``). ``dry_run_table``
computes the same counts with read-only queries. The caller holds the transaction and
the hour locks.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from n2w_pipeline.channels import TIME_COLUMN
from n2w_pipeline.config import Settings
from n2w_pipeline.copy_binary import COPY_HEADER, COPY_TRAILER, encode_copy_binary, encode_dense_copy
from n2w_pipeline.corrections.files import CorrectionFile
from n2w_pipeline.corrections.plan import TablePlan
from n2w_pipeline.hours import EPOCH
from n2w_pipeline.write import CORRECTION_FILES, copy_block, existing_columns

_NAN = sql.SQL("'NaN'::float8")


def _stage(conn: psycopg.Connection, plan: TablePlan, kind: str = "stage") -> sql.Identifier:
    """A temporary table (dropped at commit) holding the plan's block, loaded by binary COPY;
    blank cells are NaN there (see ``encode_dense_copy``)."""
    stage = sql.Identifier(f"n2w_corr_{kind}_{plan.group.number}")
    cols = [sql.Identifier(c) for c in plan.columns]
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage))
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ({} timestamp, {}) ON COMMIT DROP").format(
            stage, sql.Identifier(TIME_COLUMN),
            sql.SQL(", ").join(sql.SQL("{} double precision").format(c) for c in cols),
        )
    )
    if plan.block.rows:
        rows = encode_dense_copy(plan.block)
        with conn.cursor() as cur, cur.copy(
            sql.SQL("COPY {} ({}, {}) FROM STDIN (FORMAT BINARY)").format(
                stage, sql.Identifier(TIME_COLUMN), sql.SQL(", ").join(cols)
            )
        ) as copy:
            copy.write(COPY_HEADER)
            copy.write(memoryview(rows).cast("B"))
            copy.write(COPY_TRAILER)
    return stage


def _staged(plan: TablePlan, alias: str | None = None) -> list[sql.Composable]:
    """The stage's columns with NaN (blank) read as NULL."""
    return [sql.SQL("NULLIF({}, {})").format(sql.Identifier(*((alias,) if alias else ()), c), _NAN)
            for c in plan.columns]


def _merge(
    conn: psycopg.Connection, target: sql.Identifier, plan: TablePlan, stage: sql.Composable
) -> tuple[int, int]:
    """Upsert the stage into ``target`` (a wide table or its shadow); (inserted, updated) rows.

    Only the file's columns are set; ``COALESCE(new, old)`` keeps the old value where the
    file's cell is blank; timestamps not yet in ``target`` become rows with the other
    columns NULL; rows that would not change are not touched (not counted as updated).
    ``stage`` is the stage table or a subquery of it (the rows that change the shadow table).
    """
    cols = [sql.Identifier(c) for c in plan.columns]
    time_col = sql.Identifier(TIME_COLUMN)
    merged = [sql.SQL("COALESCE(EXCLUDED.{0}, t.{0})").format(c) for c in cols]
    # `pre` (the stage's timestamps already stored) sees the table as it was before the
    # upsert (one snapshot for the whole statement): it tells inserts from updates, which
    # RETURNING xmax cannot on a partitioned table
    q = sql.SQL(
        """WITH pre AS MATERIALIZED (SELECT x.{time} FROM (SELECT {time} FROM {stage}) x
                          JOIN {target} p ON p.{time} = x.{time}),
up AS (
  INSERT INTO {target} AS t ({time}, {cols}) SELECT {time}, {vals} FROM {stage}
  ON CONFLICT ({time}) DO UPDATE SET {assign}
    WHERE ROW({old}) IS DISTINCT FROM ROW({new})
  RETURNING t.{time})
SELECT count(*) FILTER (WHERE pre.{time} IS NULL), count(*) FILTER (WHERE pre.{time} IS NOT NULL)
FROM up LEFT JOIN pre ON pre.{time} = up.{time}"""
    ).format(
        target=target, time=time_col, cols=sql.SQL(", ").join(cols), stage=stage,
        vals=sql.SQL(", ").join(_staged(plan)),
        assign=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, m) for c, m in zip(cols, merged, strict=True)),
        old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in cols),
        new=sql.SQL(", ").join(merged),
    )
    row = conn.execute(q).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _update(conn: psycopg.Connection, target: sql.Identifier, plan: TablePlan, stage: sql.Identifier) -> int:
    """Update the ``target`` rows the stage has (the caller knows they all exist): only the
    file's columns, ``COALESCE(new, old)``, rows that would not change untouched; returns
    the rows updated. Cheaper than ``_merge``'s upsert (no speculative insertion and tuple
    lock per row), which matters for 5 kB rows."""
    cols = [sql.Identifier(c) for c in plan.columns]
    news = _staged(plan, "s")
    olds = [sql.SQL("t.{}").format(c) for c in cols]
    merged, _, _ = _merge_terms(news, olds)
    q = sql.SQL(
        "UPDATE {target} AS t SET {assign} FROM {stage} AS s "
        "WHERE t.{time} = s.{time} AND ROW({old}) IS DISTINCT FROM ROW({new})"
    ).format(
        target=target, stage=stage, time=sql.Identifier(TIME_COLUMN),
        assign=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, m) for c, m in zip(cols, merged, strict=True)),
        old=sql.SQL(", ").join(olds), new=sql.SQL(", ").join(merged),
    )
    # one index probe per stage row: a hash join would deform every wide row of the table.
    # No try/finally: if the UPDATE fails, the rollback undoes the SET LOCAL (a RESET there
    # would only hide the error behind "current transaction is aborted").
    conn.execute("SET LOCAL enable_hashjoin = off")
    conn.execute("SET LOCAL enable_mergejoin = off")
    updated = conn.execute(q).rowcount
    conn.execute("RESET enable_hashjoin")
    conn.execute("RESET enable_mergejoin")
    return updated


def _merge_terms(
    news: list[sql.Composable], olds: list[sql.Composable]
) -> tuple[list[sql.Composable], sql.Composable, sql.Composable]:
    """(merged cell per column, cells newly set, cells changed) for a COALESCE merge of
    staged values ``news`` over stored values ``olds`` (a blank staged cell keeps the old)."""
    pairs = list(zip(news, olds, strict=True))
    merged = [sql.SQL("COALESCE({}, {})").format(n, o) for n, o in pairs]
    added = sql.SQL(" + ").join(
        sql.SQL("({} IS NOT NULL AND {} IS NULL)::int").format(n, o) for n, o in pairs)
    changed = sql.SQL(" + ").join(
        sql.SQL("({} IS NOT NULL AND {} IS NOT NULL AND {} IS DISTINCT FROM {})::int").format(n, o, n, o)
        for n, o in pairs)
    return merged, added, changed


def _compare(
    conn: psycopg.Connection, schema: str, table: str, plan: TablePlan, stage: sql.Identifier
) -> tuple[int, int, int, int]:
    """Read-only: what merging the stage into ``table`` would do.

    Returns (rows inserted, rows updated, cells newly set, cells changed); a table or a
    column that does not exist yet counts as empty / NULL.
    """
    have = existing_columns(conn, schema, table)
    if have is None:
        return plan.block.rows, 0, plan.block.cells, 0
    present = set(have)
    olds = [sql.SQL("t.{}").format(sql.Identifier(c)) if c in present else sql.SQL("NULL::float8")
            for c in plan.columns]
    news = _staged(plan, "s")
    merged, added, changed = _merge_terms(news, olds)
    q = sql.SQL(
        """SELECT count(*) FILTER (WHERE t.{time} IS NULL),
       count(*) FILTER (WHERE t.{time} IS NOT NULL AND ROW({old}) IS DISTINCT FROM ROW({new})),
       coalesce(sum({added}), 0), coalesce(sum({changed}), 0)
FROM {stage} s LEFT JOIN {target} t ON t.{time} = s.{time}"""
    ).format(time=sql.Identifier(TIME_COLUMN), old=sql.SQL(", ").join(olds),
             new=sql.SQL(", ").join(merged), added=added, changed=changed, stage=stage,
             target=sql.Identifier(schema, table))
    row = conn.execute(q).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _shadow_delta(
    conn: psycopg.Connection, shadow: sql.Identifier, plan: TablePlan, stage: sql.Identifier
) -> tuple[sql.Composable | None, int, int]:
    """The stage rows that would change the shadow table, kept in a temporary table.

    Returns (a FROM-able subquery of those stage rows, or None if there are none; cells
    newly set; cells changed). Only these rows can change the wide table: every writer
    keeps the wide cells equal to the non-NULL shadow cells (this module writes both in
    one transaction, the narrow → wide runs overlay the shadow), so a row whose
    corrections are already stored is already in the wide table.
    """
    delta = sql.Identifier(f"n2w_corr_delta_{plan.group.number}")
    time_col = sql.Identifier(TIME_COLUMN)
    olds = [sql.Identifier("t", c) for c in plan.columns]
    news = _staged(plan, "s")
    merged, added, changed = _merge_terms(news, olds)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(delta))
    conn.execute(
        sql.SQL(
            """CREATE TEMP TABLE {delta} ON COMMIT DROP AS
SELECT s.{time} AS {time}, {added} AS n2w_added, {changed} AS n2w_changed
FROM {stage} s LEFT JOIN {shadow} t ON t.{time} = s.{time}
WHERE t.{time} IS NULL OR ROW({old}) IS DISTINCT FROM ROW({new})"""
        ).format(delta=delta, time=time_col, added=added, changed=changed, stage=stage, shadow=shadow,
                 old=sql.SQL(", ").join(olds), new=sql.SQL(", ").join(merged))
    )
    row = conn.execute(
        sql.SQL("SELECT count(*), coalesce(sum(n2w_added), 0), coalesce(sum(n2w_changed), 0) FROM {}")
        .format(delta)
    ).fetchone()
    assert row is not None
    if not row[0]:
        return None, 0, 0
    source = sql.SQL("(SELECT s.* FROM {} s JOIN {} d ON d.{} = s.{}) AS s").format(
        stage, delta, time_col, time_col)
    return source, int(row[1]), int(row[2])


def record_file(
    conn: psycopg.Connection, settings: Settings, cfile: CorrectionFile, sha256: str, rows: int, cells: int
) -> None:
    conn.execute(
        sql.SQL(
            """INSERT INTO {} (file, sha256, ship_id, rows, cells) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (file, sha256) DO UPDATE SET applied_at = now(), rows = EXCLUDED.rows, cells = EXCLUDED.cells"""
        ).format(sql.Identifier(settings.target_schema, CORRECTION_FILES)),
        (cfile.key, sha256, cfile.ship, rows, cells),
    )


def _existing_times(conn: psycopg.Connection, target: sql.Identifier, times_us: np.ndarray) -> np.ndarray:
    """The timestamps (µs since 1970) ``target`` has between the first and last of ``times_us``
    (one int8 array from the server: no Python object per row)."""
    with conn.cursor(binary=True) as cur:
        row = cur.execute(
            sql.SQL(
                "SELECT coalesce(array_agg((EXTRACT(EPOCH FROM {t}) * 1000000)::int8), '{{}}') "
                "FROM {target} WHERE {t} >= %s AND {t} <= %s"
            ).format(t=sql.Identifier(TIME_COLUMN), target=target),
            [EPOCH + dt.timedelta(microseconds=int(times_us[i])) for i in (0, -1)],
        ).fetchone()
    return np.array(row[0] if row else [], dtype=np.int64)


@dataclass
class Counts:
    """What writing one block did: wide rows inserted / updated, correction cells newly
    set / changed."""

    inserted: int = 0
    updated: int = 0
    added: int = 0
    changed: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.inserted += other.inserted
        self.updated += other.updated
        self.added += other.added
        self.changed += other.changed
        return self


def apply_table(
    conn: psycopg.Connection, plan: TablePlan,
    shadow: sql.Identifier, wide: sql.Identifier, phase: dict[str, float],
) -> Counts:
    """Write one table's block into its shadow and wide tables (under the caller's hour
    locks).

    Each timestamp takes the cheapest path its existence allows (under the hour locks
    nobody else adds rows to those hours):

    * in neither table (missing data): binary-COPYed straight into both;
    * in the wide table only (a first correction): COPYed into a stage, inserted from
      there into the shadow table, and the wide rows updated from it;
    * in the shadow table (corrected before): staged, and the rows that add or change a
      correction merged into the shadow and the wide table (none when the file was applied
      before: a no-op).
    """
    t = time.perf_counter()
    in_shadow, in_wide = _stored(conn, plan, shadow, wide)
    n = Counts()
    fresh = plan.take(~in_wide)
    if fresh.block.rows:
        n += _copy_fresh(conn, fresh, shadow, wide)
    phase["copy"] += time.perf_counter() - t
    first = plan.take(in_wide & ~in_shadow)
    if first.block.rows:
        n += _first_corrections(conn, first, shadow, wide, phase)
    again = plan.take(in_shadow)
    if again.block.rows:
        n += _corrected_again(conn, again, shadow, wide, phase)
    return n


def _stored(
    conn: psycopg.Connection, plan: TablePlan, shadow: sql.Identifier, wide: sql.Identifier
) -> tuple[np.ndarray, np.ndarray]:
    """Which of the block's timestamps the shadow table has, and which the wide table has.

    The shadow first: it is narrow (cheap to scan), and once a file was applied it holds
    every timestamp, so the wide table (~5 kB rows) need not be read at all.
    """
    times = plan.block.times_us
    in_shadow = np.isin(times, _existing_times(conn, shadow, times), assume_unique=True)
    in_wide = in_shadow.copy()  # a shadow row always has its wide row (one transaction)
    if not in_shadow.all():
        rest = times[~in_shadow]
        in_wide[~in_shadow] = np.isin(rest, _existing_times(conn, wide, rest), assume_unique=True)
    return in_shadow, in_wide


def _columns(plan: TablePlan) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in (TIME_COLUMN, *plan.columns))


def _copy_fresh(
    conn: psycopg.Connection, fresh: TablePlan, shadow: sql.Identifier, wide: sql.Identifier
) -> Counts:
    """Timestamps in neither table: one binary COPY into each."""
    data = encode_copy_binary(fresh.block)
    for target in (shadow, wide):
        copy_block(conn, target, _columns(fresh), data)
    return Counts(inserted=fresh.block.rows, added=fresh.block.cells)


def _first_corrections(
    conn: psycopg.Connection, first: TablePlan,
    shadow: sql.Identifier, wide: sql.Identifier, phase: dict[str, float],
) -> Counts:
    """Timestamps in the wide table only: staged, inserted into the shadow table, and the
    wide rows updated from the stage."""
    t = time.perf_counter()
    stage = _stage(conn, first, "first")
    conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {}, {} FROM {}").format(
        shadow, _columns(first), sql.Identifier(TIME_COLUMN), sql.SQL(", ").join(_staged(first)), stage))
    phase["stage"] += time.perf_counter() - t
    t = time.perf_counter()
    updated = _update(conn, wide, first, stage)
    phase["wide"] += time.perf_counter() - t
    return Counts(updated=updated, added=first.block.cells)


def _corrected_again(
    conn: psycopg.Connection, again: TablePlan,
    shadow: sql.Identifier, wide: sql.Identifier, phase: dict[str, float],
) -> Counts:
    """Timestamps in the shadow table: staged, and only the rows that add or change a
    correction merged into the shadow and the wide table."""
    t = time.perf_counter()
    stage = _stage(conn, again)
    phase["stage"] += time.perf_counter() - t
    t = time.perf_counter()
    source, added, changed = _shadow_delta(conn, shadow, again, stage)
    n = Counts(added=added, changed=changed)
    if source is not None:
        _merge(conn, shadow, again, source)
    phase["shadow"] += time.perf_counter() - t
    t = time.perf_counter()
    if source is not None:  # None: every cell is stored already (the file was applied)
        n.inserted, n.updated = _merge(conn, wide, again, source)
    phase["wide"] += time.perf_counter() - t
    return n


def dry_run_table(
    conn: psycopg.Connection, schema: str, plan: TablePlan, shadow: str, wide: str,
    phase: dict[str, float],
) -> Counts:
    """Read-only: what ``apply_table`` would do to the tables ``shadow`` and ``wide`` (names
    in ``schema``; missing ones count as empty). Leaves a stage table: run it in a
    transaction that is rolled back."""
    t = time.perf_counter()
    stage = _stage(conn, plan)
    phase["stage"] += time.perf_counter() - t
    t = time.perf_counter()
    _, _, added, changed = _compare(conn, schema, shadow, plan, stage)
    phase["shadow"] += time.perf_counter() - t
    t = time.perf_counter()
    inserted, updated, _, _ = _compare(conn, schema, wide, plan, stage)
    phase["wide"] += time.perf_counter() - t
    return Counts(inserted, updated, added, changed)
