"""The report as the CLI prints it: a dry run, then the real run, with a rejected file
that does not block the others."""

from __future__ import annotations

from n2w_pipeline.cli import main
from n2w_pipeline.corrections import dump_cursor
from n2w_pipeline_tests.corrections.common import GOOD, H0, SHIP, corrections_rows, ts, write
from n2w_pipeline_tests.helpers import wide_cells


def test_cli_dry_run_then_apply_reports_and_bad_file_does_not_block(settings, catalog, conn, chans,
                                                                   monkeypatch, capsys):
    a = chans[0]
    write(settings, GOOD, f"timestamp,{a}\n{ts(H0)},1\n")
    write(settings, "H2547/H2547_2025-03.csv", "")  # empty: rejected
    for k, v in {"N2W_DATABASE_URL": settings.database_url, "N2W_TARGET_SCHEMA": settings.target_schema,
                 "N2W_SOURCE_SCHEMA": settings.source_schema,
                 "N2W_MIGRATION_DIR": str(settings.migration_dir),
                 "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir)}.items():
        monkeypatch.setenv(k, v)
    assert main(["corrections", "--dry-run", "--hull", "H2546"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and f"1/{len(catalog.group(1).channels)}" in out
    assert corrections_rows(conn, settings, catalog) == []
    assert main(["corrections"]) == 1
    out = capsys.readouterr().out
    assert "REJECTED H2547/H2547_2025-03.csv line 1: empty file" in out
    assert "1 file(s) applied, 1 rejected" in out
    assert wide_cells(conn, settings, catalog.group(1), SHIP) == ({H0}, {(H0, a): 1.0})
    assert dump_cursor({}) == "{}"
