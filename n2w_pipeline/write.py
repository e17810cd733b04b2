"""Wide tables in PostgreSQL: DDL, per-hour locks and the staged, idempotent upsert.

Every statement is composed with ``psycopg.sql``; every value is bound.

Write protocol for one (ship, window), inside the caller's transaction:

1. ``lock_hours`` takes a transaction-level advisory lock per (ship, hour), in hour order,
   *before* the narrow slice is read. Two runs of the same hour (a backfill and the
   realtime sensor, or a CSV correction) therefore run one after the other, and the
   second one reads everything the first committed: the last writer never writes an
   older picture of the hour.
2. ``write_block`` COPYs the pivoted rows (binary) into a temporary stage, upserts them
   with one ``INSERT … ON CONFLICT DO UPDATE`` (rows that did not change are not
   touched) and deletes rows of the window that are no longer backed by any value.
   Re-running any window therefore leaves the table exactly as one run would.
   When the table has no row in the window (a first backfill), the rows are COPYed
   straight into the table instead: under the hour locks nobody else can add rows to
   those hours, so there is nothing to conflict with or delete, and the stage's extra
   write and scan are saved.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

from n2w_pipeline.channels import MAX_IDENTIFIER_BYTES, TIME_COLUMN, ChannelGroup
from n2w_pipeline.config import Settings
from n2w_pipeline.copy_binary import encode_copy_binary
from n2w_pipeline.pivot import WideBlock
from n2w_pipeline.storage.partitioning import ensure_partitions, partitioned_ddl

COLUMN_MAP = "n2w_column_map"
CORRECTION_FILES = "n2w_correction_files"
CORRECTIONS_SUFFIX = "_corr"
VALUE_ISSUES = "n2w_value_issues"
UNKNOWN_GROUP = 0
"""``group_number`` of a value-issues row for a channel in no list (reason ``unknown_channel``)."""


def _ident(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def ensure_support_tables(conn: psycopg.Connection, settings: Settings) -> None:
    """n2w's own tables: column map, applied correction files, per-hour value issues.

    (The correction values themselves live in one shadow table per wide table, see
    ``corrections_table_name``; they are created when a file first needs them.)"""
    s = settings.target_schema
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_key("n2w:support"),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(s)))
        conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
    table_name text NOT NULL, column_name text NOT NULL, channel_id text NOT NULL,
    PRIMARY KEY (table_name, column_name))"""
            ).format(_ident(s, COLUMN_MAP))
        )
        conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
    file text NOT NULL, sha256 text NOT NULL, ship_id text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(), rows bigint NOT NULL, cells bigint NOT NULL,
    PRIMARY KEY (file, sha256))"""
            ).format(_ident(s, CORRECTION_FILES))
        )
        conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
    ship_id text NOT NULL, hour timestamp NOT NULL, channel_id text NOT NULL,
    group_number int NOT NULL, reason text NOT NULL, count bigint NOT NULL,
    PRIMARY KEY (ship_id, hour, group_number, channel_id, reason))"""
            ).format(_ident(s, VALUE_ISSUES))
        )


def _key(text: str) -> int:
    """A stable signed 32-bit advisory-lock key for ``text``."""
    return zlib.crc32(text.encode("utf-8")) - 2**31


def corrections_table_name(settings: Settings, ship: str, group: int) -> str:
    """The shadow table holding CSV corrections of one wide table: the same key and column
    names (only the columns corrections have used), NULL = no correction for that cell.
    Raises ``ValueError`` if the name would exceed PostgreSQL's 63-byte identifier limit
    (it would be cut silently)."""
    name = settings.table_name(ship, group) + CORRECTIONS_SUFFIX
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"corrections table name {name!r} is {len(name.encode('utf-8'))} bytes, over "
            f"PostgreSQL's {MAX_IDENTIFIER_BYTES}: shorten N2W_TABLE_PATTERN"
        )
    return name


def existing_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str] | None:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, table).as_string(conn),)
    ).fetchone()
    if not row or not row[0]:
        return None
    rows = conn.execute(
        """SELECT attname FROM pg_attribute
           WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class CorrectionColumns:
    """The corrections shadow table of a (ship, group) as it exists: its identifier and the
    group's channels that have a column in it (``columns[i]`` holds ``channels[i]``)."""

    table: sql.Identifier
    columns: tuple[str, ...]
    channels: tuple[str, ...]

    def array(self, alias: str) -> sql.Composed:
        """``ARRAY[alias.col, …]::float8[]``, aligned with ``channels``."""
        return sql.SQL("ARRAY[{}]::float8[]").format(
            sql.SQL(", ").join(sql.Identifier(alias, c) for c in self.columns)
        )


def correction_columns(
    conn: psycopg.Connection, settings: Settings, group: ChannelGroup, ship: str
) -> CorrectionColumns | None:
    """The shadow table of (ship, group), or None if it does not exist (no corrections)."""
    name = corrections_table_name(settings, ship, group.number)
    have = existing_columns(conn, settings.target_schema, name)
    if have is None:
        return None
    present = set(have)
    pairs = [(c, ch) for c, ch in zip(group.columns, group.channels, strict=True) if c in present]
    if not pairs:
        return None
    return CorrectionColumns(
        _ident(settings.target_schema, name), tuple(c for c, _ in pairs), tuple(ch for _, ch in pairs)
    )


@dataclass(frozen=True)
class TableChange:
    table: str
    created: bool
    added_columns: tuple[str, ...]
    partitions: tuple[str, ...] = ()


Window = tuple[dt.datetime, dt.datetime]


def ensure_wide_table(
    conn: psycopg.Connection, settings: Settings, group: ChannelGroup, ship: str,
    table: str | None = None, hours: Window | None = None,
) -> TableChange:
    """Create the wide table, or add the group's new channels as columns (rows untouched),
    and create the time partitions rows in ``hours`` ([start, end)) will need.

    A new table is range-partitioned on created_time (``storage.partitioning``). Everything
    happens in one transaction under the table's DDL advisory lock, so two runs never race
    to create the same table, column or partition. ``table`` overrides the name (the
    corrections shadow table has the same shape)."""
    schema = settings.target_schema
    table = table or settings.table_name(ship, group.number)
    target = _ident(schema, table)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 1)", (_key(f"n2w:ddl:{schema}.{table}"),))
        have = existing_columns(conn, schema, table)
        created = have is None
        if created:
            cols = [sql.SQL("{} timestamp PRIMARY KEY").format(sql.Identifier(TIME_COLUMN))]
            cols += [sql.SQL("{} double precision").format(sql.Identifier(c)) for c in group.columns]
            conn.execute(sql.SQL("CREATE TABLE {} {}").format(
                target, partitioned_ddl(sql.SQL(", ").join(cols))))
            added = group.columns
        else:
            present = set(have or ())
            added = tuple(c for c in group.columns if c not in present)
            if added:
                conn.execute(
                    sql.SQL("ALTER TABLE {} {}").format(
                        target,
                        sql.SQL(", ").join(
                            sql.SQL("ADD COLUMN {} double precision").format(sql.Identifier(c))
                            for c in added
                        ),
                    )
                )
        long_ids = group.long_ids
        for col in added:
            if col in long_ids:
                conn.execute(
                    sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                        target, sql.Identifier(col), sql.Literal(long_ids[col])
                    )
                )
        if long_ids:
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (table_name, column_name, channel_id) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING"
                    ).format(_ident(schema, COLUMN_MAP)),
                    [(table, col, ch) for col, ch in long_ids.items()],
                )
        parts = ensure_partitions(conn, schema, table, *hours, settings.partition_interval) if hours else []
    return TableChange(table, created, tuple(added), tuple(parts))


def lock_hours(conn: psycopg.Connection, ship: str, start: dt.datetime, end: dt.datetime) -> None:
    """Transaction-level advisory locks on every (ship, hour) of [start, end), in order."""
    ship_key = _key(f"n2w:ship:{ship}")
    first = int(start.replace(tzinfo=dt.UTC).timestamp()) // 3600
    last = -(-int(end.replace(tzinfo=dt.UTC).timestamp()) // 3600)
    for hour in range(first, last):
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (ship_key, hour))


def window_is_empty(
    conn: psycopg.Connection, target: sql.Composable, start: dt.datetime, end: dt.datetime
) -> bool:
    """True if ``target`` has no row with ``start <= created_time < end``."""
    row = conn.execute(
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {} >= %s AND {} < %s)").format(
            target, sql.Identifier(TIME_COLUMN), sql.Identifier(TIME_COLUMN)
        ),
        (start, end),
    ).fetchone()
    return bool(row and row[0])


def copy_block(
    conn: psycopg.Connection, into: sql.Composable, col_list: sql.Composable, block: WideBlock | bytes
) -> None:
    """Binary COPY of ``block``'s rows into ``into`` (created_time first, then the columns);
    ``block`` may be already encoded (``encode_copy_binary``), to send it to several tables."""
    data = block if isinstance(block, bytes) else encode_copy_binary(block)
    with conn.cursor() as cur, cur.copy(
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(into, col_list)
    ) as copy:
        copy.write(data)


@dataclass(frozen=True)
class WriteResult:
    rows: int
    cells: int
    inserted: int
    updated: int
    deleted: int


def write_block(
    conn: psycopg.Connection,
    settings: Settings,
    group: ChannelGroup,
    ship: str,
    start: dt.datetime,
    end: dt.datetime,
    block: WideBlock,
) -> WriteResult:
    """Make the table's rows in [start, end) equal ``block``. Call inside a transaction."""
    schema, table = settings.target_schema, settings.table_name(ship, group.number)
    target = _ident(schema, table)
    stage = sql.Identifier(f"n2w_stage_{group.number}_{len(group.columns)}")
    cols = [sql.Identifier(TIME_COLUMN)] + [sql.Identifier(c) for c in group.columns]
    col_list = sql.SQL(", ").join(cols)
    if block.rows and window_is_empty(conn, target, start, end):
        copy_block(conn, target, col_list, block)
        return WriteResult(block.rows, block.cells, block.rows, 0, 0)
    conn.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            stage,
            sql.SQL(", ").join(
                [sql.SQL("{} timestamp").format(cols[0])]
                + [sql.SQL("{} double precision").format(c) for c in cols[1:]]
            ),
        )
    )
    conn.execute(sql.SQL("TRUNCATE {}").format(stage))
    inserted = updated = 0
    if block.rows:
        copy_block(conn, stage, col_list, block)
        data_cols = cols[1:]
        # `pre` (the stage's timestamps already stored, read in the statement's one snapshot,
        # before the upsert) tells inserts from updates: a partitioned table cannot return
        # xmax, which did. Its window bounds prune the other partitions at plan time.
        upsert = sql.SQL(
            """WITH pre AS MATERIALIZED (SELECT s.{time} FROM {stage} s JOIN {target} p ON p.{time} = s.{time}
             WHERE p.{time} >= %s AND p.{time} < %s),
up AS (
  INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {stage}
  ON CONFLICT ({time}) DO UPDATE SET {assign}
  WHERE ({old}) IS DISTINCT FROM ({new})
  RETURNING t.{time})
SELECT count(*) FILTER (WHERE pre.{time} IS NULL), count(*) FILTER (WHERE pre.{time} IS NOT NULL)
FROM up LEFT JOIN pre ON pre.{time} = up.{time}"""
        ).format(
            target=target,
            cols=col_list,
            stage=stage,
            time=cols[0],
            assign=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in data_cols),
            old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in data_cols),
            new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in data_cols),
        )
        row = conn.execute(upsert, (start, end)).fetchone()
        assert row is not None
        inserted, updated = int(row[0]), int(row[1])
    deleted = conn.execute(
        sql.SQL(
            """DELETE FROM {target} t WHERE t.{time} >= %s AND t.{time} < %s
  AND NOT EXISTS (SELECT 1 FROM {stage} s WHERE s.{time} = t.{time})"""
        ).format(target=target, stage=stage, time=cols[0]),
        (start, end),
    ).rowcount
    return WriteResult(block.rows, block.cells, inserted, updated, deleted)
