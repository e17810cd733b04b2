"""`n2w bench sweep --quick` on a tiny data set writes a valid JSON of every configuration, the
markdown table and PNG charts. (No figure is asserted: it is a benchmark.)"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

from n2w_pipeline_tests.ops_env import REPO, cli_env, dagster_database, tiny_lists


def test_quick_sweep_writes_json_table_and_charts(settings, pg_url, tmp_path: Path):
    s = replace(settings, channel_lists_dir=tiny_lists(tmp_path / "lists", per_group=6))
    out = tmp_path / "results"
    with dagster_database(pg_url) as dagster_url:
        env = cli_env(s, dagster_url)
        try:
            done = subprocess.run(
                [sys.executable, str(REPO / "benchmarks" / "sweep.py"), "--quick", "--ships", "1",
                 "--hours", "2", "--slices", "1", "--parallels", "1", "--workers", "1", "--out", str(out)],
                env=env, capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, done.stderr[-3000:]
            with psycopg.connect(pg_url) as conn:
                narrow = conn.execute("SELECT count(*) FROM n2w_sweep.tbl_data_timeseries").fetchone()[0]
        finally:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                for schema in ("n2w_sweep", "n2w_sweep_wide", "n2w_sweep_corr"):
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    (result,) = out.glob("sweep-*.json")
    doc = json.loads(result.read_text())
    configs = doc["configurations"]
    assert [c["kind"] for c in configs] == ["backfill", "backfill", "corrections"]  # default, again, workers
    for c in configs:
        assert c["rows_per_s"] > 0 and c["seconds"] > 0 and c["peak_rss_mb"] > 0 and c["client_cpu_s"] > 0
    assert all(c["rows"] == narrow for c in configs if c["kind"] == "backfill")  # every narrow row, each time
    assert doc["decision"]["backfill_recommended"] == {"slice": 1, "parallel": 1, "lanes": 2}
    pngs = sorted(out.glob("sweep-*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in pngs] == ["rows_per_s.png", "rss.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    table = next(out.glob("sweep-*.md")).read_text()
    assert "| slice 1 h, parallel 1, lanes 2 |" in table and "N2W_SLICE_HOURS" in done.stdout
