"""Correction partition keys and files that lead out of N2W_MIGRATION_DIR are refused by the
asset, the sensor and the CLI; a file whose content returns to an earlier version is applied
again."""

from __future__ import annotations

import dagster as dg

from n2w_pipeline.cli import main
from n2w_pipeline.defs.corrections import build_correction_asset, build_correction_sensor, correction_files
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline_tests.corrections.common import GOOD, H0, SHIP, corrections_rows, ts, write
from n2w_pipeline_tests.helpers import wide_cells


def _env(settings, monkeypatch) -> None:  # noqa: ANN001
    for k, v in {"N2W_DATABASE_URL": settings.database_url, "N2W_TARGET_SCHEMA": settings.target_schema,
                 "N2W_SOURCE_SCHEMA": settings.source_schema,
                 "N2W_MIGRATION_DIR": str(settings.migration_dir),
                 "N2W_CHANNEL_LISTS": str(settings.channel_lists_dir)}.items():
        monkeypatch.setenv(k, v)


def test_keys_and_files_leading_out_of_the_folder_are_refused(settings, catalog, conn, chans, tmp_path,
                                                              monkeypatch, capsys):
    a = chans[0]
    body = f"timestamp,{a}\n{ts(H0)},666\n"  # a well-formed file: only its place is wrong
    outside = tmp_path / "x" / "H2546" / "H2546_2025-01.csv"
    outside.parent.mkdir(parents=True)
    outside.write_text(body)
    write(settings, GOOD, f"timestamp,{a}\n{ts(H0)},1\n")  # a good file beside them
    link = settings.migration_dir / "H2546" / "H2546_2025-02.csv"
    link.symlink_to(outside)  # inside by name, outside by content
    escaping = {
        "../x/H2546/H2546_2025-01.csv": "not a correction partition key",  # the UI's `..` key
        str(outside): "not a correction partition key",  # an absolute path
        "H2546/H2546_2025-02.csv": "outside the correction folder",  # the symlink
    }
    asset = build_correction_asset(settings, catalog)
    sensor = build_correction_sensor(settings, asset)
    resources = {"n2w_db": N2WDatabase(url=settings.database_url)}
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(correction_files.name, sorted(escaping))
        for key, why in escaping.items():  # the asset: a failed run that names the key and the reason
            res = dg.materialize([asset], partition_key=key, instance=inst, resources=resources,
                                 raise_on_error=False)
            assert not res.success
            failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
            assert why in str(failure.event_specific_data) and "N2W_MIGRATION_DIR" in str(
                failure.event_specific_data), key
        # the sensor: only the good file gets a run; the symlink and the UI's keys are named
        res = sensor(dg.build_sensor_context(instance=inst))
        assert [r.partition_key for r in res.run_requests] == [GOOD]
        skip = sensor(dg.build_sensor_context(instance=inst, cursor=res.cursor))
        assert "outside the correction folder" in skip.skip_message
        assert "'../x/H2546/H2546_2025-01.csv' refused" in skip.skip_message
        assert f"{str(outside)!r} refused" in skip.skip_message
    # the CLI: rejected, exit status 1, the good file applied
    _env(settings, monkeypatch)
    assert main(["corrections", "--file", str(outside), "--file", str(link)]) == 1
    out = capsys.readouterr().out
    assert out.count("REJECTED") == 2 and "outside the correction folder" in out
    assert (H0, a, 666.0) not in corrections_rows(conn, settings, catalog)
    assert main(["corrections"]) == 1  # the folder: the symlink rejected, the good file applied
    assert "0 file(s) applied" not in capsys.readouterr().out
    assert corrections_rows(conn, settings, catalog) == [(a, H0, 1.0)]


def test_a_file_back_at_an_earlier_content_is_applied_again(settings, catalog, conn, chans):
    a = chans[0]
    asset = build_correction_asset(settings, catalog)
    sensor = build_correction_sensor(settings, asset)
    resources = {"n2w_db": N2WDatabase(url=settings.database_url)}
    content = {"A": f"timestamp,{a}\n{ts(H0)},1\n", "B": f"timestamp,{a}\n{ts(H0)},2\n"}
    cursor = None
    keys = []
    with dg.instance_for_test() as inst:
        for version in ("A", "B", "A"):
            path = write(settings, GOOD, content[version])
            path.touch()  # a new mtime, as an editor's save
            res = sensor(dg.build_sensor_context(instance=inst, cursor=cursor))
            (req,) = res.run_requests
            cursor = res.cursor
            for r in res.dynamic_partitions_requests:
                inst.add_dynamic_partitions(r.partitions_def_name, list(r.partition_keys))
            keys.append(req.run_key)
            # what the daemon does with a run key it has launched before: nothing
            if inst.get_runs(dg.RunsFilter(tags={"dagster/run_key": req.run_key})):
                continue
            ok = dg.materialize([asset], partition_key=req.partition_key, instance=inst, resources=resources,
                                tags={"dagster/run_key": req.run_key})
            assert ok.success
            expected = 1.0 if version == "A" else 2.0
            assert wide_cells(conn, settings, catalog.group(1), SHIP) == ({H0}, {(H0, a): expected})
    assert len(set(keys)) == 3, keys  # A's second coming is a new run, not A's old run key
    assert wide_cells(conn, settings, catalog.group(1), SHIP) == ({H0}, {(H0, a): 1.0})
