"""What a person sees: `n2w generate` and `n2w backfill` print only n2w's bar, one line per
finished run and a summary (no Dagster log line, no line twice); Dagster's lines are in the log
files, and on the terminal with --verbose; `n2w report` reads the runs' figures back."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

from n2w_pipeline.commands._progress import Bar
from n2w_pipeline.commands.report import format_table
from n2w_pipeline_tests.ops_env import cli_env, dagster_database, tiny_lists

DAGSTER_LINE = re.compile(r" - dagster - |DEBUG|RUN_START|STEP_START|ENGINE_EVENT|__ephemeral_asset_job__")


def n2w(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "n2w_pipeline.cli", *argv], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def assert_quiet(out: subprocess.CompletedProcess) -> list[str]:
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert not [ln for ln in lines if DAGSTER_LINE.search(ln)], lines
    twice = [ln for ln, n in Counter(lines).items() if n > 1]
    assert not twice, twice
    return lines


def test_backfill_terminal_shows_bar_runs_and_summary_only(settings, pg_url, tmp_path: Path):
    s = replace(settings, ships=settings.ships[:2], channel_lists_dir=tiny_lists(tmp_path / "lists"),
                slice_hours=1, run_hours=2)
    with dagster_database(pg_url) as dagster_url:
        env = cli_env(s, dagster_url)
        gen = n2w(env, "generate", "--ships", "2", "--hours", "2", "--allow-external")
        assert_quiet(gen)
        assert gen.stdout.startswith("generated ") and "2/2 ship-days" in gen.stderr

        out = n2w(env, "backfill", "--start", "2025-03-01", "--end", "2025-03-01T02:00")
        lines = assert_quiet(out)
        runs = [ln for ln in out.stderr.splitlines() if ln.startswith("run ")]
        # one line per finished run: run_hours=2 partitions, so blocks of both ships × 1 hour
        both = f"{s.ships[0]}..{s.ships[1]} (2 ships)"
        assert sorted(r.split(" ", 2)[2].split(": ")[0] for r in runs) == [
            f"{both} 2025-03-01 00:00..2025-03-01 01:00", f"{both} 2025-03-01 01:00..2025-03-01 02:00"]
        assert any(ln.startswith("[") and "4/4 ship-hours" in ln for ln in lines)
        assert out.stdout.strip().splitlines()[-1].startswith("2 run(s), 2 ship(s)")

        # Dagster's lines went to the log file of the backfill's runs of several ships
        text = (s.state_dir / "logs" / "backfill" / "fleet.log").read_text()
        assert "STEP_START" in text and "RUN_SUCCESS" in text and "channel(s) in no channel list" in text

        # n2w report: the same runs, with the figures the materialisations recorded
        report = json.loads(n2w(env, "report", "--last", "5", "--json").stdout)
        assert len(report) == 2
        with psycopg.connect(pg_url) as conn:
            for r in report:
                narrow = sum(conn.execute(sql.SQL(
                    "SELECT count(*) FROM {} WHERE ship_id = %s AND created_time >= %s AND created_time < %s"
                ).format(sql.Identifier(s.source_schema, "tbl_data_timeseries")),
                    (ship, dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b))).fetchone()[0]
                    for ship, a, b in r["windows"])
                assert sorted(w[0] for w in r["windows"]) == sorted(s.ships)
                assert (r["narrow_rows_read"], r["status"], r["kind"]) == (narrow, "SUCCESS", "backfill")
                assert narrow > 0
                assert r["seconds"] > 0 and r["narrow_rows_per_s"] > 0 and r["peak_rss_mb"] > 50
                assert all(0 < v <= 100 for v in r["filled_pct"].values()) and len(r["filled_pct"]) == 3
        table = format_table(report, "http://ui:3000")
        assert "rows/s" in table and report[0]["run_id"][:8] in table and "http://ui:3000/runs/" in table

        # --verbose: Dagster's own lines on the terminal too; a run of one ship logs to its own file
        verbose = n2w(env, "--verbose", "backfill", "--ship", s.ships[0], "--start", "2025-03-01",
                      "--end", "2025-03-01T01:00", "--all")
        assert "STEP_START" in verbose.stderr
        text = (s.state_dir / "logs" / "backfill" / f"{s.ships[0]}.log").read_text()
        assert "STEP_START" in text and "RUN_SUCCESS" in text and s.ships[1] not in text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_redraws_in_place_and_keeps_run_lines_above():
    stream = _Tty()
    bar = Bar(stream)
    bar.draw(1, 2, "ship-hours", "a")
    bar.line("run 1 done")
    bar.draw(2, 2, "ship-hours", "b")
    bar.draw(2, 2, "ship-hours", "b")  # the run's end after its last slice: not drawn again
    text = stream.getvalue()
    assert text.count("2/2 ship-hours") == 1 and text.endswith("\n")
    assert "\r\x1b[Krun 1 done\n[###############" in text  # the line, then the bar drawn again below it
