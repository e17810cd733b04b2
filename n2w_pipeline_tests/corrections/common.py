"""What the correction tests share: the ship and times they use, writing a file, and
reading back what corrections stored."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.config import Settings
from n2w_pipeline.corrections import CorrectionFileError, apply_file
from n2w_pipeline.write import CORRECTION_FILES, corrections_table_name, existing_columns

SHIP = "IMO9976903"  # hull H2546
H0 = dt.datetime(2025, 3, 1)
S = dt.timedelta(seconds=15)
GOOD = "H2546/H2546_2025-03.csv"


def write(settings: Settings, rel: str, content: str | bytes) -> Path:
    path = settings.migration_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def corrections_rows(conn: psycopg.Connection, settings: Settings, catalog) -> list[tuple]:  # noqa: ANN001
    """(channel, time, value) of every stored correction cell of SHIP (the shadow tables)."""
    out = []
    for g in catalog.groups:
        name = corrections_table_name(settings, SHIP, g.number)
        have = existing_columns(conn, settings.target_schema, name)
        if have is None:
            continue
        for col, ch in zip(g.columns, g.channels, strict=True):
            if col not in have:  # the shadow holds only the columns corrections used
                continue
            out += [(ch, t, v) for t, v in conn.execute(
                sql.SQL("SELECT created_time, {0} FROM {1} WHERE {0} IS NOT NULL").format(
                    sql.Identifier(col), sql.Identifier(settings.target_schema, name))).fetchall()]
    return sorted(out)


def applied_files(conn: psycopg.Connection, settings: Settings) -> list[tuple]:
    if existing_columns(conn, settings.target_schema, CORRECTION_FILES) is None:
        return []
    return conn.execute(sql.SQL("SELECT file, ship_id, rows, cells FROM {} ORDER BY file").format(
        sql.Identifier(settings.target_schema, CORRECTION_FILES))).fetchall()


def assert_rejected(case: tuple[str, str | bytes, list[str]], settings: Settings, catalog,  # noqa: ANN001
                    conn: psycopg.Connection, channel: str) -> None:
    """Write the case's file (``{a}``, ``{t0}``, ``{t1}`` filled in), apply it, and check that
    it is rejected with a message holding every expected text, and that nothing is written."""
    rel, template, expected = case
    fields = {"a": channel, "t0": ts(H0), "t1": ts(H0 + S)}
    content = (template.format(**fields) if isinstance(template, str)
               else template.replace(b"{a}", channel.encode()).replace(b"{t0}", ts(H0).encode())
               .replace(b"{t1}", ts(H0 + S).encode()))
    path = write(settings, rel, content)
    with pytest.raises(CorrectionFileError) as err:
        apply_file(conn, settings, catalog, path)
    for text in expected:
        assert text in str(err.value), str(err.value)
    assert corrections_rows(conn, settings, catalog) == []
    tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                          (settings.target_schema,)).fetchone()
    assert tables == (0,)
