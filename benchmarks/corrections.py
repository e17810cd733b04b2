"""CSV corrections: n2w's apply vs the row-by-row executemany upsert it replaces.

Generates a correction file (default 140,000 rows x 90 channels at 15 s, ~2 % blank
cells) into a scratch schema whose wide tables already hold full rows for part of the
file's timestamps, then times, in the same run:

* n2w: parse (Polars) + one transaction (hour locks, binary-COPY stage, merge into the
  corrections shadow tables ``<wide table>_corr``, merge into the wide tables), then the
  same file again (a no-op), each with its time split by phase;
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
from n2w_pipeline.corrections import apply_file, parse_csv  # noqa: E402
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
        ensure_wide_table(conn, settings, g, SHIP)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=140_000, help="file rows (default 140,000)")
    ap.add_argument("--channels", type=int, default=90, help="channel columns (default 90)")
    ap.add_argument("--blank-pct", type=float, default=2.0, help="blank cells, %% (default 2)")
    ap.add_argument("--prefill-pct", type=float, default=50.0,
                    help="share of the file's timestamps already in the wide tables, %% (default 50)")
    ap.add_argument("--baseline-rows", type=int, default=5_000,
                    help="rows the row-by-row baseline runs on, extrapolated (default 5,000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    base = Settings.from_env()
    url = database_url(base)
    schema = f"n2w_bench_corr_{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="n2w-bench-corr-"))
    settings = replace(base, target_schema=schema, migration_dir=tmp, hulls={HULL: SHIP},
                       csv_time_offset_hours=0.0)
    catalog = load_catalog(settings.channel_lists_dir)
    channels = pick_channels(catalog, args.channels)
    print(f"database {redact(url)}, scratch schema {schema}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores: other jobs slow every figure)")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            t0 = time.perf_counter()
            path = write_file(tmp, channels, args.rows, args.blank_pct, args.seed)
            mb = path.stat().st_size / 1e6
            print(f"file {path.name}: {args.rows:,} rows x {len(channels)} channels, {mb:,.0f} MB, "
                  f"written in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            ensure_support_tables(conn, settings)
            filled = prefill(conn, settings, catalog, args.rows, args.prefill_pct, args.seed)
            print(f"prefilled {args.prefill_pct:.0f} % of the timestamps with full rows "
                  f"({filled:,} cells) in {time.perf_counter() - t0:.1f} s")

            t0 = time.perf_counter()
            parsed = parse_csv(path.read_bytes(), path.name)
            parse_s = time.perf_counter() - t0
            t_first: dict[str, float] = {}
            t_again: dict[str, float] = {}
            first = apply_file(conn, settings, catalog, path, timings=t_first)
            again = apply_file(conn, settings, catalog, path, timings=t_again)

            base_s = baseline(conn, settings, catalog, path, min(args.baseline_rows, args.rows))
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            shutil.rmtree(tmp, ignore_errors=True)
    n_base = min(args.baseline_rows, args.rows)
    base_full = base_s * args.rows / n_base
    cells = sum(t.cells for t in first.tables)
    print()
    print(f"parse only (Polars): {parse_s:.2f} s for {parsed.frame.height:,} rows")
    print(f"{'method':<52} {'seconds':>9} {'rows/s':>10} {'cells/s':>11}")
    print(f"{'n2w apply_file (parse + 1 txn: locks, shadow, wide)':<52} {first.seconds:>9.2f} "
          f"{args.rows / first.seconds:>10,.0f} {cells / first.seconds:>11,.0f}")
    print(f"{'n2w same file again (no-op)':<52} {again.seconds:>9.2f} "
          f"{args.rows / again.seconds:>10,.0f} {cells / again.seconds:>11,.0f}")
    print(f"{f'row-by-row executemany upsert ({n_base:,} rows)':<52} {base_s:>9.2f} "
          f"{n_base / base_s:>10,.0f} {cells * n_base / args.rows / base_s:>11,.0f}")
    print(f"{'  same, extrapolated to the whole file':<52} {base_full:>9.1f}")
    print()
    print(f"{'phase (s)':<52} {'first':>9} {'again':>9}")
    for key, label in (("read", "read file + sha256"), ("parse", "parse (Polars)"),
                       ("plan", "split by group (numpy)"), ("prepare", "ensure tables (DDL)"),
                       ("copy", "timestamps new to both tables: COPY into both"),
                       ("stage", "others: encode + binary COPY to temp stages"),
                       ("shadow", "corrections shadow tables: compare + merge"),
                       ("wide", "wide tables: merge")):
        print(f"{label:<52} {t_first.get(key, 0.0):>9.2f} {t_again.get(key, 0.0):>9.2f}")
    print()
    print(f"speed-up vs baseline: {base_full / first.seconds:,.1f}x;  target <= 5 s: "
          f"{'met' if first.seconds <= 5 else 'NOT met'}")
    print(f"first apply: rows inserted {first.rows_inserted:,}, updated {first.rows_updated:,}, "
          f"unchanged {first.rows_unchanged:,}; correction cells stored {first.corrections_inserted:,}")
    print(f"second apply: rows inserted {again.rows_inserted}, updated {again.rows_updated}, "
          f"correction values changed {again.corrections_inserted + again.corrections_updated}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
