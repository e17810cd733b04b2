"""CSV corrections: n2w's apply vs the row-by-row executemany upsert it replaces.

Generates a correction file (default 140,000 rows x 90 channels at 15 s, ~2 % blank
cells) and, per case, a scratch schema whose wide tables already hold full rows for a
share of the file's timestamps (default cases: 0 %, i.e. missing data; 50 %; 100 %, i.e.
corrections of stored data), then times, in the same run:

* n2w: parse (Polars) + the write (hour ranges on N2W_CORRECTION_WORKERS connections, each
  one transaction: hour locks, COPY / stage, corrections shadow tables ``<wide table>_corr``,
  wide tables), then the same file again (a no-op), each with its time split by phase;
* floor: stage the stored rows and one plain ``UPDATE … FROM`` per wide table, one
  connection, rolled back: what PostgreSQL needs just to rewrite those rows;
* baseline: csv.DictReader + one ``executemany`` ``INSERT … ON CONFLICT DO UPDATE`` per
  table, batches of 50,000, on the first --baseline-rows rows (rolled back), extrapolated
  linearly to the whole file.

Run: ``python benchmarks/corrections.py`` or ``n2w bench corrections`` (same options).
Uses N2W_DATABASE_URL or the embedded server; the scratch schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from n2w_pipeline.channels import TIME_COLUMN, load_catalog  # noqa: E402
from n2w_pipeline.config import Settings  # noqa: E402
from n2w_pipeline.corrections import apply_file, parse_csv, plan_tables  # noqa: E402
from n2w_pipeline.database import database_url, redact  # noqa: E402
from n2w_pipeline.pivot import WideBlock  # noqa: E402
from n2w_pipeline.write import copy_block, ensure_support_tables, ensure_wide_table  # noqa: E402

HULL, SHIP = "H2546", "IMO9976903"
START = dt.datetime(2025, 1, 1)


def pick_channels(catalog, n: int) -> list[str]:  # noqa: ANN001
    """n channels spread over the groups in proportion to their size, deterministic."""
    total = sum(len(g.channels) for g in catalog.groups)
    out: list[str] = []
    for g in catalog.groups:
        k = max(1, round(n * len(g.channels) / total))
        step = len(g.channels) / k
        out += [g.channels[int(i * step)] for i in range(k)]
    return out[:n]


def write_file(folder: Path, channels: list[str], rows: int, blank_pct: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    times = pl.datetime_range(START, START + dt.timedelta(seconds=15 * (rows - 1)), "15s", eager=True)
    cols = [times.dt.strftime("%Y-%m-%d %H:%M:%S").alias("timestamp")]
    for ch in channels:
        v = np.round(rng.normal(50, 10, rows), 3)
        v[rng.random(rows) < blank_pct / 100] = np.nan
        cols.append(pl.Series(ch, v, nan_to_null=True))
    frame = pl.DataFrame(cols)
    path = folder / HULL / f"{HULL}_2025-01.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path


def prefill(conn: psycopg.Connection, settings: Settings, catalog, rows: int, pct: float, seed: int) -> int:  # noqa: ANN001
    """Full wide rows (every channel) for the first pct % of the file's timestamps."""
    n = int(rows * pct / 100)
    rng = np.random.default_rng(seed + 1)
    times = (np.arange(n, dtype=np.int64) * 15_000_000
             + int(START.replace(tzinfo=dt.UTC).timestamp()) * 1_000_000)
    cells = 0
    for g in catalog.groups:
        hours = (START, START + dt.timedelta(microseconds=int(15_000_000 * max(rows, 1))))
        ensure_wide_table(conn, settings, g, SHIP, hours=hours)
        table = sql.Identifier(settings.target_schema, settings.table_name(SHIP, g.number))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in (TIME_COLUMN, *g.columns))
        for a in range(0, n, 20_000):
            b = min(a + 20_000, n)
            vals = np.round(rng.normal(50, 10, (b - a, len(g.columns))), 3)
            block = WideBlock(times[a:b], vals, np.ones(vals.shape, bool))
            copy_block(conn, table, cols, block)
            cells += block.cells
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
    return cells


def baseline(conn: psycopg.Connection, settings: Settings, catalog, path: Path, limit: int) -> float:  # noqa: ANN001
    """The replaced system: dict per row, executemany upsert per table, blank → NULL."""
    t0 = time.perf_counter()
    with conn.transaction(force_rollback=True), open(path, newline="") as f:
        reader = csv.DictReader(f)
        chans = [c for c in reader.fieldnames or [] if c != "timestamp"]
        by_group: dict[int, list[str]] = {}
        for ch in chans:
            loc = catalog.locate(ch)
            if loc:
                by_group.setdefault(loc[0], []).append(ch)
        batches: dict[int, list[tuple]] = {g: [] for g in by_group}

        def flush(g: int) -> None:
            group = catalog.group(g)
            cols = [group.columns[group.channels.index(ch)] for ch in by_group[g]]
            q = sql.SQL("INSERT INTO {} ({}, {}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
                sql.Identifier(settings.target_schema, settings.table_name(SHIP, g)),
                sql.Identifier(TIME_COLUMN), sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join(sql.Placeholder() * (len(cols) + 1)), sql.Identifier(TIME_COLUMN),
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in cols),
            )
            with conn.cursor() as cur:
                cur.executemany(q, batches[g])
            batches[g] = []

        for i, row in enumerate(reader):
            if i >= limit:
                break
            t = dt.datetime.fromisoformat(row["timestamp"])
            for g, chs in by_group.items():
                batches[g].append((t, *[float(row[c]) if row[c] else None for c in chs]))
                if len(batches[g]) >= 50_000:
                    flush(g)
        for g in by_group:
            if batches[g]:
                flush(g)
    return time.perf_counter() - t0


def floor_update(conn: psycopg.Connection, settings: Settings, catalog, parsed, stored_until_us: int,  # noqa: ANN001
                 ) -> tuple[float, int]:
    """What PostgreSQL alone needs for the file's stored rows: stage them (binary COPY) and
    one plain ``UPDATE … FROM`` per wide table setting the file's columns, on one
    connection, no shadow table, no checks; rolled back. Returns (seconds, rows updated)."""
    plan = plan_tables(parsed, catalog)
    rows = 0
    t0 = time.perf_counter()
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL enable_hashjoin = off")
        conn.execute("SET LOCAL enable_mergejoin = off")
        for p in plan.tables:
            keep = p.block.times_us < stored_until_us
            if not keep.any():
                continue
            b = p.block
            cols = [sql.Identifier(c) for c in p.columns]
            stage = sql.Identifier(f"floor_{p.group.number}")
            conn.execute(sql.SQL("CREATE TEMP TABLE {} ({} timestamp, {}) ON COMMIT DROP").format(
                stage, sql.Identifier(TIME_COLUMN),
                sql.SQL(", ").join(sql.SQL("{} float8").format(c) for c in cols)))
            copy_block(conn, stage, sql.SQL(", ").join([sql.Identifier(TIME_COLUMN), *cols]),
                       WideBlock(b.times_us[keep], b.values[keep], b.mask[keep]))
            rows += conn.execute(sql.SQL("UPDATE {} AS t SET {} FROM {} AS s WHERE t.{} = s.{}").format(
                sql.Identifier(settings.target_schema, settings.table_name(SHIP, p.group.number)),
                sql.SQL(", ").join(sql.SQL("{0} = COALESCE(s.{0}, t.{0})").format(c) for c in cols),
                stage, sql.Identifier(TIME_COLUMN), sql.Identifier(TIME_COLUMN))).rowcount
    return time.perf_counter() - t0, rows


def checkpoint(conn: psycopg.Connection) -> None:
    """Start a timed section as a table written long ago would: after a checkpoint, so the
    first change of each page writes a full-page image to the WAL, as in production."""
    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        print("  (CHECKPOINT not allowed for this role: timings may miss full-page writes)")


def wal_lsn(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wal_bytes(conn: psycopg.Connection, since: str) -> int:
    """WAL written by the whole server since ``since`` (the benchmark is its only writer)."""
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::int8", (since,)).fetchone()
    assert row is not None
    return int(row[0])


PHASES = (("read", "read file + sha256"), ("parse", "parse (Polars)"),
          ("plan", "split by group (numpy)"), ("prepare", "ensure tables (DDL)"),
          ("copy", "new to both tables: existence + COPY into both"),
          ("stage", "others: stage (+ shadow insert of first corrections)"),
          ("shadow", "corrected before: compare + merge shadow"),
          ("wide", "wide tables: update / merge"))


def run_case(url: str, base: Settings, args: argparse.Namespace, pct: float) -> dict[str, object]:
    """One prefill case in its own scratch schema: n2w, the same file again, the floor, the
    row-by-row baseline."""
    schema = f"n2w_bench_corr_{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="n2w-bench-corr-"))
    settings = replace(base, target_schema=schema, migration_dir=tmp, hulls={HULL: SHIP},
                       csv_time_offset_hours=0.0)
    catalog = load_catalog(settings.channel_lists_dir)
    channels = pick_channels(catalog, args.channels)
    out: dict[str, object] = {"pct": pct}

    def connect() -> psycopg.Connection:
        return psycopg.connect(url, autocommit=True)

    with connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            path = write_file(tmp, channels, args.rows, args.blank_pct, args.seed)
            t0 = time.perf_counter()
            ensure_support_tables(conn, settings)
            filled = prefill(conn, settings, catalog, args.rows, pct, args.seed)
            print(f"[{pct:.0f} % stored] prefilled {int(args.rows * pct / 100):,} timestamps with full rows "
                  f"({filled:,} cells) in {time.perf_counter() - t0:.1f} s; applying …", flush=True)
            checkpoint(conn)
            out["first_t"], out["again_t"] = {}, {}
            lsn = wal_lsn(conn)
            out["first"] = apply_file(conn, settings, catalog, path, timings=out["first_t"], connect=connect)
            out["wal"] = wal_bytes(conn, lsn)
            out["again"] = apply_file(conn, settings, catalog, path, timings=out["again_t"], connect=connect)
            out["floor"] = None
            if pct:  # after n2w: the WAL segments exist by then, as they do on a running server
                for g in catalog.groups:  # the old row versions n2w left
                    conn.execute(sql.SQL("VACUUM {}").format(
                        sql.Identifier(schema, settings.table_name(SHIP, g.number))))
                stored_until = int(START.replace(tzinfo=dt.UTC).timestamp()) * 1_000_000 \
                    + int(args.rows * pct / 100) * 15_000_000
                checkpoint(conn)
                lsn = wal_lsn(conn)
                out["floor"] = floor_update(conn, settings, catalog, parse_csv(path.read_bytes(), path.name),
                                            stored_until)
                out["floor_wal"] = wal_bytes(conn, lsn)
            n_base = min(args.baseline_rows, args.rows)
            out["baseline"] = baseline(conn, settings, catalog, path, n_base) * args.rows / n_base
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=140_000, help="file rows (default 140,000)")
    ap.add_argument("--channels", type=int, default=90, help="channel columns (default 90)")
    ap.add_argument("--blank-pct", type=float, default=2.0, help="blank cells, %% (default 2)")
    ap.add_argument("--prefill-pct", type=float, nargs="+", default=[0.0, 50.0, 100.0],
                    help="cases: share of the file's timestamps already holding full wide rows, %% "
                         "(default: 0 50 100)")
    ap.add_argument("--baseline-rows", type=int, default=2_000,
                    help="rows the row-by-row baseline runs on, extrapolated (default 2,000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    base = Settings.from_env()
    url = database_url(base)
    print(f"database {redact(url)}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(2 cores: other jobs slow every figure); N2W_CORRECTION_WORKERS={base.correction_workers}")
    print(f"file: {args.rows:,} rows x {args.channels} channels at 15 s, {args.blank_pct:g} % blank cells")
    cases = [run_case(url, base, args, pct) for pct in args.prefill_pct]

    print()
    print(f"{'case: timestamps already stored':<34} {'n2w s':>7} {'again s':>8} {'floor s':>8} "
          f"{'row-by-row s':>13} {'speed-up':>9} {'<= 5 s':>7}")
    for c in cases:
        first, again, floor = c["first"], c["again"], c["floor"]
        floor_s = f"{floor[0]:.2f}" if floor else "-"
        print(f"{c['pct']:>5.0f} %{'':<27} {first.seconds:>7.2f} {again.seconds:>8.2f} {floor_s:>8} "
              f"{c['baseline']:>13.1f} {c['baseline'] / first.seconds:>8.1f}x "
              f"{'met' if first.seconds <= 5 else 'NOT met':>7}")
    print("  n2w: parse + write in hour ranges on N2W_CORRECTION_WORKERS connections; "
          "again: the same file, a no-op;\n"
          "  floor: stage + one plain UPDATE per wide table of just the stored rows, one connection,\n"
          "  rolled back, run after n2w on the same tables: what PostgreSQL alone needs to rewrite\n"
          "  those rows; row-by-row: executemany upsert, extrapolated from --baseline-rows rows;\n"
          "  floor and n2w each start after a CHECKPOINT")
    print()
    print(f"{'phase (s; summed over parallel parts)':<52}" + "".join(
        f" {'{:.0f}%'.format(c['pct']):>7} {'again':>6}" for c in cases))
    for key, label in PHASES:
        print(f"{label:<52}" + "".join(
            f" {c['first_t'].get(key, 0.0):>7.2f} {c['again_t'].get(key, 0.0):>6.2f}" for c in cases))
    print(f"{'parts (hour ranges)':<52}" + "".join(
        f" {c['first_t'].get('parts', 0):>7.0f} {c['again_t'].get('parts', 0):>6.0f}" for c in cases))
    print()
    for c in cases:
        first, again = c["first"], c["again"]
        floor = (f"; floor updated {c['floor'][1]:,} rows, WAL {c['floor_wal'] / 1e9:.2f} GB"
                 if c["floor"] else "")
        print(f"{c['pct']:.0f} %: rows inserted {first.rows_inserted:,}, updated {first.rows_updated:,}, "
              f"unchanged {first.rows_unchanged:,}; correction cells stored {first.corrections_inserted:,}; "
              f"WAL written {c['wal'] / 1e9:.2f} GB; "
              f"again: inserted {again.rows_inserted}, updated {again.rows_updated}, correction values "
              f"changed {again.corrections_inserted + again.corrections_updated}{floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
