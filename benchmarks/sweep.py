"""Throughput sweep: one generated data set, then a grid of settings, every cell measured in
the same run, written as JSON, PNG charts and a markdown table.

    .venv/bin/n2w bench sweep                 # 3 ships x 12 h (~9M narrow rows), 19 + 2 cells
    .venv/bin/n2w bench sweep --quick         # 1 ship x 4 h, 4 + 2 cells, a few minutes
    .venv/bin/n2w bench sweep --out DIR       # default benchmarks/results/

The grid:

* **backfill** — ``N2W_SLICE_HOURS`` x ``--parallel`` (runs at once, capped by the pool limit of
  ``n2w_database``) x ``N2W_PIPELINE_LANES`` (slices in flight per run): ``n2w backfill``'s code
  path (Dagster runs, start-up included) over every ship of the data set, into empty wide tables;
* **corrections** — ``N2W_CORRECTION_WORKERS`` on one generated correction file (a ship-week of
  15-s rows), into an empty schema.

Each cell runs in a fresh process. Per cell: ``rows_per_s`` (narrow rows per second of wall
time; CSV rows for corrections), wall seconds, peak RSS of the cell's largest process, its processes' CPU
seconds (client) and the PostgreSQL server's CPU seconds over the cell (when the server runs
on this machine: the embedded one or a local ``N2W_DATABASE_URL``). The default configuration
runs first and again last: the difference is the run's noise, and every configuration within
that noise of the best (at least ``--noise-pct``) counts as best; among those the sweep
recommends the one that opens the fewest data connections, then uses the least memory.

Data: scratch schemas ``n2w_sweep`` (narrow rows, kept for the next sweep) and
``n2w_sweep_wide`` (dropped after), Dagster runs in their own instance database
``n2w_bench_dagster`` (as ``n2w bench backfill``). Outputs in ``--out``: ``sweep-<time>.json``,
``sweep-<time>-rows_per_s.png``, ``sweep-<time>-rss.png``, ``sweep-<time>.md``.

Figures taken while other work runs on the machine move by tens of percent: run it on a
quiet machine (``flock /tmp/n2w-bench.lock n2w bench sweep``) before changing a default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from backfill import bench_dagster_env  # noqa: E402
from corrections import pick_channels, write_file  # noqa: E402

from n2w_pipeline.channels import load_catalog  # noqa: E402
from n2w_pipeline.config import Settings  # noqa: E402
from n2w_pipeline.database import database_url  # noqa: E402
from n2w_pipeline.lanes import PIPELINE_LANES  # noqa: E402
from n2w_pipeline.write import ensure_support_tables  # noqa: E402

SOURCE, TARGET, CORR = "n2w_sweep", "n2w_sweep_wide", "n2w_sweep_corr"
START = dt.datetime(2025, 3, 1)
DEFAULT_PARALLEL = 1  # `n2w backfill`'s default --parallel

FULL = {"ships": 3, "hours": 12, "run_hours": 12, "slice": [3, 6, 12], "parallel": [1, 2, 3],
        "lanes": [1, 2], "workers": [1, 2], "corr_rows": 40_320}
QUICK = {"ships": 1, "hours": 4, "run_hours": 2, "slice": [1, 2], "parallel": [1, 2],
         "lanes": [PIPELINE_LANES], "workers": [1, 2], "corr_rows": 2_000}


def sweep_settings(base: Settings, ships: int, run_hours: int) -> Settings:
    return replace(base, source_schema=SOURCE, target_schema=TARGET, ships=base.ships[:ships],
                   partition_start="2025-01-01-00:00", run_hours=run_hours)


# ---------------------------------------------------------------- measuring

def server_process(url: str):  # noqa: ANN201 - psutil.Process | None
    """The PostgreSQL postmaster behind ``url`` if it runs on this machine, else None."""
    import psutil

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        backend = psutil.Process(int(row[0]))  # type: ignore[index]
        parent = backend.parent()
        return parent if parent is not None and "postgres" in parent.name() else None
    except (psutil.Error, TypeError):
        return None


def server_cpu(postmaster) -> float | None:  # noqa: ANN001
    """CPU seconds of the server so far: the postmaster, its ended backends (reaped, so
    counted in its children's times) and the live ones."""
    import psutil

    if postmaster is None:
        return None
    try:
        t = postmaster.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in postmaster.children():
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return None


def run_cell(cell: dict, env: dict[str, str], postmaster) -> dict:  # noqa: ANN001
    """One cell in a fresh process; its own figures plus the server's CPU over it."""
    before = server_cpu(postmaster)
    out = subprocess.run([sys.executable, __file__, "--cell", json.dumps(cell)], capture_output=True,
                         text=True, check=False, env={**os.environ, **env})
    after = server_cpu(postmaster)
    if out.returncode != 0:
        raise RuntimeError(f"cell {cell} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["server_cpu_s"] = round(after - before, 2) if before is not None and after is not None else None
    return {**cell, **result}


def child(cell: dict) -> None:
    """Inside the cell's process: run it, print its figures as one JSON line."""
    base = Settings.from_env()
    t0 = time.perf_counter()
    if cell["kind"] == "backfill":
        from n2w_pipeline.commands._common import run_backfill

        s = sweep_settings(base, cell["ships"], cell["run_hours"])
        end = START + dt.timedelta(hours=cell["hours"])
        summaries = run_backfill(s, list(s.ships), START, end, quiet=True, parallel=cell["parallel"],
                                 resume=False)
        rows = sum(next(iter(x["assets"].values()))["narrow_rows_read"] for x in summaries)
    else:
        from n2w_pipeline.corrections import apply_file

        s = replace(base, target_schema=CORR, migration_dir=Path(cell["folder"]),
                    hulls={"H2546": base.ships[0]})
        url = database_url(s)
        with psycopg.connect(url, autocommit=True) as conn:
            report = apply_file(conn, s, load_catalog(s.channel_lists_dir), Path(cell["file"]),
                                connect=lambda: psycopg.connect(url, autocommit=True))
        rows = report.rows_valid
    seconds = time.perf_counter() - t0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1),
        "peak_rss_mb": round(max(me.ru_maxrss, kids.ru_maxrss) / 1024, 1),
        "client_cpu_s": round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2),
    }))


# ---------------------------------------------------------------- the grid

def fresh_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def backfill_cells(grid: dict) -> list[dict]:
    default = {"slice": Settings().slice_hours, "parallel": DEFAULT_PARALLEL, "lanes": PIPELINE_LANES}
    combos = [dict(zip(("slice", "parallel", "lanes"), c, strict=True))
              for c in itertools.product(grid["slice"], grid["parallel"], grid["lanes"])]
    if default not in combos:  # the quick grid: the nearest to the default
        default = combos[-1]
    ordered = [default] + [c for c in combos if c != default] + [default]
    base = {"kind": "backfill", **{k: grid[k] for k in ("ships", "hours", "run_hours")}}
    return [{**base, **c, "repeat": i == len(ordered) - 1} for i, c in enumerate(ordered)]


def run_grid(url: str, base: Settings, grid: dict, tmp: Path) -> list[dict]:
    postmaster = server_process(url)
    cells = backfill_cells(grid)
    catalog = load_catalog(base.channel_lists_dir)
    channels = pick_channels(catalog, min(60, len(catalog.all_channels)))
    path = write_file(tmp, channels, grid["corr_rows"], 2.0, 1)
    cells += [{"kind": "corrections", "workers": w, "corr_rows": grid["corr_rows"], "file": str(path),
               "folder": str(tmp), "repeat": False} for w in grid["workers"]]
    results = []
    t0 = time.perf_counter()
    for i, cell in enumerate(cells, 1):
        env = {}
        if cell["kind"] == "backfill":
            fresh_schema(url, TARGET)
            env = {"N2W_SLICE_HOURS": str(cell["slice"]), "N2W_PIPELINE_LANES": str(cell["lanes"])}
        else:
            fresh_schema(url, CORR)
            with psycopg.connect(url, autocommit=True) as conn:
                ensure_support_tables(conn, replace(base, target_schema=CORR))
            env = {"N2W_CORRECTION_WORKERS": str(cell["workers"])}
        r = run_cell(cell, env, postmaster)
        r.pop("file", None)
        r.pop("folder", None)
        results.append(r)
        elapsed = time.perf_counter() - t0
        print(f"[{i}/{len(cells)}] {label(r):<34} {r['rows_per_s']:>12,.0f} rows/s  {r['seconds']:6.1f} s  "
              f"RSS {r['peak_rss_mb']:6.0f} MB  ETA {elapsed / i * (len(cells) - i):,.0f} s", flush=True)
    for schema in (TARGET, CORR):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return results


def label(r: dict) -> str:
    if r["kind"] == "backfill":
        return (f"slice {r['slice']} h, parallel {r['parallel']}, lanes {r['lanes']}"
                + (" (again)" if r.get("repeat") else ""))
    return f"corrections, workers {r['workers']}"


# ---------------------------------------------------------------- the decision

QUIET_NOISE_PCT = 10.0
"""Above this run-to-run noise a sweep is indicative only: no default changes on it."""


def decide(results: list[dict], noise_floor_pct: float, defaults: dict) -> dict:
    """What the sweep supports. The default configuration ran first and last: their
    difference is the noise (at least ``noise_floor_pct``). A default stands while the default
    configuration (the mean of its two runs) is within the noise of the fastest configuration;
    otherwise the recommendation is, among the configurations within the noise of the fastest,
    the one with the fewest data connections (2 per lane per run), then the least memory."""
    back = [r for r in results if r["kind"] == "backfill"]
    first, again = back[0], back[-1]
    noise = abs(first["rows_per_s"] - again["rows_per_s"]) / max(first["rows_per_s"], again["rows_per_s"])
    noise_pct = max(100 * noise, noise_floor_pct)
    floor = 1 - noise_pct / 100
    cells = [r for r in back if not r.get("repeat")]
    fastest = max(cells, key=lambda r: r["rows_per_s"])
    near = [r for r in cells if r["rows_per_s"] >= fastest["rows_per_s"] * floor]
    pick = min(near, key=lambda r: (r["parallel"] * r["lanes"], r["peak_rss_mb"], -r["rows_per_s"]))
    default_rate = (first["rows_per_s"] + again["rows_per_s"]) / 2
    stands = default_rate >= fastest["rows_per_s"] * floor
    keys = ("slice", "parallel", "lanes")
    out = {
        "noise_pct": round(noise_pct, 1), "measured_noise_pct": round(100 * noise, 1),
        "quiet_enough": noise_pct <= QUIET_NOISE_PCT,
        "fastest": {**{k: fastest[k] for k in keys}, "rows_per_s": fastest["rows_per_s"]},
        "default": {**{k: first[k] for k in keys}, "rows_per_s": round(default_rate, 1)},
        "default_within_noise": stands,
        "backfill_within_noise": [label(r) for r in near],
        "backfill_cheapest_within_noise": {k: pick[k] for k in keys},
        "backfill_recommended": {k: (first if stands else pick)[k] for k in keys},
    }
    corr = [r for r in results if r["kind"] == "corrections"]
    if corr:
        cbest = max(r["rows_per_s"] for r in corr)
        mine = next((r for r in corr if r["workers"] == defaults["workers"]), None)
        keep = mine is not None and mine["rows_per_s"] >= cbest * floor
        cheapest = min(r["workers"] for r in corr if r["rows_per_s"] >= cbest * floor)
        out["corrections_recommended"] = {"workers": defaults["workers"] if keep else cheapest,
                                          "default_within_noise": keep}
    return out


def current_defaults() -> dict:
    s = Settings()
    return {"slice": s.slice_hours, "parallel": DEFAULT_PARALLEL, "lanes": PIPELINE_LANES,
            "workers": s.correction_workers}


def verdict(decision: dict, defaults: dict) -> list[str]:
    d, f = decision, decision["fastest"]
    lines = [f"noise of this run: {d['measured_noise_pct']} % (the default configuration first vs last); "
             f"'within noise' = within {d['noise_pct']} % of the fastest"]
    if not d["quiet_enough"]:
        lines.append(f"noise above {QUIET_NOISE_PCT:.0f} %: the machine was busy or the cells drifted "
                     "through the run (both seen here); figures are indicative only; re-run on a quiet "
                     "machine before changing a default")
    lines.append(f"fastest: {label({'kind': 'backfill', **f})} at {f['rows_per_s']:,.0f} rows/s; "
                 "within noise: " + "; ".join(d["backfill_within_noise"]))
    lines.append(f"default configuration: {d['default']['rows_per_s']:,.0f} rows/s (mean of its two runs), "
                 + ("within noise of the fastest: the defaults stand" if d["default_within_noise"]
                    else "outside the noise of the fastest: the cheapest configuration within noise "
                    "is recommended"))
    rec = d["backfill_recommended"]
    for key, name in (("slice", "N2W_SLICE_HOURS"), ("lanes", "PIPELINE_LANES"), ("parallel", "--parallel")):
        lines.append(f"  {name}: default {defaults[key]} -> {rec[key]}"
                     + (" (supported)" if rec[key] == defaults[key] else " (would change)"))
    if "corrections_recommended" in d:
        w = d["corrections_recommended"]["workers"]
        lines.append(f"  N2W_CORRECTION_WORKERS: default {defaults['workers']} -> {w}"
                     + (" (supported)" if w == defaults["workers"] else " (would change)"))
    return lines


# ---------------------------------------------------------------- outputs

def markdown(results: list[dict], decision: dict, meta: dict, defaults: dict) -> str:
    best = max(r["rows_per_s"] for r in results if r["kind"] == "backfill")
    lines = [f"Sweep of {meta['time']}: {meta['data']}; {meta['machine']}.", "",
             "| configuration | rows/s | × best | wall s | peak RSS MB | client CPU s | server CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rel = f"{r['rows_per_s'] / best:.2f}" if r["kind"] == "backfill" else ""
        srv = "" if r["server_cpu_s"] is None else f"{r['server_cpu_s']:.1f}"
        lines.append(f"| {label(r)} | {r['rows_per_s']:,.0f} | {rel} | {r['seconds']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['client_cpu_s']:.1f} | {srv} |")
    lines += ["", *verdict(decision, defaults)]
    return "\n".join(lines) + "\n"


def charts(results: list[dict], stem: Path, decision: dict | None = None) -> list[Path]:
    """rows/s and peak RSS per configuration, as two PNGs (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cells = [r for r in results if not r.get("repeat")]
    back = [r for r in cells if r["kind"] == "backfill"]
    corr = [r for r in cells if r["kind"] == "corrections"]
    paths = []
    for field, title, unit, name in (("rows_per_s", "Throughput", "narrow rows/s", "rows_per_s"),
                                     ("peak_rss_mb", "Peak RSS (largest process)", "MB", "rss")):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[4, 1], constrained_layout=True)
        ax = axes[0]
        combos = sorted({(r["parallel"], r["lanes"]) for r in back})
        slices = sorted({r["slice"] for r in back})
        width = 0.8 / len(combos)
        for j, (par, lanes) in enumerate(combos):
            ys = [next((r[field] for r in back if (r["slice"], r["parallel"], r["lanes"]) == (s, par, lanes)),
                       0) for s in slices]
            ax.bar([i + j * width for i in range(len(slices))], ys, width,
                   label=f"parallel {par}, lanes {lanes}")
        ax.set_xticks([i + width * (len(combos) - 1) / 2 for i in range(len(slices))],
                      [f"slice {s} h" for s in slices])
        ax.set_ylabel(unit)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(f"n2w backfill: {title.lower()}")
        if decision and field == "rows_per_s":
            floor = decision["fastest"]["rows_per_s"] * (1 - decision["noise_pct"] / 100)
            ax.axhline(floor, color="black", linestyle="--", linewidth=1,
                       label=f"within noise of the fastest ({decision['noise_pct']:.0f} %)")
            ax.axhline(decision["default"]["rows_per_s"], color="tab:blue", linestyle=":", linewidth=1.5,
                       label="the defaults (mean of 2 runs)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=4)
        ax.grid(axis="y", alpha=0.3)
        ax2 = axes[1]
        ax2.bar([str(r["workers"]) for r in corr], [r[field] for r in corr], color="tab:gray")
        ax2.set_xlabel("N2W_CORRECTION_WORKERS")
        ax2.set_ylabel("CSV rows/s" if field == "rows_per_s" else unit)
        ax2.set_title("corrections")
        ax2.grid(axis="y", alpha=0.3)
        path = stem.with_name(f"{stem.name}-{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(results: list[dict], meta: dict, defaults: dict, stem: Path, noise_pct: float) -> None:
    """JSON, markdown table and charts of a sweep; prints the table and the decision."""
    decision = decide(results, noise_pct, defaults)
    stem.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "decision": decision, "defaults": defaults, "configurations": results}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    table = markdown(results, decision, meta, defaults)
    stem.with_suffix(".md").write_text(table)
    pngs = charts(results, stem, decision)
    print()
    print(table)
    print("wrote " + ", ".join(str(x) for x in [stem.with_suffix(".json"), stem.with_suffix(".md"), *pngs]))


def render(path: Path, out: Path, noise_pct: float) -> None:
    """The outputs of a sweep JSON again (e.g. after a change of the decision rule), into ``out``."""
    doc = json.loads(path.read_text())
    write_outputs(doc["configurations"], doc["meta"], doc["defaults"], out / path.stem, noise_pct)


def ensure_data(url: str, s: Settings, hours: int) -> int:
    """The data set: generated once into n2w_sweep, reused while it holds the window."""
    from n2w_pipeline.generate import generate

    end = START + dt.timedelta(hours=hours)
    with psycopg.connect(url, autocommit=True) as conn:
        src = sql.Identifier(*s.source_qualified)
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                              (f"{SOURCE}.{s.source_table}",)).fetchone()
        count = sql.SQL("SELECT count(DISTINCT ship_id) FROM {} "
                        "WHERE created_time >= %s AND created_time < %s")
        if exists and exists[0]:
            have = conn.execute(count.format(src), (end - dt.timedelta(hours=1), end)).fetchone()
            if have and have[0] >= len(s.ships):
                return 0
        catalog = load_catalog(s.channel_lists_dir)
        n = generate(conn, s, catalog, list(s.ships), START, end, seed=1)
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(src))
        return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 ship x 4 h, 4 backfill + 2 correction cells")
    p.add_argument("--out", type=Path, default=HERE / "results",
                   help="output folder (default benchmarks/results/)")
    for name, what in (("slices", "N2W_SLICE_HOURS"), ("parallels", "--parallel"),
                       ("lanes", "N2W_PIPELINE_LANES"), ("workers", "N2W_CORRECTION_WORKERS")):
        p.add_argument(f"--{name}", type=lambda v: [int(x) for x in v.split(",")], metavar="N,N",
                       help=f"values of {what} to sweep (default: the grid of --quick or the full one)")
    p.add_argument("--ships", type=int, help="ships in the data set (default 3; quick 1)")
    p.add_argument("--hours", type=int, help="hours per ship (default 12; quick 4)")
    p.add_argument("--noise-pct", type=float, default=5.0,
                   help="least difference that counts as real, %% (default 5; more if the run measured more)")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="measure nothing: write the table, charts and decision of an earlier sweep's "
                   "JSON again")
    p.add_argument("--cell", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cell:
        child(json.loads(args.cell))
        return 0
    if args.render:
        render(args.render, args.out, args.noise_pct)
        return 0
    grid = dict(QUICK if args.quick else FULL)
    grid["ships"] = args.ships or grid["ships"]
    grid["hours"] = args.hours or grid["hours"]
    grid["run_hours"] = min(grid["run_hours"], grid["hours"])
    for name, key in (("slices", "slice"), ("parallels", "parallel"), ("lanes", "lanes"),
                      ("workers", "workers")):
        if getattr(args, name):
            grid[key] = getattr(args, name)
    base = Settings.from_env()
    if len(base.ships) < grid["ships"]:
        raise SystemExit(f"n2w bench sweep: {grid['ships']} ships needed, N2W_SHIPS has {len(base.ships)}")
    bench_dagster_env(base)
    url = database_url(base)
    s = sweep_settings(base, grid["ships"], grid["run_hours"])
    t0 = time.perf_counter()
    n = ensure_data(url, s, grid["hours"])
    print(f"data: {grid['ships']} ship(s) x {grid['hours']} h in {SOURCE}"
          + (f", generated {n:,} rows in {time.perf_counter() - t0:.0f} s" if n else ", reused"), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="n2w-sweep-"))
    try:
        results = run_grid(url, base, grid, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    data = f"{grid['ships']} ship(s) x {grid['hours']} h, runs of {grid['run_hours']} h"
    meta = {"time": stamp, "data": data,
            "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
            "quick": args.quick, "grid": grid}
    write_outputs(results, meta, current_defaults(), args.out / f"sweep-{stamp}", args.noise_pct)
    return 0


if __name__ == "__main__":
    sys.exit(main())
