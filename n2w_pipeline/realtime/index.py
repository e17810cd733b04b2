"""The arrival index: a b-tree leading with the arrival column, without which a tick
would read the whole narrow table. Its name, its DDL, what is wrong when it is missing,
and its creation (``n2w dev`` builds it on the embedded database)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.realtime.cursor import arrival


def arrival_index_name(settings: Settings) -> str:
    name = f"{settings.source_table}_{arrival(settings).column}_idx"
    return name.encode()[:63].decode(errors="ignore")


def arrival_index_ddl(settings: Settings) -> sql.Composed:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` on the arrival column (no table lock)."""
    return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING btree ({})").format(
        sql.Identifier(arrival_index_name(settings)),
        sql.Identifier(*settings.source_qualified),
        sql.Identifier(arrival(settings).column),
    )


def arrival_index_problem(conn: psycopg.Connection, settings: Settings) -> str | None:
    """None when a valid b-tree index leads with the arrival column; else what is wrong.

    Without that index a tick's ``ORDER BY … LIMIT`` reads the whole narrow table, which
    on a billion rows runs past Dagster's 60 s sensor limit: the sensor refuses to scan.
    """
    table = sql.Identifier(*settings.source_qualified).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()
    if not row or row[0] is None:
        return f"narrow table {table} does not exist"
    col = arrival(settings).column
    found = conn.execute(
        """SELECT 1 FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_am am ON am.oid = ic.relam
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
           WHERE i.indrelid = %s AND a.attname = %s AND am.amname = 'btree'
             AND i.indisvalid AND i.indpred IS NULL""",
        (row[0], col),
    ).fetchone()
    if found:
        return None
    ddl = arrival_index_ddl(settings).as_string(conn)
    return (f"no valid b-tree index on {table}({col}); `n2w prepare` builds it once (minutes on "
            f"a billion rows, no table lock), or run: {ddl}")


def ensure_arrival_index(conn: psycopg.Connection, settings: Settings) -> bool:
    """Create the arrival index if missing (autocommit connection); True if created.

    An invalid leftover of an interrupted concurrent build is dropped and rebuilt.
    """
    if arrival_index_problem(conn, settings) is None:
        return False
    build_concurrently(conn, sql.Identifier(settings.source_schema, arrival_index_name(settings)),
                       arrival_index_ddl(settings))
    return True


def build_concurrently(conn: psycopg.Connection, name: sql.Identifier, ddl: sql.Composable) -> None:
    """Run ``ddl`` (a ``CREATE INDEX CONCURRENTLY`` of the index ``name``) on an autocommit
    connection, first dropping an invalid leftover of an interrupted concurrent build (which
    ``IF NOT EXISTS`` would otherwise keep). Shared by every narrow-table index n2w builds."""
    invalid = conn.execute(
        "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(%s) AND NOT indisvalid",
        (name.as_string(conn),),
    ).fetchone()
    if invalid:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(name))
    conn.execute(ddl)
