"""Correction files: placement and names (rejected before reading), and the Dagster sensor
that scans the folder for new or rewritten files."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from n2w_pipeline.defs.corrections import build_correction_asset, build_correction_sensor
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline_tests.corrections.common import GOOD, H0, SHIP, assert_rejected, ts, write
from n2w_pipeline_tests.helpers import wide_cells

BAD_PLACE = {
    "unknown hull folder": ("H9999/H9999_2025-03.csv", "timestamp,{a}\n{t0},1\n",
                            ["H9999/H9999_2025-03.csv", "unknown hull folder 'H9999'"]),
    "file name not matching": ("H2546/march fixes.csv", "timestamp,{a}\n{t0},1\n",
                               ["H2546/march fixes.csv", "file name must be <HULL>_<YYYY-MM>.csv"]),
    "hull of name differs from folder": ("H2546/H2547_2025-03.csv", "timestamp,{a}\n{t0},1\n",
                                         ["differs from its folder 'H2546'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PLACE))
def test_rejected_files_name_file_line_reason_and_write_nothing(case, settings, catalog, conn, chans):
    assert_rejected(BAD_PLACE[case], settings, catalog, conn, chans[0])


def test_sensor_registers_partitions_and_runs_each_file_version(settings, catalog, conn, chans):
    a = chans[0]
    asset = build_correction_asset(settings, catalog)
    sensor = build_correction_sensor(settings, asset)
    good = write(settings, GOOD, f"timestamp,{a}\n{ts(H0)},1\n")
    write(settings, "H2547/H2547_2025-03.csv", f"time,{a}\n{ts(H0)},1\n")  # rejected at run time
    write(settings, "H9999/H9999_2025-03.csv", f"timestamp,{a}\n{ts(H0)},1\n")  # unknown hull
    write(settings, "H2546/notes.csv", "x\n")  # bad name
    write(settings, "README.md", "not a csv: ignored\n")
    resources = {"n2w_db": N2WDatabase(url=settings.database_url)}

    with dg.instance_for_test() as inst:
        res = sensor(dg.build_sensor_context(instance=inst))
        assert isinstance(res, dg.SensorResult)
        keys = sorted(r.partition_key for r in res.run_requests)
        assert keys == [GOOD, "H2547/H2547_2025-03.csv"]
        assert all("@" in r.run_key for r in res.run_requests)
        for req in res.dynamic_partitions_requests:
            inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        cursor = res.cursor

        ok = dg.materialize([asset], partition_key=GOOD, instance=inst, resources=resources)
        mat = ok.asset_materializations_for_node("csv_corrections")[0]
        md = {k: v.value for k, v in mat.metadata.items()}
        assert (md["rows_read"], md["rows_inserted"], md["rows_updated"]) == (1, 1, 0)
        assert md["coverage_pct_per_table"] == {settings.table_name(SHIP, 1): round(
            100 / len(catalog.group(1).channels), 1)}
        bad = dg.materialize([asset], partition_key="H2547/H2547_2025-03.csv", instance=inst,
                             resources=resources, raise_on_error=False)
        assert not bad.success
        failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
        assert "H2547/H2547_2025-03.csv line 1: no 'timestamp' column" in str(failure.event_specific_data)

        # nothing changed: a skip that names the bad files
        skip = sensor(dg.build_sensor_context(instance=inst, cursor=cursor))
        assert isinstance(skip, dg.SkipReason)
        assert "unknown hull folder 'H9999'" in skip.skip_message
        assert "H2546/notes.csv: file name must be" in skip.skip_message

        # same bytes, new mtime: no run; new bytes: a run with a new run key
        st = good.stat()
        os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
        res2 = sensor(dg.build_sensor_context(instance=inst, cursor=cursor))
        assert not getattr(res2, "run_requests", None)
        cursor = res2.cursor if isinstance(res2, dg.SensorResult) else cursor
        good.write_text(f"timestamp,{a}\n{ts(H0)},2\n")
        res3 = sensor(dg.build_sensor_context(instance=inst, cursor=cursor))
        assert [r.partition_key for r in res3.run_requests] == [GOOD]
        old_keys = {r.run_key for r in res.run_requests}
        assert res3.run_requests[0].run_key not in old_keys

        # the same as a dry run from run config: an observation, no materialisation, no writes
        before = wide_cells(conn, settings, catalog.group(1), SHIP)
        dry = dg.materialize([asset], partition_key=GOOD, instance=inst, resources=resources,
                             run_config={"ops": {"csv_corrections": {"config": {"dry_run": True}}}})
        assert dry.success and not dry.asset_materializations_for_node("csv_corrections")
        obs = [e for e in dry.all_events if e.event_type_value == "ASSET_OBSERVATION"]
        assert obs and obs[0].event_specific_data.asset_observation.metadata["rows_updated"].value == 1
        assert wide_cells(conn, settings, catalog.group(1), SHIP) == before == (
            {H0}, {(H0, a): 1.0})
